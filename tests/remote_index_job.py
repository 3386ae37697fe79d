"""One rank of the torchrun job of tests/test_remote_index.py: build the index of s3:// shards
under a gloo process group, recording which shards this rank scanned.

Launched as ``python -m torch.distributed.run --standalone --nproc-per-node=W
remote_index_job.py OUT URL...`` with the endpoint and credentials in the environment. Each
rank keeps its index in ``OUT/cache-<rank>`` and writes ``OUT/<rank>.pkl``: the shards it
scanned, the index's fingerprint and a digest of its arrays.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path

import torch.distributed as dist

from resumable_loader.index import build
from resumable_loader.index.sharded import ShardedIndex


def main() -> None:
    out, urls = Path(sys.argv[1]), sys.argv[2:]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    scanned: list[str] = []
    scan_one = build._scan_one

    def spy(job: tuple[str, str, str]):
        scanned.append(job[0])
        return scan_one(job)

    build._scan_one = spy
    index = ShardedIndex.for_shards(urls, cache_dir=out / f"cache-{rank}")
    digest = hashlib.sha256(index.records.tobytes() + index.checksums.tobytes()).hexdigest()
    with open(out / f"{rank}.pkl", "wb") as f:
        pickle.dump(
            {"scanned": sorted(scanned), "fingerprint": index.fingerprint, "digest": digest}, f
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
