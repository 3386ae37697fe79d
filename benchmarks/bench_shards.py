"""Shard reads: locality of global vs shard-local shuffle, and resume cost in shard-local mode.

Run: python benchmarks/bench_shards.py [--shards S] [--per-shard P] [--payload BYTES]

Locality: one epoch through the loader (num_workers=0, so one process sees every read) over tar
shards written to a temp dir; for each order, the bytes read divided by the payload bytes
delivered, the median distance between consecutive reads of the same shard, and the shards in
flight. Resume: time to the first batch of a shard-local loader resumed at 10%,
50% and 90% of an epoch of 10^7 samples (a cheap dataset with 1,000 shards of 10,000 samples),
against a fresh start.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from resumable_loader import ResumableDataLoader, ShardShuffle, TarShardDataset

SHARD_SHUFFLE = ShardShuffle(window=4, buffer_size=256)


class ReadLog(TarShardDataset):
    """Records (shard, start, length) of every read."""

    def _read(self, shard: int, start: int, length: int) -> bytes:
        self.log.append((shard, start, length))
        return super()._read(shard, start, length)


def write_shards(directory: Path, shards: int, per_shard: int, payload: int) -> list[str]:
    body = bytes(range(256)) * (payload // 256 + 1)
    paths = []
    for s in range(shards):
        path = directory / f"loc-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                info = tarfile.TarInfo(f"s{s:04d}_{i:06d}.bin")
                info.size = payload
                tar.addfile(info, io.BytesIO(body[:payload]))
        paths.append(str(path))
    return paths


def locality(paths: list[str], payload: int, shard_shuffle) -> tuple[float, float, float]:
    dataset = ReadLog(paths)
    dataset.log = []
    loader = ResumableDataLoader(
        dataset, batch_size=32, shuffle=True, seed=0, shard_shuffle=shard_shuffle, collate_fn=len
    )
    delivered = sum(loader) * payload
    log = dataset.log
    last: dict[int, int] = {}
    seeks = []
    for shard, offset, length in log:
        if shard in last:
            seeks.append(abs(offset - last[shard]))
        last[shard] = offset + length
    in_flight = np.mean([len({s for s, _, _ in log[i : i + 256]}) for i in range(0, len(log), 256)])
    median_seek = float(np.median(seeks)) if seeks else 0.0
    return sum(n for _, _, n in log) / delivered, median_seek, in_flight


class Cheap(Dataset):
    def __init__(self, shards: int, per_shard: int) -> None:
        self.shard_sizes = np.full(shards, per_shard, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.shard_sizes.sum())

    def __getitem__(self, index: int) -> int:
        return index


def first_batch_seconds(dataset: Dataset, position: int) -> float:
    template = ResumableDataLoader(
        dataset, batch_size=64, shuffle=True, seed=0, shard_shuffle=SHARD_SHUFFLE
    )
    state = dict(template.state_dict(), position=position)
    start = time.perf_counter()
    loader = ResumableDataLoader(
        dataset, batch_size=64, shuffle=True, seed=0, shard_shuffle=SHARD_SHUFFLE
    )
    loader.load_state_dict(state)
    next(iter(loader))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--payload", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_shards(Path(tmp), args.shards, args.per_shard, args.payload)
        print(
            f"# locality: {args.shards} tar shards x {args.per_shard} samples of "
            f"{args.payload} B, one epoch, batch 32"
        )
        print(
            f"{'order':<52}{'read/delivered':>15}{'median seek in shard':>22}"
            f"{'shards per 256 reads':>22}"
        )
        for name, shard_shuffle in (
            ("global shuffle", None),
            (f"shard-local {SHARD_SHUFFLE}", SHARD_SHUFFLE),
        ):
            ratio, seek, in_flight = locality(paths, args.payload, shard_shuffle)
            print(f"{name:<52}{ratio:>15.3f}{seek / 1024:>19.1f} KB{in_flight:>22.1f}")
    dataset = Cheap(1000, 10_000)
    print(f"\n# resume, shard-local {SHARD_SHUFFLE}, epoch of {len(dataset):,} samples")
    print(f"{'resume at':>12}{'first batch':>14}{'vs fresh start':>16}")
    fresh = first_batch_seconds(dataset, 0)
    print(f"{'start':>12}{fresh * 1e3:>11.1f} ms{1:>16.1f}")
    for fraction in (0.1, 0.5, 0.9):
        seconds = first_batch_seconds(dataset, int(fraction * len(dataset)))
        print(f"{fraction:>11.0%} {seconds * 1e3:>11.1f} ms{seconds / fresh:>16.1f}")


if __name__ == "__main__":
    main()
