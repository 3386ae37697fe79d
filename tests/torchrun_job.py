"""One rank of the torchrun jobs of tests/test_torchrun.py: default topology and seed, DCP.

Launched as ``python -m torch.distributed.run --standalone --nproc-per-node=W torchrun_job.py
CHECKPOINT OUT --batch-size B --num-workers K [--stop-after S]``. Nothing about the topology is
passed to the loader, because that default is what is under test: rank and world size come from
the process group set up from torchrun's environment, and the seed is the loader's default,
drawn on rank 0 and broadcast. With ``--stop-after``, each rank consumes that many batches,
checks that all ranks hold the same cursor (``state_dict(check_ranks=True)``) and saves
``{"loader": loader}`` with dcp.save; without it, each rank dcp.loads the checkpoint and
consumes the rest of the run. Each rank writes what it saw to ``OUT/<rank>.pkl``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from distributed_harness import augmented, consume, job_arguments
from resume_harness import epochs_left

from resumable_loader import ResumableDataLoader

N = 55
EPOCHS = 2


def main(argv: Sequence[str] | None = None) -> None:
    """Run this rank's part of the job and write its result (see the module docstring)."""
    args = job_arguments(argv, __doc__, "checkpoint", "the DCP checkpoint directory")

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        loader = ResumableDataLoader(
            augmented(N), batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers
        )
        epochs = EPOCHS
        if args.stop_after is None:
            dcp.load({"loader": loader}, checkpoint_id=args.checkpoint)
            epochs = epochs_left(loader.state_dict(), EPOCHS)
        batches = consume(loader, epochs, args.stop_after)
        state = loader.state_dict(check_ranks=True)
        if args.stop_after is not None:
            dcp.save({"loader": loader}, checkpoint_id=args.checkpoint)
    finally:
        dist.destroy_process_group()
    result = {
        "topology": (loader.rank, loader.world_size),
        "environment": (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])),
        "seed": loader.seed,
        "batches": batches,
        "state": state,
    }
    with open(os.path.join(args.out, f"{loader.rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main()
