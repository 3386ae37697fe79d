"""Shard-local order: its speed, the cost of a resume, and the quality of its shuffle.

Run: python benchmarks/bench_shuffle_buffer.py [--only engine|resume|quality] [--repeats R]

- engine: ids/s of a whole epoch filled in the loader's 65,536-id chunks, for two block sizes;
  the checksum (CRC-32 of the ids) changes only if the order does.
- resume: the first 64 ids after a resume at 0, 10%, 50% and 90% of an epoch of 10^9 samples
  (100,000 shards of 10,000), computed by a new order object as a resumed process does, median
  of R rounds (the positions alternated within a round), and the ratio to a fresh start
  (position 0).
- quality: over one epoch of 64 shards of 1,000 samples, the distances |id[p+1] - id[p]| between
  neighbours in the stream (ids of a shard are consecutive), how often neighbours are
  consecutive ids, and the distinct shards per batch of 64 and per 256 reads.

Only the public ShardLocalOrder API is used, so the same script measures an earlier release
(put its package first on the path) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib

import numpy as np

from resumable_loader.order import ShardLocalOrder

SEED = 7
CHUNK = 65536  # the loader's chunk size
FIRST = 64  # ids read after a resume
SETTINGS = ((4, 256), (8, 1024))  # (window, buffer_size) measured for quality


def engine(repeats: int) -> None:
    sizes = np.full(10_000, 10_000, dtype=np.int64)
    total = int(sizes.sum())
    print(
        f"# engine: {len(sizes):,} shards x 10,000 samples, window 8, an epoch in {CHUNK:,}-id "
        f"chunks, best of {repeats}"
    )
    print(f"{'buffer':>8}{'M ids/s':>10}  checksum")
    for buffer_size in (1024, 16384):
        order = ShardLocalOrder(sizes, seed=SEED, window=8, buffer_size=buffer_size)
        best, checksum = 0.0, 0
        for _ in range(repeats):
            checksum = 0
            start = time.perf_counter()
            for chunk in order.iter_ids(0, chunk_size=CHUNK):
                checksum = zlib.crc32(chunk, checksum)
            best = max(best, total / (time.perf_counter() - start))
        print(f"{buffer_size:>8}{best / 1e6:>10.1f}  {checksum:08x}")


def resume(repeats: int) -> None:
    sizes = np.full(100_000, 10_000, dtype=np.int64)
    total = int(sizes.sum())
    fractions = (0.0, 0.1, 0.5, 0.9)
    print(
        f"\n# resume: {len(sizes):,} shards x 10,000 samples ({total:,}), window 8, buffer "
        f"1024: the first {FIRST} ids from a new order object, median of {repeats} rounds "
        "(positions alternated within a round)"
    )
    print(
        f"{'resume at':>12}{'position':>16}{'first ids':>12}{'vs fresh':>10}"
        f"{'CPU time':>12}{'vs fresh':>10}"
    )
    # (wall, CPU) seconds per round: the CPU time of this process, which the machine's other
    # load disturbs far less than the wall-clock time
    times: dict[float, list[tuple[float, float]]] = {fraction: [] for fraction in fractions}
    for _ in range(repeats):
        for fraction in fractions:
            position = int(total * fraction)
            wall, cpu = time.perf_counter(), time.process_time()
            order = ShardLocalOrder(sizes, seed=SEED, window=8, buffer_size=1024)
            order.ids(3, position, position + FIRST)
            times[fraction].append((time.perf_counter() - wall, time.process_time() - cpu))
    fresh = [statistics.median(t[i] for t in times[0.0]) for i in (0, 1)]
    for fraction in fractions:
        wall, cpu = (statistics.median(t[i] for t in times[fraction]) for i in (0, 1))
        label = "start" if fraction == 0 else f"{fraction:.0%}"
        print(
            f"{label:>12}{int(total * fraction):>16,}{wall * 1e3:>9.2f} ms{wall / fresh[0]:>10.2f}"
            f"{cpu * 1e3:>9.2f} ms{cpu / fresh[1]:>10.2f}"
        )


def quality() -> None:
    shards, per_shard = 64, 1000
    sizes = np.full(shards, per_shard, dtype=np.int64)
    print(f"\n# quality: one epoch of {shards} shards x {per_shard:,} samples, mean of epochs 0-3")
    print(
        f"{'window':>7}{'buffer':>8}{'|d| p10':>9}{'median':>8}{'p90':>8}{'d = +-1':>9}"
        f"{'shards/64':>11}{'min':>5}{'shards/256':>12}"
    )
    for window, buffer_size in SETTINGS:
        order = ShardLocalOrder(sizes, seed=SEED, window=window, buffer_size=buffer_size)
        rows = []
        for epoch in range(4):
            ids = order.ids(epoch, 0, len(order))
            distance = np.abs(np.diff(ids))
            shard = ids // per_shard
            per_64 = [len(np.unique(b)) for b in np.split(shard, len(shard) // 64)]
            per_256 = [len(np.unique(b)) for b in np.split(shard, len(shard) // 256)]
            rows.append(
                (
                    *np.percentile(distance, [10, 50, 90]),
                    float(np.mean(distance == 1)),
                    float(np.mean(per_64)),
                    min(per_64),
                    float(np.mean(per_256)),
                )
            )
        p10, median, p90, adjacent, mean_64, min_64, mean_256 = np.mean(rows, axis=0)
        print(
            f"{window:>7}{buffer_size:>8}{p10:>9.0f}{median:>8.0f}{p90:>8.0f}{adjacent:>9.3f}"
            f"{mean_64:>11.2f}{min_64:>5.0f}{mean_256:>12.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["engine", "resume", "quality"])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if args.only in (None, "engine"):
        engine(args.repeats)
    if args.only in (None, "resume"):
        resume(args.repeats)
    if args.only in (None, "quality"):
        quality()


if __name__ == "__main__":
    main()
