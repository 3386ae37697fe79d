"""One rank of tests/test_storage_prefetch.py's torchrun check: ranks of one node share the
node cache and split its blocks, and a run stopped on 2 ranks resumes on 1.

Launched as ``python -m torch.distributed.run --standalone --nproc-per-node=W
prefetch_torchrun_job.py SHARDS_JSON CACHE OUT --batch-size B --num-workers K
[--stop-after S] [--state PATH]``: each rank loads the shards through the prefetcher with the
node cache in CACHE (``--state``: from that saved state), consumes ``--stop-after`` batches or
the epoch, rank 0 saves the state to OUT/state.pt, and each rank writes its samples and its
storage counters to OUT/<rank>.pkl.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import torch
import torch.distributed as dist
from test_storage_prefetch import prefetching

from resumable_loader import DataLoader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shards")
    parser.add_argument("cache")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--num-workers", type=int, required=True)
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--state")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        dataset = prefetching(json.loads(Path(args.shards).read_text()), Path(args.cache))
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.num_workers,
            seed=7,
            collate_fn=list,
        )
        if args.state:
            loader.load_state_dict(torch.load(args.state, weights_only=True))
        batches = []
        for batch in loader:
            batches.append(batch)
            if len(batches) == args.stop_after:
                break
        state = loader.state_dict(check_ranks=True)
        if loader.rank == 0:
            torch.save(state, Path(args.out) / "state.pt")
        stats = loader.storage_stats()
    finally:
        dist.destroy_process_group()
    with open(Path(args.out) / f"{loader.rank}.pkl", "wb") as f:
        pickle.dump({"batches": batches, "bytes": stats.bytes_fetched}, f)


if __name__ == "__main__":
    main()
