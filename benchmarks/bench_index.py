"""Index build time per GB and per 100k samples on tar shards, against a plain tarfile scan.

Run: python benchmarks/bench_index.py [--samples N] [--shards S] [--payload BYTES]

Writes S WebDataset shards of N samples (a ``bin`` member of BYTES and a ``cls`` member) to a
temp dir, then times, with the page cache warm: tarfile listing every member (the baseline a
naive indexer pays), and ShardedIndex.build with 1 and 2 worker processes. A checksum of the
spans shows the work was done; then the index's size, load and pickle cost and random reads.
"""

from __future__ import annotations

import argparse
import io
import pickle
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from resumable_loader import ShardedIndex, TarShardDataset


def write_shards(directory: Path, *, samples: int, shards: int, payload: int) -> list[str]:
    body = (bytes(range(256)) * (payload // 256 + 1))[:payload]
    paths = []
    for shard in range(shards):
        path = directory / f"bench-{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(shard * samples // shards, (shard + 1) * samples // shards):
                for extension, data in (("bin", body), ("cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(f"s{i:08d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def tarfile_listing(paths: list[str]) -> int:
    """The baseline: every member's header through tarfile; returns a checksum of offsets."""
    checksum = 0
    for path in paths:
        with tarfile.open(path) as tar:
            checksum += sum(member.offset_data for member in tar)
    return checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--payload", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = write_shards(
            Path(tmp), samples=args.samples, shards=args.shards, payload=args.payload
        )
        gigabytes = sum(Path(p).stat().st_size for p in paths) / 1e9
        print(
            f"# {args.samples:,} samples (2 members each), {args.shards} shards, "
            f"{gigabytes:.2f} GB, written in {time.perf_counter() - start:.1f} s; page cache warm"
        )
        tarfile_listing(paths)  # warm the page cache for every row alike
        runs = {"tarfile listing (baseline)": lambda: tarfile_listing(paths)}
        for workers in (1, 2):
            out = Path(tmp) / f"w{workers}.rlindex"
            runs[f"ShardedIndex.build workers={workers}"] = lambda w=workers, o=out: int(
                ShardedIndex.build(paths, out=o, workers=w, progress=False).spans.sum()
            )
        print(f"{'scan':<32}{'seconds':>9}{'s per GB':>10}{'s/100k samples':>16}{'vs tarfile':>12}")
        baseline = None
        for name, run in runs.items():
            start = time.perf_counter()
            checksum = run()
            seconds = time.perf_counter() - start
            baseline = baseline or seconds
            print(
                f"{name:<32}{seconds:>9.2f}{seconds / gigabytes:>10.2f}"
                f"{seconds / (args.samples / 1e5):>16.2f}{baseline / seconds:>11.2f}x"
                f"  checksum {checksum:x}"
            )
        report_index(Path(tmp) / "w2.rlindex")


def report_index(path: Path) -> None:
    """What using the index costs: its size, loading, pickling a dataset, a random read."""
    start = time.perf_counter()
    index = ShardedIndex.load(path)
    load_ms = (time.perf_counter() - start) * 1e3
    dataset = TarShardDataset(index)
    print(
        f"\nindex file {path.stat().st_size:,} bytes: {index.spans.nbytes / len(dataset):.0f} "
        f"bytes a sample in the memory-mapped spans; load with verify {load_ms:.1f} ms; "
        f"pickled dataset {len(pickle.dumps(dataset))} bytes"
    )
    ids = np.random.default_rng(0).permutation(len(dataset))[:20_000]
    start = time.perf_counter()
    checksum = sum(len(dataset[int(i)]["bin"]) for i in ids)
    per_read = (time.perf_counter() - start) / len(ids) * 1e6
    print(f"random-access sample read: {per_read:.1f} us (checksum: {checksum:,} payload bytes)")


if __name__ == "__main__":
    main()
