"""Packed runs under real torchrun jobs (gloo, CPU): saved on 2 ranks, resumed on 1 and on 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from packing_factory import DATA, Record, make, stream
from packing_job import EPOCHS
from torchrun_harness import rank_pickles
from torchrun_harness import torchrun as run_job

JOB = Path(__file__).with_name("packing_job.py")


def global_packs(results: list[dict[str, Any]]) -> list[Record]:
    """The ranks' packs, global batch by global batch (rank 0's batch first)."""
    merged: list[Record] = []
    for step in zip(*(r["batches"] for r in results), strict=True):
        for batch in step:
            merged += batch
    return merged


def by_epoch(records: list[Record]) -> dict[int, list[Record]]:
    epochs: dict[int, list[Record]] = {}
    for record in records:
        epochs.setdefault(record[0], []).append(record)
    return epochs


@pytest.mark.slow
def test_a_packed_run_saved_on_two_ranks_resumes_on_another_world_size(tmp_path: Path) -> None:
    """One run saved on 2 ranks, resumed from that state on 1 rank and, again, on 3."""
    state = tmp_path / "state.pt"

    def torchrun(nproc: int, name: str, *job_args: str) -> list[dict[str, Any]]:
        out = tmp_path / name
        out.mkdir()
        run_job(JOB, nproc, state, out, *job_args, timeout=180)
        return rank_pickles(out, nproc)

    head = torchrun(2, "head", "--batch-size=2", "--num-workers=0", "--stop-after=3")
    assert [r["world_size"] for r in head] == [2, 2]
    expected = by_epoch(stream(make(DATA, batch_size=2), EPOCHS))
    for resumed_world_size in (1, 3):
        tail = torchrun(
            resumed_world_size, f"tail{resumed_world_size}", "--batch-size=3", "--num-workers=2"
        )
        assert [r["world_size"] for r in tail] == [resumed_world_size] * resumed_world_size

        got = by_epoch(global_packs(head) + global_packs(tail))
        assert sorted(got) == sorted(expected)
        for epoch, packs in expected.items():
            # every pack once, in order; a last global batch that does not fill every rank is
            # padded with packs from the epoch's start, as a DistributedSampler pads
            assert got[epoch][: len(packs)] == packs, (resumed_world_size, epoch)
            assert set(got[epoch][len(packs) :]) <= set(packs[: len(got[epoch]) - len(packs)])
