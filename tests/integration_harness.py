"""Shared by the framework tests: run a training job, read back what each step trained on.

A job's ranks each append one JSON line per training step to ``OUT/rank<r>.jsonl`` (epoch,
sample ids, digests of the augmentations, loss). :func:`read_steps` merges them global step by
global step: rank 0's samples, then rank 1's, which is the loader's global stream (rank r
takes the r-th slice of each global batch), and the mean of the ranks' losses, which is the
loss of the global batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

Sample = tuple[int, int, str]  # epoch, sample id, digest


def run_job(command: list[str], out: Path, *, killed: bool = False, **kwargs) -> list[dict]:
    """Run a job that writes into ``out`` (created here); return its global steps.

    With ``killed``, the job must have died of SIGKILL (as a preempted job does); the last
    step any rank may have missed is dropped.
    """
    out.mkdir()
    done = _run(command, timeout=300, **kwargs)
    if killed:
        # SIGKILL itself, or (under torchrun's agent) an exit naming the killed child, or the
        # abort of a peer whose gloo connection the killed rank closed first
        signals = ("SIGKILL", "SIGABRT")
        died = done.returncode == -signal.SIGKILL or any(name in done.stderr for name in signals)
        assert died and done.returncode != 0, done.stderr[-3000:]
        pids = out / "pids"
        if pids.exists():
            _wait_for_exit(int(pid) for pid in pids.read_text().split())
    else:
        assert done.returncode == 0, done.stderr[-3000:]
    for refused in ("TopologyWarning", "StateDictError", "ResumeWarning"):
        assert refused not in done.stderr, done.stderr[-3000:]
    return read_steps(out, truncate=killed)


def _run(command: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own, so a job that hangs is killed whole (its ranks
    and workers, not only the launcher) before the timeout is raised."""
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def read_steps(out: Path, *, truncate: bool = False) -> list[dict]:
    """The global steps recorded in ``out/rank*.jsonl``: {"epoch", "samples", "loss"}."""
    per_rank = [
        [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(out.glob("rank*.jsonl"))
    ]
    assert per_rank, f"no records in {out}"
    if truncate:
        shortest = min(len(records) for records in per_rank)
        per_rank = [records[:shortest] for records in per_rank]
    steps = []
    for records in zip(*per_rank, strict=True):
        assert len({r["epoch"] for r in records}) == 1
        samples = [s for r in records for s in zip(r["ids"], r["digests"], strict=True)]
        loss = sum(r["loss"] for r in records) / len(records)
        steps.append({"epoch": records[0]["epoch"], "samples": samples, "loss": loss})
    return steps


def recorded(out: Path, key: str) -> set:
    """Every value of ``key`` in the records of all ranks in ``out`` (None where absent)."""
    paths = out.glob("rank*.jsonl")
    return {json.loads(line).get(key) for path in paths for line in path.read_text().splitlines()}


def samples(steps: list[dict]) -> list[Sample]:
    """The stream of samples the steps trained on, in order."""
    return [(s["epoch"], sample_id, d) for s in steps for sample_id, d in s["samples"]]


def assert_same_run(resumed: list[dict], continuous: list[dict]) -> None:
    """The same samples, augmentations and (up to float rounding) losses, step by step."""
    assert samples(resumed) == samples(continuous)
    assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in continuous], abs=1e-6)


def assert_covers_epochs(steps: list[dict], length: int, epochs: int) -> None:
    """Every sample once an epoch, and another order in each epoch."""
    stream = samples(steps)
    for epoch in range(epochs):
        assert sorted(i for e, i, _ in stream if e == epoch) == list(range(length))
    orders = {tuple(i for e, i, _ in stream if e == epoch) for epoch in range(epochs)}
    assert len(orders) == epochs


class Run(NamedTuple):
    """A finished job: the directory it wrote (records, checkpoints) and its global steps."""

    out: Path
    steps: list[dict]


def assert_kill_and_resume(
    head: Callable[..., list[dict]],
    tail: Callable[..., list[dict]],
    continuous: list[dict],
    out: Path,
    *,
    checkpoint: str,
    head_workers: int,
    tail_workers: int,
) -> None:
    """``head(dir, *args, killed=True)`` runs a job killed after its 5th step, having saved
    step 3 as ``checkpoints/<checkpoint>``; ``tail(dir, *args)`` resumes it from there. With
    ``head_workers`` and ``tail_workers`` per process, the two together train exactly the
    steps of the uninterrupted run ``continuous``."""
    steps = head(out / "head", f"--num-workers={head_workers}", "--kill-at=5", killed=True)
    assert len(steps) == 5
    assert recorded(out / "head", "num_workers") == {head_workers}
    assert_resumes(tail, Run(out / "head", steps), continuous, out, checkpoint, tail_workers)


def assert_resumes(
    tail: Callable[..., list[dict]],
    saved: Run,
    continuous: list[dict],
    out: Path,
    checkpoint: str,
    tail_workers: int,
) -> None:
    """``tail(out / "tail", *args)`` resumes the run ``saved`` from its step-3 checkpoint
    ``checkpoints/<checkpoint>`` with ``tail_workers`` per process: that run's first 3 steps
    and the resumed ones are exactly the steps of the uninterrupted run ``continuous``."""
    resumed = tail(
        out / "tail",
        f"--num-workers={tail_workers}",
        f"--resume={saved.out / 'checkpoints' / checkpoint}",
    )
    assert recorded(out / "tail", "num_workers") == {tail_workers}
    assert_same_run(saved.steps[:3] + resumed, continuous)


def _wait_for_exit(pids, timeout: float = 60.0) -> None:
    """A killed rank 0 may leave other ranks to kill themselves a moment later: wait."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
