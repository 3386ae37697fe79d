"""Shard reads: locality of global vs shard-local shuffle, tar read speed, resume cost.

Run: python benchmarks/bench_shards.py [--shards S] [--per-shard P] [--payload BYTES]
     [--only locality|reads|resume] [--repeats R]

Locality: one epoch through the loader (num_workers=0, so one process makes every read) over
shards written to a temp dir; every cache is a quarter of the data it caches, as for a data
set larger than the cache. Tar, for each order, with one read per sample and with 1 MiB
read-ahead blocks (the default for fsspec URLs): the bytes requested from storage (read-ahead
blocks included) divided by the payload bytes delivered, storage requests per sample, the
median distance between consecutive sample reads of one shard, and the shards in flight.
Parquet, the same rows as files of row groups, for each order: row-group reads divided by the
row groups in the data. Reads: samples/s of ``TarShardDataset[i]`` (one positioned read of
the span, its headers parsed and checked) over every sample in a global-shuffle order, from
the page cache, for samples of one member and of three (the payload, a ``cls`` and a
``json``), best of R passes, beside a bare ``os.pread`` of the same spans in the same order
(the storage floor, its ratio the parsing cost) and one loader epoch. Resume: time to the
first batch of a shard-local loader resumed at 10%, 50% and 90% of an epoch of 10^7
samples (a cheap dataset with 1,000 shards of 10,000 samples), against a fresh start.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from resumable_loader import ParquetDataset, ResumableDataLoader, ShardShuffle, TarShardDataset

SHARD_SHUFFLE = ShardShuffle(window=4, buffer_size=256)
RESUMES = 7  # resumes timed per position
READ_AHEAD = 2**20
ROW_GROUP = 100  # rows per Parquet row group
SECTIONS = ("locality", "reads", "resume")


class ReadLog(TarShardDataset):
    """Records (shard, start, length) of every sample read (storage reads: ``bytes_read``)."""

    def _read(self, shard: int, start: int, length: int) -> bytes:
        self.log.append((shard, start, length))
        return super()._read(shard, start, length)


def write_shards(
    directory: Path, shards: int, per_shard: int, payload: int, *, labelled: bool = False
) -> list[str]:
    """Tar shards of samples ``sSSSS_IIIIII``: a ``bin`` member of ``payload`` bytes, and with
    ``labelled`` a ``cls`` and a ``json`` member too."""
    body = (bytes(range(256)) * (payload // 256 + 1))[:payload]
    prefix = "lab" if labelled else "loc"
    paths = []
    for s in range(shards):
        path = directory / f"{prefix}-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                members = [("bin", body)]
                if labelled:
                    members += [("cls", b"%d" % (i % 10)), ("json", b'{"index": %d}' % i)]
                for extension, data in members:
                    info = tarfile.TarInfo(f"s{s:04d}_{i:06d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def write_parquet(directory: Path, shards: int, per_shard: int, payload: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    body = (bytes(range(256)) * (payload // 256 + 1))[:payload]
    paths = []
    for s in range(shards):
        path = directory / f"loc-{s:04d}.parquet"
        ids = range(s * per_shard, (s + 1) * per_shard)
        table = pa.table({"id": list(ids), "payload": [body] * per_shard})
        pq.write_table(table, path, row_group_size=ROW_GROUP)
        paths.append(str(path))
    return paths


def epoch(dataset: Dataset, shard_shuffle: ShardShuffle | None) -> int:
    """Samples in one epoch of ``dataset`` through the loader (main process)."""
    loader = ResumableDataLoader(
        dataset, batch_size=32, shuffle=True, seed=0, shard_shuffle=shard_shuffle, collate_fn=len
    )
    return sum(loader)


def locality(
    paths: list[str], payload: int, shard_shuffle: ShardShuffle | None, read_ahead: int
) -> tuple[float, float, float, float]:
    """(storage bytes / payload bytes, requests per sample, median seek, shards in flight)."""
    shard_bytes = sum(Path(path).stat().st_size for path in paths)
    dataset = ReadLog(paths, read_ahead=read_ahead, cache_bytes=shard_bytes // 4)
    dataset.log = []
    samples = epoch(dataset, shard_shuffle)
    log = dataset.log
    last: dict[int, int] = {}
    seeks = []
    for shard, offset, length in log:
        if shard in last:
            seeks.append(abs(offset - last[shard]))
        last[shard] = offset + length
    in_flight = np.mean([len({s for s, _, _ in log[i : i + 256]}) for i in range(0, len(log), 256)])
    median_seek = float(np.median(seeks)) if seeks else 0.0
    ratio = dataset.bytes_read / (samples * payload)
    return ratio, dataset.read_requests / samples, median_seek, in_flight


def read_speed(paths: list[str], repeats: int) -> tuple[float, float, float, int]:
    """(bare pread samples/s, dataset[i] samples/s, loader samples/s, checksum) over every
    sample in a global-shuffle order, best of ``repeats`` passes each."""
    dataset = TarShardDataset(paths, read_ahead=0)
    order = np.random.default_rng(0).permutation(len(dataset)).tolist()
    spans = [(*dataset.index.locate(i), *(int(v) for v in dataset.index.spans[i])) for i in order]
    files = [os.open(path, os.O_RDONLY) for path in paths]
    try:

        def bare() -> int:
            return sum(len(os.pread(files[shard], n, start)) for shard, _, start, n in spans)

        def reads() -> int:
            return sum(len(dataset[i]["bin"]) for i in order)

        def loader() -> int:
            return epoch(dataset, None)

        reads()  # warm the page cache and open the files
        runs, checksum = (bare, reads, loader), 0
        best = [float("inf")] * len(runs)
        for _ in range(repeats):  # interleaved, so a busy spell on the machine hits all three
            for i, run in enumerate(runs):
                start = time.perf_counter()
                checksum += run()
                best[i] = min(best[i], time.perf_counter() - start)
    finally:
        for handle in files:
            os.close(handle)
    return len(order) / best[0], len(order) / best[1], len(order) / best[2], checksum


class GroupReads(ParquetDataset):
    """Counts row-group reads (the cache's misses)."""

    def _row_group(self, shard: int, group: int):
        self.reads += (shard, group) not in self._cache
        return super()._row_group(shard, group)


def parquet_locality(paths: list[str], shard_shuffle: ShardShuffle | None) -> float:
    """Row-group reads per row group in one epoch, the cache a quarter of the decoded data."""
    probe = ParquetDataset(paths)
    groups = sum(len(g) for g in probe.index.row_groups)
    decoded = probe._row_group(0, 0).nbytes * groups
    dataset = GroupReads(paths, cache_bytes=decoded // 4)
    dataset.reads = 0
    epoch(dataset, shard_shuffle)
    return dataset.reads / groups


class Cheap(Dataset):
    def __init__(self, shards: int, per_shard: int) -> None:
        self.shard_sizes = np.full(shards, per_shard, dtype=np.int64)
        self.fingerprint = f"cheap-{shards}x{per_shard}"  # its identity, for the cursor

    def __len__(self) -> int:
        return int(self.shard_sizes.sum())

    def __getitem__(self, index: int) -> int:
        return index


def first_batch_seconds(dataset: Dataset, position: int) -> float:
    template = ResumableDataLoader(
        dataset, batch_size=64, shuffle=True, seed=0, shard_shuffle=SHARD_SHUFFLE
    )
    state = template.state_at(0, position)
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
    parser.add_argument("--only", choices=SECTIONS, help="run one section (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="passes per read-speed figure")
    args = parser.parse_args()
    sections = [args.only] if args.only else SECTIONS
    with tempfile.TemporaryDirectory() as tmp:
        if "locality" in sections:
            locality_section(Path(tmp), args)
        if "reads" in sections:
            reads_section(Path(tmp), args)
    if "resume" in sections:
        resume_section()


def locality_section(tmp: Path, args: argparse.Namespace) -> None:
    local = f"shard-local (window {SHARD_SHUFFLE.window}, buffer {SHARD_SHUFFLE.buffer_size})"
    orders = (("global shuffle", None), (local, SHARD_SHUFFLE))
    paths = write_shards(tmp, args.shards, args.per_shard, args.payload)
    print(
        f"# locality: {args.shards} tar shards x {args.per_shard} samples of "
        f"{args.payload} B, one epoch, batch 32, one process, read-ahead cache 1/4 of the "
        "shard bytes"
    )
    print(
        f"{'order':<36}{'read-ahead':>11}{'read/delivered':>15}{'requests/sample':>16}"
        f"{'median seek':>13}{'shards/256 reads':>17}"
    )
    for name, shard_shuffle in orders:
        for read_ahead in (0, READ_AHEAD):
            ratio, requests, seek, in_flight = locality(
                paths, args.payload, shard_shuffle, read_ahead
            )
            ahead = f"{read_ahead // 1024} KiB" if read_ahead else "off"
            print(
                f"{name:<36}{ahead:>11}{ratio:>15.3f}{requests:>16.3f}"
                f"{seek / 1024:>10.1f} KB{in_flight:>17.1f}"
            )
    parquet = write_parquet(tmp, args.shards, args.per_shard, args.payload)
    print(
        f"\n# locality: the same rows as {args.shards} Parquet files, row groups of "
        f"{ROW_GROUP} rows, row-group cache 1/4 of the decoded data"
    )
    print(f"{'order':<36}{'row-group reads / row groups':>30}")
    for name, shard_shuffle in orders:
        print(f"{name:<36}{parquet_locality(parquet, shard_shuffle):>30.2f}")


def reads_section(tmp: Path, args: argparse.Namespace) -> None:
    print(
        f"\n# reads: {args.shards} tar shards x {args.per_shard} samples, global-shuffle order, "
        f"page cache warm, one process, best of {args.repeats} passes"
    )
    print(
        f"{'sample':<28}{'bare pread/s':>14}{'dataset[i]/s':>14}{'vs pread':>10}"
        f"{'loader/s':>12}{'checksum':>18}"
    )
    for labelled in (False, True):
        paths = write_shards(tmp, args.shards, args.per_shard, args.payload, labelled=labelled)
        bare, reads, loader, checksum = read_speed(paths, args.repeats)
        name = f"bin {args.payload} B" + (" + cls + json" if labelled else "")
        print(
            f"{name:<28}{bare:>14,.0f}{reads:>14,.0f}{reads / bare:>10.3f}{loader:>12,.0f}"
            f"{checksum:>18x}"
        )


def resume_section() -> None:
    dataset = Cheap(1000, 10_000)
    print(f"\n# resume, shard-local {SHARD_SHUFFLE}, epoch of {len(dataset):,} samples")
    print(f"{'resume at':>12}{'first batch':>14}{'vs fresh start':>16}  (median of {RESUMES})")
    first_batch_seconds(dataset, 0)  # once unmeasured: the process's one-time set-up

    def median(position: int) -> float:
        return statistics.median(first_batch_seconds(dataset, position) for _ in range(RESUMES))

    fresh = median(0)
    print(f"{'start':>12}{fresh * 1e3:>11.1f} ms{1:>16.2f}")
    for fraction in (0.1, 0.5, 0.9):
        seconds = median(int(fraction * len(dataset)))
        print(f"{fraction:>11.0%} {seconds * 1e3:>11.1f} ms{seconds / fresh:>16.2f}")


if __name__ == "__main__":
    main()
