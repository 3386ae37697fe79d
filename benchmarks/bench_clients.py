"""Object-store clients for ranged reads: obstore vs s3fs (fsspec async, aiobotocore) vs boto3,
and our StorageClient (obstore under our retries), against moto's S3 server behind a proxy that
adds a delay per round trip.

Run: python benchmarks/bench_clients.py [--delay 0.01] [--rounds 3] [--object-mib 32]

Each cell reads random ranges (64 KiB or 1 MiB) of one object with 1..32 requests in flight:
8 per slot of concurrency plus 24, the same offsets for every client. The rounds interleave the
clients (client order rotates each round); the table shows the median round: MiB/s,
requests/s, the per-request latency median and 95th percentile, the CPU time of this process
(every thread: the client's own work) per request, and the request rate over boto3's. The
server (Python, werkzeug) and the proxy run in their own processes on the same 2 cores: the
server caps the throughput near 70 MiB/s and 120 requests/s here, so past a few requests in
flight the rates meet, and the client's CPU per request is what tells the clients apart. A
checksum of the bytes read is printed, so that nothing is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from remote_endpoint import CREDENTIALS, make_bucket, remote_endpoint

SIZES = (64 * 1024, 1024 * 1024)
CONCURRENCY = (1, 4, 16, 32)
KEY = "object.bin"

Ranges = Sequence[tuple[int, int]]
Reader = Callable[[Ranges, int], list[float]]  # (ranges, in flight) -> latencies, seconds


def obstore_reader(bucket: str, endpoint: str) -> Reader:
    """obstore's async get_range_async, ``in_flight`` at a time on one asyncio loop."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=endpoint,
        region=CREDENTIALS["AWS_DEFAULT_REGION"],
        client_options={"allow_http": True, "pool_max_idle_per_host": "64"},
    )

    async def one(start: int, length: int) -> tuple[float, bytes]:
        began = time.perf_counter()
        data = await obstore.get_range_async(store, KEY, start=start, length=length)
        return time.perf_counter() - began, bytes(data)

    return _async_reader(one)


def s3fs_reader(bucket: str, endpoint: str) -> Reader:
    """s3fs (fsspec's async S3 on aiobotocore): ``_cat_file`` with a byte range."""
    import s3fs

    filesystem = None

    async def one(start: int, length: int) -> tuple[float, bytes]:
        nonlocal filesystem
        if filesystem is None:
            filesystem = s3fs.S3FileSystem(
                asynchronous=True,
                endpoint_url=endpoint,
                config_kwargs={"max_pool_connections": 64},
            )
            await filesystem.set_session()
        began = time.perf_counter()
        data = await filesystem._cat_file(f"{bucket}/{KEY}", start=start, end=start + length)
        return time.perf_counter() - began, data

    return _async_reader(one)


def boto3_reader(bucket: str, endpoint: str) -> Reader:
    """boto3's get_object with a Range header, on a pool of ``in_flight`` threads."""
    import boto3
    import botocore.config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=botocore.config.Config(max_pool_connections=64),
    )

    def one(item: tuple[int, int]) -> tuple[float, bytes]:
        start, length = item
        began = time.perf_counter()
        answer = client.get_object(
            Bucket=bucket, Key=KEY, Range=f"bytes={start}-{start + length - 1}"
        )
        data = answer["Body"].read()
        return time.perf_counter() - began, data

    def read(ranges: Ranges, in_flight: int) -> list[float]:
        with ThreadPoolExecutor(in_flight) as pool:
            return _check(list(pool.map(one, ranges)))

    return read


def ours_reader(bucket: str, endpoint: str) -> Reader:
    """resumable_loader's StorageClient.submit_range (obstore, our loop, retries, timeouts)."""
    from resumable_loader.storage.client import client_for

    url = f"s3://{bucket}/{KEY}"
    client = client_for(url, {"endpoint": endpoint})

    def read(ranges: Ranges, in_flight: int) -> list[float]:
        results, pending = [], []
        for start, length in ranges:  # keep in_flight outstanding
            if len(pending) == in_flight:
                results.append(_finish(pending.pop(0)))
            pending.append((time.perf_counter(), client.submit_range(url, start, length)))
        results += [_finish(p) for p in pending]
        return _check(results)

    return read


def _finish(pending: tuple[float, object]) -> tuple[float, bytes]:
    began, future = pending
    data = future.result()
    return time.perf_counter() - began, data  # latency includes the wait behind the window


_CHECKSUM = 0


def _check(results: list[tuple[float, bytes]]) -> list[float]:
    global _CHECKSUM
    for _, data in results:
        _CHECKSUM = zlib.crc32(data, _CHECKSUM)
    return [seconds for seconds, _ in results]


def _async_reader(one) -> Reader:
    loop = asyncio.new_event_loop()

    async def run(ranges: Ranges, in_flight: int) -> list[tuple[float, bytes]]:
        gate = asyncio.Semaphore(in_flight)

        async def gated(start: int, length: int):
            async with gate:
                return await one(start, length)

        return await asyncio.gather(*(gated(s, n) for s, n in ranges))

    return lambda ranges, in_flight: _check(loop.run_until_complete(run(ranges, in_flight)))


READERS = {"obstore": obstore_reader, "s3fs": s3fs_reader, "boto3": boto3_reader}
READERS["ours (obstore)"] = ours_reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.01, help="seconds per round trip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--object-mib", type=int, default=32)
    args = parser.parse_args()
    data = np.random.default_rng(6).integers(0, 256, args.object_mib << 20, np.uint8).tobytes()
    rng = np.random.default_rng(18)
    with remote_endpoint(args.delay) as (server, proxy):
        endpoint = proxy.endpoint
        bucket = make_bucket(server, {KEY: data})[len("s3://") :]
        readers = {name: make(bucket, endpoint) for name, make in READERS.items()}
        cells = {}
        for size in SIZES:
            for in_flight in CONCURRENCY:
                starts = rng.integers(0, len(data) - size, 8 * in_flight + 24)
                cells[size, in_flight] = [(int(s), size) for s in starts]
        for reader in readers.values():  # warm up: connections, sessions, imports
            reader(cells[SIZES[0], 4], 4)
        results: dict[tuple[str, int, int], list[tuple[float, float, list[float]]]] = {}
        names = list(readers)
        for round_ in range(args.rounds):
            for (size, in_flight), ranges in cells.items():
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    began, cpu = time.perf_counter(), time.process_time()
                    latencies = readers[name](ranges, in_flight)
                    wall = time.perf_counter() - began
                    cpu = (time.process_time() - cpu) / len(ranges)
                    results.setdefault((name, size, in_flight), []).append((wall, cpu, latencies))
    print(
        f"# ranged GETs through a proxy adding {args.delay * 1e3:.0f} ms a round trip, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(
        f"{'client':<16}{'range':>8}{'in flight':>10}{'MiB/s':>9}{'req/s':>9}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'CPU ms/req':>11}{'vs boto3':>10}"
    )
    for size in SIZES:
        for in_flight in CONCURRENCY:
            base = None
            rows = []
            for name in names:
                runs = sorted(results[name, size, in_flight], key=lambda r: r[0])
                wall, cpu, latencies = runs[len(runs) // 2]
                rate = len(latencies) / wall
                rows.append((name, rate, latencies, cpu))
                if name == "boto3":
                    base = rate
            for name, rate, latencies, cpu in rows:
                p95 = statistics.quantiles(latencies, n=20)[18]
                print(
                    f"{name:<16}{size // 1024:>6}Ki{in_flight:>10}{rate * size / 2**20:>9.1f}"
                    f"{rate:>9.0f}{statistics.median(latencies) * 1e3:>9.1f}{p95 * 1e3:>9.1f}"
                    f"{cpu * 1e3:>11.2f}{rate / base:>9.2f}x"
                )
    print(f"checksum {_CHECKSUM:08x}")


if __name__ == "__main__":
    main()
