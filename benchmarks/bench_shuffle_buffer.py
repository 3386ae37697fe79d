"""Shard-local order: replay rate of the C++ shuffle buffer and the cost of a resume.

Run: python benchmarks/bench_shuffle_buffer.py [--shards S] [--per-shard P]

A resume replays the epoch's id bookkeeping from its start (the cursor stores no buffer); this
prints the replay rate (skip and fill) for two buffer sizes, the time to reach positions 10^6,
10^7 and 10^8, and the bytes a cursor would need if it stored the buffer instead.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from resumable_loader import ShardLocalOrder, _core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--per-shard", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    sizes = np.full(args.shards, args.per_shard, dtype=np.int64)
    total = int(sizes.sum())
    count = min(total, 10**8)
    print(
        f"# {args.shards:,} shards x {args.per_shard:,} samples, window {args.window}, "
        f"replaying {count:,} ids"
    )
    print(
        f"{'buffer':>8}{'skip M ids/s':>14}{'fill M ids/s':>14}{'stored-buffer cursor':>22}"
        "  checksum"
    )
    for buffer_size in (1024, 16384):
        stream = _core.ShardLocalStream(sizes, 7, 0, args.window, buffer_size)
        start = time.perf_counter()
        stream.skip(count)
        skip_rate = count / (time.perf_counter() - start)
        stream = _core.ShardLocalStream(sizes, 7, 0, args.window, buffer_size)
        out = np.empty(65536, dtype=np.int64)  # the loader's chunk size: fills reuse memory
        start = time.perf_counter()
        for _ in range(count // 10 // len(out)):
            stream.fill(out)
        fill_rate = count // 10 // len(out) * len(out) / (time.perf_counter() - start)
        print(
            f"{buffer_size:>8}{skip_rate / 1e6:>14.1f}{fill_rate / 1e6:>14.1f}"
            f"{buffer_size * 8:>20,} B  {int(out[::997].sum()):x}"
        )
    order = ShardLocalOrder(sizes, seed=7, window=args.window, buffer_size=1024)
    print(f"\n{'resume at position':>20}{'time to first ids':>20}")
    for position in (10**6, 10**7, total * 9 // 10):
        start = time.perf_counter()
        order.ids(3, position, position + 64)
        print(f"{position:>20,}{(time.perf_counter() - start) * 1e3:>17.1f} ms")


if __name__ == "__main__":
    main()
