"""Index build time per GB and per 100k samples, on tar shards written to a temp dir.

Run: python benchmarks/bench_index.py [--samples N] [--shards S] [--payload BYTES]
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

from resumable_loader import ShardedIndex, TarShardDataset


def write_shards(directory: Path, *, samples: int, shards: int, payload: int) -> list[str]:
    body = bytes(range(256)) * (payload // 256 + 1)
    paths = []
    per_shard = samples // shards
    for s in range(shards):
        path = directory / f"bench-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                for ext, data in (("bin", body[:payload]), ("cls", b"1")):
                    info = tarfile.TarInfo(f"s{s:05d}_{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--payload", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_shards(
            Path(tmp), samples=args.samples, shards=args.shards, payload=args.payload
        )
        gigabytes = sum(Path(p).stat().st_size for p in paths) / 1e9
        print(
            f"# {args.samples:,} samples (2 members each), {args.shards} shards, {gigabytes:.2f} GB"
        )
        print(f"{'workers':>8}{'seconds':>10}{'s per GB':>10}{'s per 100k samples':>20}")
        for workers in (1, 2):
            start = time.perf_counter()
            index = ShardedIndex.build(
                paths, out=Path(tmp) / f"i{workers}.rlindex", workers=workers, progress=False
            )
            seconds = time.perf_counter() - start
            print(
                f"{workers:>8}{seconds:>10.2f}{seconds / gigabytes:>10.2f}"
                f"{seconds / (args.samples / 1e5):>20.2f}"
            )
        dataset = TarShardDataset(index)
        print(
            f"\nindex in memory: {index.spans.nbytes / index.num_samples:.0f} bytes per sample"
            f" ({index.spans.nbytes:,} bytes, memory-mapped)"
        )
        start = time.perf_counter()
        for i in range(0, len(dataset), max(1, len(dataset) // 20000)):
            dataset[i]
        reads = len(range(0, len(dataset), max(1, len(dataset) // 20000)))
        print(
            f"random-access read: {(time.perf_counter() - start) / reads * 1e6:.1f} us per "
            "sample (page cache warm)"
        )


if __name__ == "__main__":
    main()
