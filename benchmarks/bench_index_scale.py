"""The index at scale: bytes per sample and per shard of a synthetic tar index, what a node
holds and fetches in each order mode, measured at 10^7 samples in 10^4 shards and extrapolated
to 10^9 samples in 10^5 shards (too big to build here).

Run: python benchmarks/bench_index_scale.py [--samples 10000000] [--shards 10000] [--fields 2]
[--remote]

The synthetic index is what a scan of tar shards of ``fields`` members a sample would write
(format version 3: a uint32 record row per sample, a CRC32C per member, a header entry per
shard with an s3:// URL, size and ETag), written with the library's own writer and read back
with its loader. Printed: the file's bytes, bytes per sample (arrays) and per shard (header),
write and load times, the time to copy the file (what fetching it from a bucket at 1 GB/s
would take is file size / 1 GB/s), and the extrapolation.

``--remote``: the index is also put in a bucket of a local S3 server (moto, behind the fault
proxy with 10 ms a round trip, as bench_remote) and fetched the two ways a node can: whole
(``index_rows="all"``) and in part (``"on_demand"``: the header, then the records of the
shards a shard-local order opens), with the time, the requests and the bytes each takes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from remote_endpoint import make_bucket, remote_endpoint

from resumable_loader.index import remote
from resumable_loader.index.file import write_index
from resumable_loader.index.partial import fetch_partial
from resumable_loader.index.sharded import ShardedIndex, _fingerprint
from resumable_loader.index.tar import RECORD

FULL_SAMPLES, FULL_SHARDS = 10**9, 10**5
LINK = 1e9  # bytes/s a node fetches the index at (a 10 Gbit/s link, roughly)


def synthetic(samples: int, shards: int, fields: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Header and arrays of a tar index of ``samples`` in ``shards`` equal shards."""
    per_shard = samples // shards
    sizes = [per_shard] * shards
    entries = [
        {
            "url": f"s3://bucket/train/shard-{s:06d}.tar",
            "bytes": per_shard * 4096,
            "mtime": f'"{s:032x}"',  # an ETag
            "samples": n,
        }
        for s, n in enumerate(sizes)
    ]
    header = {
        "format": "tar",
        "on_error": "raise",
        "schema": None,
        "fields": [f"f{i}" for i in range(fields)],
        "magic": True,
        "shards": entries,
        "skipped": [],
    }
    header["fingerprint"] = _fingerprint(header)
    records = np.zeros((samples, RECORD + 2 * fields), np.uint32)
    records[:, 0] = np.repeat(np.arange(shards, dtype=np.uint32), per_shard)
    within = np.tile(np.arange(per_shard, dtype=np.uint32), shards)
    records[:, 1], records[:, 2] = within * 4096, 4096
    checksums = np.ones((samples, fields), np.uint32)
    return header, {"records": records, "checksums": checksums}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10**7)
    parser.add_argument("--shards", type=int, default=10**4)
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--remote", action="store_true", help="fetch it from a local S3 too")
    args = parser.parse_args()
    header, arrays = synthetic(args.samples, args.shards, args.fields)
    array_bytes = sum(a.nbytes for a in arrays.values())
    with tempfile.TemporaryDirectory(prefix="index-scale-") as tmp:
        path = Path(tmp) / "synthetic.rlindex"
        began = time.perf_counter()
        write_index(path, header, arrays)
        written = time.perf_counter() - began
        del arrays
        size = path.stat().st_size
        began = time.perf_counter()
        index = ShardedIndex.load(path, verify=False)
        loaded = time.perf_counter() - began
        began = time.perf_counter()
        checksum = int(index.records[:: max(1, args.samples // 4096), 1].sum())  # touch pages
        touched = time.perf_counter() - began
        began = time.perf_counter()
        copy = Path(tmp) / "copy.rlindex"
        with open(path, "rb") as source, open(copy, "wb") as target:
            while chunk := source.read(8 * 2**20):
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
        copied = time.perf_counter() - began
        if args.remote:
            fetches = from_bucket(path, Path(tmp), opened=4)
    per_sample = array_bytes / args.samples
    per_shard = (size - array_bytes) / args.shards
    print(
        f"# synthetic tar index: {args.samples:,} samples in {args.shards:,} shards, "
        f"{args.fields} members a sample (format 3, uint32 records)"
    )
    print(
        f"file {size / 2**20:,.1f} MiB: arrays {per_sample:.1f} B/sample, header "
        f"{per_shard:.1f} B/shard"
    )
    print(
        f"write {written:.2f} s, load (mmap) {loaded * 1e3:.1f} ms, a strided read of 4,096 "
        f"records {touched * 1e3:.1f} ms, copy + fsync {copied:.2f} s (checksum {checksum})"
    )
    full = FULL_SAMPLES * per_sample + FULL_SHARDS * per_shard
    shard_part = FULL_SAMPLES // FULL_SHARDS * per_sample + per_shard
    print(f"\n# extrapolated to {FULL_SAMPLES:.0e} samples in {FULL_SHARDS:.0e} shards")
    print(f"whole index: {full / 2**30:,.1f} GiB ({full / LINK:,.0f} s at {LINK / 1e9:.0f} GB/s)")
    print(f"one shard's part: {shard_part / 2**10:,.1f} KiB")
    print(f"header alone (the shard list): {FULL_SHARDS * per_shard / 2**20:,.1f} MiB")
    if args.remote:
        print("\n# fetched from a bucket (moto behind a 10 ms proxy, one process)")
        for line in fetches:
            print(line)


def from_bucket(path: Path, tmp: Path, opened: int) -> list[str]:
    """Put the index file ``path`` in a bucket and fetch it whole, then in part (header, then
    the records of ``opened`` shards); a line of figures each."""
    with remote_endpoint(0.01) as (server, proxy):
        url = make_bucket(server, {path.name: path}) + "/" + path.name
        lines = []
        for name, fetch in (
            ("whole (index_rows='all')", lambda: remote.fetch(url, tmp / "whole.rlindex")),
            ("header (index_rows='on_demand')", lambda: fetch_partial(url, tmp / "p.rlindex")),
        ):
            proxy.command("reset")
            began = time.perf_counter()
            assert fetch()
            seconds = time.perf_counter() - began
            sent, requests = proxy.command("stats")
            lines.append(
                f"{name:<36}{seconds:8.2f} s {requests:6} requests {sent / 2**20:10.2f} MiB"
            )
        index = ShardedIndex.load(tmp / "p.rlindex", verify=False)
        proxy.command("reset")
        began = time.perf_counter()
        for shard in range(opened):  # one at a time, as a shard-local order opens them
            index.ensure_shards([shard])
        seconds = (time.perf_counter() - began) / opened
        sent, requests = proxy.command("stats")
        disk = os.stat(tmp / "p.rlindex").st_blocks * 512
        lines.append(
            f"{'a shard opened (its records)':<36}{seconds:8.3f} s {requests / opened:6.0f} "
            f"requests {sent / opened / 2**20:10.2f} MiB each; the partial file: "
            f"{disk / 2**20:.1f} MiB on disk of {index.path.stat().st_size / 2**20:,.1f} MiB"
        )
        return lines


if __name__ == "__main__":
    main()
