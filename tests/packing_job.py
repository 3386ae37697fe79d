"""One rank of the packed torchrun jobs of tests/test_packing_torchrun.py.

Launched as ``python -m torch.distributed.run --standalone --nproc-per-node=W packing_job.py
STATE OUT --batch-size B --num-workers K [--stop-after S]``. Rank and world size come from the
process group. With ``--stop-after``, each rank consumes S batches, checks that the ranks hold
the same cursor and rank 0 saves it to STATE; without it, each rank loads STATE and consumes
the rest of the run. Each rank writes its packs, batch by batch, to ``OUT/<rank>.pkl``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence

import torch
import torch.distributed as dist
from distributed_harness import job_arguments
from packing_factory import DATA, make, packs

EPOCHS = 2


def main(argv: Sequence[str] | None = None) -> None:
    """Run this rank's part of the job and write its result (see the module docstring)."""
    args = job_arguments(argv, __doc__, "state", "the loader state file")

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        loader = make(DATA, batch_size=args.batch_size, num_workers=args.num_workers)
        epochs = EPOCHS
        if args.stop_after is None:
            saved = torch.load(args.state, weights_only=True)
            loader.load_state_dict(saved)
            epochs -= saved["epoch"]
        batches = []
        for _ in range(epochs):
            for batch in loader:
                epoch = loader.state_dict()["epoch"]
                batches.append([(epoch, *record[1:]) for record in packs(batch)])
                if len(batches) == args.stop_after:
                    break
            if len(batches) == args.stop_after:
                break
        state = loader.state_dict(check_ranks=True)
        if args.stop_after is not None and loader.rank == 0:
            torch.save(state, args.state)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(args.out, f"{loader.rank}.pkl"), "wb") as f:
        pickle.dump({"world_size": loader.world_size, "batches": batches}, f)


if __name__ == "__main__":
    main()
