"""Checkpointer under torchrun (gloo, CPU): saved by 2 DDP or FSDP2 ranks, resumed by 1.

Two ranks train a DDP model with per-rank batches of 3 and save steps 2 and 4 through the
Checkpointer, asynchronously; one rank resumes step 4 in flexible mode with batches of 5. The
samples both runs trained on are the single-process stream of the same seed, in order, the
state loaded is the state saved, and the decision says the RNG states were re-derived (the
rank layout changed) and lists world size and batch size as changed, old -> new. Under FSDP2
the two ranks save shards; the one rank loads them into an unsharded model, and the whole
state it holds is the one the two ranks held; resumed strictly by two ranks, each reads its
shards. The resume probe recorded by two DDP ranks is
recomputed by two ranks after a strict resume, bit for bit, changing nothing. A byte flipped
in one rank's data file makes both ranks fall back to the earlier checkpoint alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from checkpoint_job import LENGTH, Regression, entries
from torchrun_harness import torchrun as run_job

from resumable_loader import DataLoader

JOB = Path(__file__).with_name("checkpoint_job.py")


def torchrun(nproc: int, checkpoint: Path, out: Path, *args: str) -> list[list[dict]]:
    """Run the job on ``nproc`` ranks; each rank's JSON lines, by rank."""
    run_job(JOB, nproc, checkpoint, out, *args, OMP_NUM_THREADS="1")
    return [
        [json.loads(line) for line in (out / f"rank-{rank}.jsonl").read_text().splitlines()]
        for rank in range(nproc)
    ]


@pytest.mark.slow  # two torchrun launches: ~25 s on 2 cores
def test_two_ranks_resumed_by_one_with_another_batch_size(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    head = torchrun(  # saving asynchronously, at steps 2 and 4
        2,
        checkpoint,
        tmp_path / "head",
        "--steps=4",
        "--save-every=2",
        "--batch-size=3",
        "--async-save",
    )
    (tail,) = torchrun(
        1,
        checkpoint,
        tmp_path / "tail",
        "--steps=8",
        "--save-every=100",
        "--batch-size=5",
        "--resume=flexible",
    )
    decision = tail[0]["decision"]
    assert decision["step"] == 4 and decision["mode"] == "flexible"
    assert decision["rederived"] == ["rng"]
    assert decision["changed"] == {
        "world_size": {"old": 2, "new": 1},
        "loader.world_size": {"old": 2, "new": 1},
        "loader.batch_size": {"old": 3, "new": 5},
    }
    assert set(decision["components"]) == {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "ema",
        "loader",
        "rng",
    }

    trained = []  # global batch by global batch: rank 0's part, then rank 1's
    for rank0, rank1 in zip(*head, strict=True):
        if "step" in rank0:
            trained += rank0["entries"] + rank1["entries"]
    for record in tail[1:]:
        if "step" in record:
            trained += record["entries"]
    trained = [e for e in trained if e[1] < LENGTH]  # no padding positions
    single = DataLoader(Regression(), batch_size=6, shuffle=True, seed=7)
    expected = [e for _ in range(2) for batch in single for e in entries(batch)]
    assert len(trained) == 4 * 6 + 5 + 5 + 2 + 5
    assert trained == expected[: len(trained)]
    saved = [r["digest"] for r in head[0] if "saved" in r]
    assert tail[0]["loaded"] == saved[-1]  # the DDP model and its optimizer, bit for bit


@pytest.mark.slow
def test_fsdp2_shards_saved_by_two_ranks_load_unsharded_on_one(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    head = torchrun(2, checkpoint, tmp_path / "head", "--steps=2", "--save-every=2", "--fsdp")
    (tail,) = torchrun(
        1, checkpoint, tmp_path / "tail", "--steps=3", "--save-every=100", "--resume=flexible"
    )
    saved = {r["digest"] for rank in head for r in rank if "saved" in r}
    assert len(saved) == 1  # the full state, gathered on each rank
    assert tail[0]["loaded"] == saved.pop()  # resharded from FSDP2 shards to a plain model
    assert tail[0]["decision"]["rederived"] == ["rng"]
    assert tail[0]["decision"]["changed"]["world_size"] == {"old": 2, "new": 1}


@pytest.mark.slow  # two torchrun launches of 2 ranks: ~25 s on 2 cores
def test_fsdp2_shards_saved_by_two_ranks_load_strictly_on_two(tmp_path):
    """Each rank reads its own shards into its sharded parameters and moments (the direct
    read's path into DTensor shards; the resharding test above takes it into plain tensors)."""
    checkpoint = tmp_path / "checkpoint"
    head = torchrun(2, checkpoint, tmp_path / "head", "--steps=2", "--save-every=2", "--fsdp")
    tail = torchrun(
        2,
        checkpoint,
        tmp_path / "tail",
        "--steps=3",
        "--save-every=100",
        "--fsdp",
        "--resume=strict",
    )
    saved = {r["digest"] for rank in head for r in rank if "saved" in r}
    assert len(saved) == 1
    assert [rank[0]["loaded"] for rank in tail] == [saved.pop()] * 2
    assert all(rank[0]["decision"]["rederived"] == [] for rank in tail)


@pytest.mark.slow  # two torchrun launches of 2 ranks: ~25 s on 2 cores
def test_the_probe_recorded_by_two_ranks_passes_bit_for_bit_after_a_strict_resume(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    head = torchrun(2, checkpoint, tmp_path / "head", "--steps=3", "--save-every=3", "--probe")
    tail = torchrun(
        2,
        checkpoint,
        tmp_path / "tail",
        "--steps=4",
        "--save-every=100",
        "--resume=strict",
        "--probe",
    )
    manifest = json.loads((checkpoint / "step-0000000003" / "manifest.json").read_text())
    recorded = manifest["probe"]
    loader = DataLoader(Regression(), batch_size=4, shuffle=True, seed=7)
    assert recorded["ids"] == [int(i) for i in loader.order.ids(0, 0, 4)]
    reports = [rank[1] for rank in tail]
    for report in reports:
        assert report["unchanged"] and report["probe"]["exact"] and report["probe"]["ok"]
        assert report["probe"]["ids"] == recorded["ids"]
        assert report["probe"]["loss"]["now"] == float.fromhex(recorded["loss"])
    assert reports[0]["probe"] == reports[1]["probe"]  # the replicas agree
    saved = [r["digest"] for r in head[0] if "saved" in r]
    assert all(rank[0]["loaded"] == saved[-1] for rank in tail)


@pytest.mark.slow  # two torchrun launches of 2 ranks: ~25 s on 2 cores
def test_a_data_file_damaged_on_one_rank_makes_both_fall_back_alike(tmp_path):
    """The staged read hashes the data files as the ranks read them: a byte flipped in rank
    1's file of step 4 is found, every rank hears of it, and both load step 2 instead."""
    checkpoint = tmp_path / "checkpoint"
    head = torchrun(2, checkpoint, tmp_path / "head", "--steps=4", "--save-every=2")
    (damaged,) = checkpoint.glob("step-*4/__1_0.distcp")
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    tail = torchrun(
        2, checkpoint, tmp_path / "tail", "--steps=3", "--save-every=100", "--resume=strict"
    )
    step_2 = {r["digest"] for rank in head for r in rank if r.get("saved") == 2}
    assert len(step_2) == 1
    for rank in tail:
        decision = rank[0]["decision"]
        assert decision["step"] == 2 and rank[0]["loaded"] == next(iter(step_2))
        (skipped,) = decision["skipped"]
        assert "__1_0.distcp" in " ".join(skipped["problems"])
        assert decision["checksums"]["mode"] == "verified"
