"""One rank of tests/test_checkpoint_collective.py's torchrun job: the Checkpointer's saves and
loads as collectives of 2 DDP ranks.

Launched as ``python -m torch.distributed.run --standalone --nproc-per-node=2
checkpoint_collective_job.py DIRECTORY OUT``; each rank pickles what it saw to
``OUT/<rank>.pkl``: the gradient a DDP step makes after a load (the ranks' own gradients
differ; DDP's all-reduce makes them one), and the error (or not) of a save given another step
on each rank, of a save whose component's ``state_dict()`` raises on rank 1 only, and which
step a load right after an asynchronous save takes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from resumable_loader.checkpoint import Checkpointer


class Raising:
    """A component whose ``state_dict()`` raises on rank 1 only."""

    def state_dict(self) -> dict[str, Any]:
        if dist.get_rank() == 1:
            raise RuntimeError("state_dict failed on rank 1")
        return {"value": 1}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def gradient_after_a_step(model: nn.Module, rank: int) -> str:
    """A digest of the gradients one DDP step leaves: each rank's own batch, all-reduced."""
    model.zero_grad()
    torch.manual_seed(100 + rank)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return hashlib.sha256(grads.numpy().tobytes()).hexdigest()[:16]


def outcome(call: Any) -> str:
    try:
        call()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "ok"


def main(directory: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters())
    state = {"model": model, "optimizer": optimizer}
    checkpointer = Checkpointer(directory / "sync")
    checkpointer.save(1, state)
    result: dict[str, Any] = {"continuous": gradient_after_a_step(model, rank)}
    checkpointer.load(state)
    result["after_load"] = gradient_after_a_step(model, rank)
    result["other_steps"] = outcome(lambda: checkpointer.save(2 + rank, state))
    raising = {**state, "raising": Raising()}
    result["raising"] = outcome(lambda: checkpointer.save(3, raising))
    result["left"] = sorted(os.listdir(directory / "sync"))
    asynchronous = Checkpointer(directory / "async", async_save=True)
    asynchronous.save(4, state)
    asynchronous.save(5, state)
    result["loaded"] = asynchronous.load(state)["step"]
    with open(out / f"{rank}.pkl", "wb") as f:
        pickle.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
