"""Ours from s3:// with the look-ahead prefetcher: what a small node cache costs in bytes (Belady's
eviction against LRU), and the longest gap between batches during a storage outage.

Run: python benchmarks/bench_prefetch.py [--delay 0.01] [--outage 5] [--step 0.02]
[--sections outage cache]

Data and endpoint as in bench_remote.py: 16 tar shards of 1,024 samples (~4.5 KB each in the
tar), uploaded to a moto S3 server behind the fault proxy (its own process, ``--delay`` a round
trip), 2 workers, batch 64, no decoding (bytes are what is measured here).

1. An outage of ``--outage`` seconds starting a fifth into the epoch, for ours with prefetch
   (default depth) and without (the synchronous 1 MiB read-ahead): the longest the loop waited
   for a batch (after the first), and whether the epoch was delivered whole. The loop spends
   ``--step`` seconds on each batch (asleep, as a training loop waits for its accelerator's
   step): a loop that does nothing would measure how far ahead of the outage the fetches
   happened to be, not what a training loop sees.
2. A node cache of all, 1/2 or 1/10 of the data, an epoch per row, each with an empty cache: bytes
   fetched per byte of the dataset, requests and the epoch's seconds, for the shard-local order
   (ShardShuffle(4, 1024)) and the global shuffle (by default, and with exact spans unless a
   block is half read: ``request_bytes=0``); then the global shuffle with whole 64 KiB blocks
   forced (``block_fraction=0``) and a cache of half the data, under Belady's eviction and LRU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from remote_endpoint import make_bucket, remote_endpoint

from resumable_loader import ResumableDataLoader, ShardShuffle, TarShardDataset
from resumable_loader.demo import write_shards
from resumable_loader.storage.reader import Prefetch

SHARDS, PER_SHARD, BATCH, WORKERS = 16, 1024, 64, 2
SHARD_LOCAL = ShardShuffle(window=4, buffer_size=1024)
SECTIONS = ["outage", "cache"]


def prepare(server: str, tmp: Path) -> tuple[list[str], str, int]:
    """(s3 URLs of the shards, the index folder, dataset bytes)."""
    (tmp / "tar").mkdir()
    local = write_shards(tmp / "tar", shards=SHARDS, per_shard=PER_SHARD)
    files = {Path(p).name: Path(p) for p in local}
    url = make_bucket(server, files, prefix="tar")
    urls = [f"{url}/{name}" for name in files]
    index = str(tmp / "index")
    TarShardDataset(urls, cache_dir=index, prefetch=False)  # the index, built once
    return urls, index, sum(p.stat().st_size for p in files.values())


def loader(dataset: TarShardDataset, order: ShardShuffle | None) -> ResumableDataLoader:
    return ResumableDataLoader(
        dataset,
        batch_size=BATCH,
        num_workers=WORKERS,
        shuffle=True,
        seed=0,
        shard_shuffle=order,
        collate_fn=len,
    )


def small_cache(urls: list[str], index: str, size: int, tmp: Path) -> None:
    """Bytes and requests of an epoch with a node cache smaller than the data."""
    print("\n## a node cache of the data's size or smaller, one epoch each, an empty cache")
    print(
        f"{'order, cache, reads':<66}{'bytes / dataset':>16}{'requests':>10}{'samples':>9}"
        f"{'epoch s':>9}"
    )
    forced: dict[str, Any] = {"block_fraction": 0.0}
    spans: dict[str, Any] = {"request_bytes": 0}
    rows: list[tuple[str, ShardShuffle | None, int, int | None, dict[str, Any]]] = [
        ("global, cache = the data, default (1 MiB blocks or spans)", None, 1, None, {}),
        ("shard-local, 1/2, default (1 MiB blocks or spans)", SHARD_LOCAL, 2, None, {}),
        ("shard-local, 1/10, default (1 MiB blocks or spans)", SHARD_LOCAL, 10, None, {}),
        ("global, 1/10, default (1 MiB blocks or spans)", None, 10, None, {}),
        ("global, 1/10, spans unless half read (request_bytes=0)", None, 10, None, spans),
        ("global, 1/2, 64 KiB blocks always, Belady", None, 2, 2**16, forced),
        ("global, 1/2, 64 KiB blocks always, LRU", None, 2, 2**16, {**forced, "eviction": "lru"}),
    ]
    for name, order, fraction, block, options in rows:
        cache = Path(tempfile.mkdtemp(dir=tmp))
        dataset = TarShardDataset(
            urls,
            cache_dir=index,
            read_ahead=block,
            cache_bytes=size // fraction,
            prefetch=Prefetch(cache_dir=cache, **options),
        )
        run, began = loader(dataset, order), time.perf_counter()
        samples = sum(run)
        seconds, stats = time.perf_counter() - began, run.storage_stats()
        print(
            f"{name:<66}{stats.bytes_fetched / size:>15.2f}x{stats.requests:>10}{samples:>9}"
            f"{seconds:>9.1f}"
        )
        sys.stdout.flush()


def outage(
    urls: list[str], index: str, size: int, seconds: float, step: float, proxy: Any, tmp: Path
) -> None:
    """The longest wait for a batch with an outage a fifth into the epoch, the loop spending
    ``step`` seconds on each batch."""
    print(
        f"\n## a {seconds:.0f} s outage a fifth into the epoch (the endpoint refuses), "
        f"{step * 1e3:.0f} ms a training step"
    )
    print(f"{'loader':<64}{'longest wait':>13}{'samples':>9}{'epoch s':>9}")
    batches = SHARDS * PER_SHARD // BATCH
    quarter = {"cache_bytes": size // 4}
    rows: list[tuple[str, ShardShuffle | None, dict[str, Any] | None, dict[str, Any]]] = [
        ("ours, prefetch (default depth), global", None, {}, {}),
        ("ours, prefetch (default depth), ShardShuffle(4,1024)", SHARD_LOCAL, {}, {}),
        ("ours, prefetch, cache 1/4 of the data, global", None, {}, quarter),
        ("ours, prefetch, cache 1/4 of the data, ShardShuffle(4,1024)", SHARD_LOCAL, {}, quarter),
        ("ours, no prefetch, global", None, None, {}),
        ("ours, no prefetch, ShardShuffle(4,1024)", SHARD_LOCAL, None, {}),
    ]
    for name, order, options, sized in rows:
        cache = Path(tempfile.mkdtemp(dir=tmp))
        dataset = TarShardDataset(
            urls,
            cache_dir=index,
            prefetch=False if options is None else Prefetch(cache_dir=cache, **options),
            storage_options={"deadline": 4 * seconds},
            **sized,
        )
        gaps, samples, began = [], 0, time.perf_counter()
        last = began
        for number, size in enumerate(loader(dataset, order)):
            now = time.perf_counter()
            gaps.append(now - last)
            samples += size
            if number == batches // 5:
                proxy.command(f"outage {seconds}")
            time.sleep(step)  # the training step
            last = time.perf_counter()
        print(f"{name:<64}{max(gaps[1:]):>12.2f}s{samples:>9}{time.perf_counter() - began:>9.1f}")
        sys.stdout.flush()
        threading.Event().wait(seconds)  # no outage left over for the next row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.01, help="seconds per round trip")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds of the outage")
    parser.add_argument("--step", type=float, default=0.02, help="seconds a training step")
    parser.add_argument("--sections", nargs="*", choices=SECTIONS, default=SECTIONS)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-prefetch-") as name,
        remote_endpoint(args.delay) as (server, proxy),
    ):
        tmp = Path(name)
        urls, index, size = prepare(server, tmp)
        print(
            f"# {SHARDS} shards x {PER_SHARD} samples, {size / 2**20:.1f} MiB, batch {BATCH}, "
            f"{WORKERS} workers, {args.delay * 1e3:.0f} ms a round trip"
        )
        if "outage" in args.sections:
            outage(urls, index, size, args.outage, args.step, proxy, tmp)
        if "cache" in args.sections:
            small_cache(urls, index, size, tmp)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
