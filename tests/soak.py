"""Crash-and-resume soak: SIGKILL a training-like job at random moments, resume, compare streams.

The job (``python tests/soak.py job ...``) reads tar shards through W simulated ranks stepping in
lockstep, appends every delivered sample (epoch, position, id, digest) to a log, and every k
steps writes a checkpoint atomically (temp file, fsync, rename): rank 0's cursor and the log's
length at that moment. On start it truncates the log to the checkpointed length, as a real run
loses the work done after its last checkpoint, and resumes every rank from the cursor.

The driver (``python tests/soak.py drive --kills N``; tests/test_soak.py runs a short version)
starts the job with a random num_workers and world size, kills its whole process group with
SIGKILL once it has logged a random number of new samples, N times, then lets it finish; the
final log must equal the continuous stream exactly: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 11
EPOCHS = 2
BATCH_SIZE = 4


def make_dataset(shard_dir: Path):
    from distributed_harness import PositionedDataset

    from resumable_loader import TarShardDataset

    shards = sorted(str(p) for p in shard_dir.glob("*.tar"))
    return PositionedDataset(TarShardDataset(shards), lambda sample: sample["rgb"])


def job(
    shard_dir: Path,
    state_dir: Path,
    world_size: int,
    num_workers: int,
    every: int,
    step_seconds: float,
) -> None:
    """Run (or resume) the soak job until EPOCHS epochs are logged; each step "trains" a while."""
    import msgpack
    from distributed_harness import unpack
    from resume_harness import epochs_left

    from resumable_loader import ResumableDataLoader
    from resumable_loader.index.atomic import atomic_write

    dataset = make_dataset(shard_dir)
    loaders = [
        ResumableDataLoader(
            dataset,
            batch_size=BATCH_SIZE,
            shuffle=True,
            seed=SEED,
            num_workers=num_workers,
            rank=r,
            world_size=world_size,
        )
        for r in range(world_size)
    ]
    log_path, checkpoint = state_dir / "log.jsonl", state_dir / "checkpoint.msgpack"
    epochs, log_bytes = EPOCHS, 0
    if checkpoint.exists():
        saved = msgpack.unpackb(checkpoint.read_bytes())
        log_bytes = saved["log_bytes"]
        for loader in loaders:
            loader.load_state_dict(saved["cursor"])
        epochs = epochs_left(saved["cursor"], EPOCHS)
    # A run killed before its first checkpoint leaves a log that no checkpoint covers: drop it.
    log_path.touch()
    os.truncate(log_path, log_bytes)
    with open(log_path, "ab") as log:
        for _ in range(epochs):
            for step, batches in enumerate(zip(*loaders, strict=True), start=1):
                for batch in batches:
                    for entry in unpack(batch):
                        if entry[1] < len(dataset):  # drop wrap-around padding
                            log.write((json.dumps(entry) + "\n").encode())
                log.flush()
                time.sleep(step_seconds)
                if step % every == 0:
                    state = {"cursor": loaders[0].state_dict(), "log_bytes": log.tell()}
                    with atomic_write(checkpoint) as f:
                        f.write(msgpack.packb(state))
    (state_dir / "done").touch()


def continuous_stream(shard_dir: Path) -> list[list]:
    """The stream the job must log, computed without interruptions in this process."""
    from distributed_harness import unpack

    from resumable_loader import ResumableDataLoader

    loader = ResumableDataLoader(
        make_dataset(shard_dir), batch_size=BATCH_SIZE, shuffle=True, seed=SEED
    )
    return [list(e) for _ in range(EPOCHS) for batch in loader for e in unpack(batch)]


def drive(
    shard_dir: Path,
    state_dir: Path,
    *,
    kills: int,
    rng: random.Random,
    every: int = 3,
    step_seconds: float = 0.02,
) -> dict:
    """Kill and resume the job ``kills`` times, then finish it; return the outcome.

    Each kill lands mid-run: once the job has logged a random number of new samples (at most
    an even share of the stream, so kills spread over the whole run), plus a random fraction
    of a checkpoint interval, so it may hit a step, a log write or a checkpoint write. A kill
    that comes after the job finished is not counted as one.
    """
    expected = continuous_stream(shard_dir)
    share = max(1, len(expected) // (kills + 1))
    resumes = []
    for attempt in range(kills + 1):
        world_size, workers = rng.choice([1, 2, 3]), rng.choice([0, 1, 2])
        command = [
            sys.executable,
            __file__,
            "job",
            str(shard_dir),
            str(state_dir),
            str(world_size),
            str(workers),
            str(every),
            str(step_seconds),
        ]
        start = _discard_uncheckpointed(state_dir)
        target = start + rng.randint(1, share)
        process = subprocess.Popen(command, start_new_session=True, cwd=HERE)
        killed = False
        if attempt < kills and _wait_for_lines(state_dir, target, process):
            time.sleep(rng.uniform(0.0, every * step_seconds))
            killed = not (state_dir / "done").exists()
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=300)
        resumes.append(
            {
                "world_size": world_size,
                "num_workers": workers,
                "returncode": process.returncode,
                "killed_mid_run": killed,
            }
        )
        if (state_dir / "done").exists():
            break
    logged = [json.loads(line) for line in (state_dir / "log.jsonl").read_text().splitlines()]
    return {
        "kills": sum(r["killed_mid_run"] for r in resumes),
        "runs": resumes,
        "samples": len(logged),
        "expected": len(expected),
        "match": logged == expected,
        "finished": (state_dir / "done").exists(),
    }


def _discard_uncheckpointed(state_dir: Path) -> int:
    """Cut the log to what the last checkpoint covers, as the job will; return its line count.

    Done before the job starts, so the lines the driver waits for are the new job's own.
    """
    import msgpack

    checkpoint, log_path = state_dir / "checkpoint.msgpack", state_dir / "log.jsonl"
    log_bytes = msgpack.unpackb(checkpoint.read_bytes())["log_bytes"] if checkpoint.exists() else 0
    log_path.touch()
    os.truncate(log_path, log_bytes)
    return log_path.read_bytes().count(b"\n")


def _wait_for_lines(
    state_dir: Path, lines: int, process: subprocess.Popen, timeout: float = 120.0
) -> bool:
    """Wait until the job's log holds ``lines`` lines; False if the job ended first."""
    log_path, deadline = state_dir / "log.jsonl", time.monotonic() + timeout
    while process.poll() is None:
        if log_path.exists() and log_path.read_bytes().count(b"\n") >= lines:
            return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"soak job logged fewer than {lines} samples in {timeout} s")
        time.sleep(0.005)
    return False


def write_soak_shards(directory: Path, *, shards: int = 6, per_shard: int = 40) -> Path:
    from resumable_loader.demo import write_shards

    directory.mkdir(parents=True, exist_ok=True)
    write_shards(directory, shards=shards, per_shard=per_shard)
    return directory


def main() -> None:
    sys.path.insert(0, str(HERE))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_job = sub.add_parser("job")
    for name in ("shard_dir", "state_dir"):
        run_job.add_argument(name, type=Path)
    for name in ("world_size", "num_workers", "every"):
        run_job.add_argument(name, type=int)
    run_job.add_argument("step_seconds", type=float)
    run_drive = sub.add_parser("drive")
    run_drive.add_argument("--kills", type=int, default=20)
    run_drive.add_argument("--seed", type=int, default=0)
    run_drive.add_argument("--workdir", type=Path, default=Path("/tmp/resumable-loader-soak"))
    args = parser.parse_args()
    if args.command == "job":
        job(
            args.shard_dir,
            args.state_dir,
            args.world_size,
            args.num_workers,
            args.every,
            args.step_seconds,
        )
        return
    shard_dir = write_soak_shards(args.workdir / "shards", shards=12, per_shard=60)
    state_dir = args.workdir / f"state-{args.seed}"
    state_dir.mkdir(parents=True, exist_ok=False)
    outcome = drive(shard_dir, state_dir, kills=args.kills, rng=random.Random(args.seed))
    print(json.dumps(outcome, indent=1))
    sys.exit(0 if outcome["match"] and outcome["finished"] else 1)


if __name__ == "__main__":
    main()
