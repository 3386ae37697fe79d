"""The Checkpointer's saves and loads as collectives of 2 DDP ranks (torchrun, gloo): no rank
trains on, hangs or loads alone (tests/checkpoint_collective_job.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torchrun_harness import rank_pickles, torchrun

JOB = Path(__file__).with_name("checkpoint_collective_job.py")


@pytest.mark.slow  # one torchrun launch of 2 ranks: ~10 s
def test_saves_and_loads_act_on_every_rank_alike(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    torchrun(JOB, 2, tmp_path / "checkpoints", out, timeout=120, OMP_NUM_THREADS="1")
    ranks = rank_pickles(out, 2)
    # after a load DDP still all-reduces: the ranks' gradients are one, as before it (the
    # swap through set_() gave the parameters new autograd nodes, without DDP's hooks)
    assert ranks[0]["after_load"] == ranks[1]["after_load"] == ranks[0]["continuous"]
    for result in ranks:
        # steps 2 and 3: each rank wrote a folder of its own, and both said they saved
        assert "the ranks gave different steps ({0: 2, 1: 3})" in result["other_steps"]
        # rank 0 waited in DCP's collective for rank 1, which had raised
        assert (
            "'raising': state_dict() raised RuntimeError: state_dict failed on rank 1"
            in (result["raising"])
            or "rank 1 could not save" in result["raising"]
        )
        written = [name for name in result["left"] if name.startswith((".tmp-", "step-"))]
        assert written == ["step-0000000001"]  # nothing of steps 2 and 3 left
        # a load right after an asynchronous save: the new checkpoint on every rank
        assert result["loaded"] == 5
