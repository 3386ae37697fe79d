"""Shard-local order: replay rate of the C++ shuffle buffer and the cost of a resume.

Run: python benchmarks/bench_shuffle_buffer.py [--shards S] [--per-shard P] [--window K]

A resume replays the epoch's id bookkeeping from its start (the cursor stores no buffer); this
prints the replay rate of skip() and fill() for two buffer sizes, the time to reach positions
10^6, 10^7 and 10^8, and the bytes a cursor would need if it stored the buffer instead. The
checksum (CRC-32 of the filled ids) changes only if the order does.
"""

from __future__ import annotations

import argparse
import time
import zlib

import numpy as np

from resumable_loader import _core
from resumable_loader.order import ShardLocalOrder

SEED = 7
REPLAYED = 10**8
CHUNK = 65536  # the loader's chunk size: fills reuse one array
FIRST = 64  # ids read after a resume


def replay_rates(
    sizes: np.ndarray, window: int, buffer_size: int, count: int
) -> tuple[float, float, int]:
    """(skip ids/s, fill ids/s, CRC-32 of the filled ids) over the first ``count`` ids."""
    stream = _core.ShardLocalStream(sizes, SEED, 0, window, buffer_size)
    start = time.perf_counter()
    stream.skip(count)
    skip_rate = count / (time.perf_counter() - start)
    stream = _core.ShardLocalStream(sizes, SEED, 0, window, buffer_size)
    out = np.empty(CHUNK, dtype=np.int64)
    filling, checksum, done = 0.0, 0, 0
    while done < count:
        view = out[: min(CHUNK, count - done)]
        start = time.perf_counter()
        done += stream.fill(view)
        filling += time.perf_counter() - start
        checksum = zlib.crc32(view, checksum)
    return skip_rate, count / filling, checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--per-shard", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    sizes = np.full(args.shards, args.per_shard, dtype=np.int64)
    total = int(sizes.sum())
    count = min(total, REPLAYED)
    print(
        f"# {args.shards:,} shards x {args.per_shard:,} samples, window {args.window}, "
        f"replaying {count:,} ids"
    )
    print(
        f"{'buffer':>8}{'skip M ids/s':>14}{'fill M ids/s':>14}{'stored-buffer cursor':>22}"
        "  checksum"
    )
    for buffer_size in (1024, 16384):
        skip_rate, fill_rate, checksum = replay_rates(sizes, args.window, buffer_size, count)
        print(
            f"{buffer_size:>8}{skip_rate / 1e6:>14.1f}{fill_rate / 1e6:>14.1f}"
            f"{buffer_size * 8:>20,} B  {checksum:08x}"
        )

    order = ShardLocalOrder(sizes, seed=SEED, window=args.window, buffer_size=1024)
    print(f"\n# resume, buffer 1024: time to the first {FIRST} ids")
    print(f"{'position':>14}{'time':>12}{'replayed M ids/s':>18}")
    for position in (10**6, 10**7, 10**8):
        position = min(position, total - FIRST)  # the epoch's last ids stand in for its end
        start = time.perf_counter()
        order.ids(3, position, position + FIRST)
        elapsed = time.perf_counter() - start
        print(f"{position:>14,}{elapsed * 1e3:>9.1f} ms{position / elapsed / 1e6:>18.1f}")


if __name__ == "__main__":
    main()
