"""Real torchrun jobs (gloo, CPU): default topology and seed, DCP save, resume at another size.

Unlike test_distributed.py, whose ranks are forked with an explicit rank, world size and seed,
these ranks are started by torchrun (``python -m torch.distributed.run``, so with this
interpreter) and the loader is given none of them: what torchrun users write is what runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from distributed_harness import augmented, consume, global_stream
from torchrun_harness import rank_pickles
from torchrun_harness import torchrun as run_job
from torchrun_job import EPOCHS, N

from resumable_loader import ResumableDataLoader

JOB = Path(__file__).with_name("torchrun_job.py")


def torchrun(nproc: int, out: Path, checkpoint: Path, *job_args: str) -> list[dict[str, Any]]:
    """Run tests/torchrun_job.py on ``nproc`` ranks; return each rank's result, by rank."""
    out.mkdir()
    run_job(JOB, nproc, checkpoint, out, *job_args, timeout=120)
    return rank_pickles(out, nproc)


@pytest.mark.slow
def test_torchrun_dcp_resume_at_another_world_size(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    head = torchrun(
        2, tmp_path / "head", checkpoint, "--batch-size=3", "--num-workers=0", "--stop-after=4"
    )
    # one rank left, as after a node failure (2 -> 3 is test_distributed.py's, without torchrun)
    tail = torchrun(1, tmp_path / "tail", checkpoint, "--batch-size=5", "--num-workers=1")
    for world_size, results in ((2, head), (1, tail)):
        expected = [(rank, world_size) for rank in range(world_size)]
        assert [r["topology"] for r in results] == [r["environment"] for r in results] == expected
    seeds = {r["seed"] for r in head + tail}  # drawn by the head's rank 0, then restored
    assert len(seeds) == 1
    assert all(r["state"] == head[0]["state"] for r in head)
    assert head[0]["state"]["position"] == 4 * 2 * 3

    stream = global_stream([r["batches"] for r in head], N)
    stream += global_stream([r["batches"] for r in tail], N)
    single = ResumableDataLoader(
        augmented(N), batch_size=3, shuffle=True, seed=seeds.pop(), rank=0, world_size=1
    )
    assert stream == global_stream([consume(single, EPOCHS)], N)
