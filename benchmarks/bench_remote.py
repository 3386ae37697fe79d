"""Loaders reading object storage: ours (from local disk, and from s3://) beside litdata and
MosaicML Streaming, each from its own format in the same bucket behind the same 10 ms proxy.

Run: python benchmarks/bench_remote.py [--rounds 3] [--resume-rounds 1] [--delay 0.01]
[--only NAME ...]

Install the peers (the bench extra, then Streaming without its dependencies, which would replace
the CPU build of torch with a CUDA one, pull torchvision and downgrade numpy):

    pip install -e '.[bench]' -c constraints.txt
    pip uninstall -y torchvision  # litdata's pick is not built for the CPU torch (see bench_peers)
    pip install --no-deps mosaicml-streaming==0.13.0
    pip install brotli python-snappy zstd catalogue -c constraints.txt

(Streaming's package imports its torchvision datasets at import time; torchvision is not
installed beside the CPU torch here, so :func:`import_streaming` stubs the two names those
modules import. Nothing of them runs.)

Data: 16 tar shards of 1,024 samples (a 3x32x32 raw image, ~3 KB, and a label), the demo's
decode + crop/flip/noise; the same samples as litdata ``optimize()`` chunks (1,024 samples a
chunk) and as MDS shards (about 1,024 samples a shard), all uploaded to one bucket of a moto S3
server. Every loader reads through one proxy (its own process) that adds ``--delay`` to each
round trip and counts the bytes it sends. Batch 64, 2 workers, shuffled.

Per loader: an epoch per round, rounds interleaved (the order rotates), each epoch in a fresh
process (no loader inherits another's state) with an empty node cache (a fresh
``cache_dir``/``local``); the table shows the median samples/s, the ratio to ours from local
disk in the same round, and the bytes the proxy sent per byte of the loader's own dataset; the
CPU seconds the loader's processes used for the epoch (its main process and workers) and their
ratio to ours from local disk in the same round; and the CPU seconds moto's server and the
proxy used meanwhile (on this machine the store shares the loaders' two cores, which a remote
store does not). Then a resume at 50%: a state taken half way through an epoch is loaded into a
new loader with an empty cache; the time from building it to its first batch beside a fresh
start's, the seconds from that batch to the end of the epoch (half an epoch: compare with half
the epoch's time at the samples/s above), and the bytes fetched for the rest of the epoch per
byte of the rest of the dataset. A label checksum shows every loader delivered the whole epoch.

Each loader is one function ``make(data, cache_dir) -> loader`` in ``LOADERS``: add one there.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench_peers import augment, cpu_seconds, write_litdata
from remote_endpoint import ProxyProcess, make_bucket, remote_endpoint, store_cpu_seconds

from resumable_loader import ResumableDataLoader, ShardShuffle, TarShardDataset
from resumable_loader.demo import write_shards
from resumable_loader.storage.reader import Prefetch

SHARDS, PER_SHARD, BATCH, WORKERS = 16, 1024, 64, 2
SHARD_LOCAL = ShardShuffle(window=4, buffer_size=1024)
OURS_LOCAL = "ours, local disk, global shuffle"


@dataclass
class Data:
    """The same samples in each format: local tar paths, and URLs in the bucket."""

    local_tar: list[str]
    s3_tar: list[str]
    litdata_url: str
    mds_url: str
    index_dir: str
    sizes: dict[str, int]  # format -> bytes of the dataset in it


Make = Callable[[Data, Path], Any]
T = TypeVar("T")


def ours(dataset: TarShardDataset, **kwargs: Any) -> ResumableDataLoader:
    return ResumableDataLoader(
        dataset, batch_size=BATCH, num_workers=WORKERS, shuffle=True, seed=0, **kwargs
    )


def ours_local(data: Data, cache: Path) -> ResumableDataLoader:
    """Ours from local disk (the page cache), global shuffle: the baseline."""
    return ours(TarShardDataset(data.local_tar, decode=augment))


def ours_s3_today(data: Data, cache: Path, **kwargs: Any) -> ResumableDataLoader:
    """Ours from s3:// without the prefetcher: 1 MiB read-ahead blocks in a per-worker LRU,
    read synchronously inside each sample's fetch (issue 18's starting point)."""
    dataset = TarShardDataset(data.s3_tar, decode=augment, cache_dir=data.index_dir, prefetch=False)
    return ours(dataset, **kwargs)


def ours_s3_today_shard_local(data: Data, cache: Path) -> ResumableDataLoader:
    """As :func:`ours_s3_today`, shard-local order (ShardShuffle(4, 1024))."""
    return ours_s3_today(data, cache, shard_shuffle=SHARD_LOCAL)


def ours_s3_prefetch(data: Data, cache: Path, **kwargs: Any) -> ResumableDataLoader:
    """Ours from s3:// with the look-ahead prefetcher (default depth) and a node cache in
    ``cache`` that holds the data (the default 256 MiB)."""
    prefetch = Prefetch(cache_dir=cache)
    dataset = TarShardDataset(
        data.s3_tar, decode=augment, cache_dir=data.index_dir, prefetch=prefetch
    )
    return ours(dataset, **kwargs)


def ours_s3_prefetch_shard_local(data: Data, cache: Path) -> ResumableDataLoader:
    """As :func:`ours_s3_prefetch`, shard-local order (ShardShuffle(4, 1024))."""
    return ours_s3_prefetch(data, cache, shard_shuffle=SHARD_LOCAL)


def litdata_s3(data: Data, cache: Path) -> Any:
    """litdata streaming its optimize() chunks from the bucket into its node cache."""
    from litdata import StreamingDataLoader, StreamingDataset

    litdata_allow_http()
    dataset = StreamingDataset(
        data.litdata_url, cache_dir=str(cache), shuffle=True, seed=0, transform=augment
    )
    return StreamingDataLoader(
        dataset, batch_size=BATCH, num_workers=WORKERS, worker_init_fn=litdata_allow_http
    )


def litdata_allow_http(worker: int | None = None) -> None:
    """litdata fetches chunks with obstore under fixed client options that refuse http://; the
    test endpoint is http (a real one is https): allow it, in each (spawned) worker too."""
    from litdata.streaming import downloader

    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True


def import_streaming() -> types.ModuleType:
    """``streaming``, with stubs for the two torchvision names its vision datasets import."""
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        names = {
            "torchvision": {},
            "torchvision.datasets": {"VisionDataset": object},
            "torchvision.transforms": {},
            "torchvision.transforms.functional": {"to_tensor": None},
        }
        for name, attributes in names.items():
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            module.__dict__.update(attributes)
            sys.modules[name] = module
    import streaming

    return streaming


def streaming_s3(data: Data, cache: Path) -> Any:
    """MosaicML Streaming reading MDS shards from the bucket into its ``local`` cache."""
    streaming = import_streaming()
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    dataset = streaming_augmented()(
        remote=data.mds_url, local=str(cache), shuffle=True, shuffle_seed=0, batch_size=BATCH
    )
    return streaming.StreamingDataLoader(dataset, batch_size=BATCH, num_workers=WORKERS)


def streaming_augmented() -> type:
    """Streaming's StreamingDataset with the demo's augmentation (made once, module-level, so
    workers can unpickle it)."""
    global StreamingAugmented
    if "StreamingAugmented" not in globals():
        streaming = import_streaming()

        class StreamingAugmented(streaming.StreamingDataset):
            def __getitem__(self, index: int) -> Any:
                return augment(super().__getitem__(index))

        StreamingAugmented.__qualname__ = "StreamingAugmented"
    return StreamingAugmented


# name -> (the format whose bytes it reads, how to build it)
LOADERS: dict[str, tuple[str, Make]] = {
    OURS_LOCAL: ("tar", ours_local),
    "ours, s3://, global, no prefetch (today)": ("tar", ours_s3_today),
    "ours, s3://, ShardShuffle(4,1024), no prefetch": ("tar", ours_s3_today_shard_local),
    "ours, s3://, global, prefetch + node cache": ("tar", ours_s3_prefetch),
    "ours, s3://, ShardShuffle(4,1024), prefetch + node cache": (
        "tar",
        ours_s3_prefetch_shard_local,
    ),
    "litdata, s3://, own chunks, node cache": ("litdata", litdata_s3),
    "MosaicML Streaming, s3://, MDS, node cache": ("mds", streaming_s3),
}


def write_mds(paths: list[str], directory: Path) -> None:
    """The samples of ``paths`` as MDS shards of about ``PER_SHARD`` samples each."""
    streaming = import_streaming()
    per_sample = 3 * 32 * 32 + 16
    samples = TarShardDataset(paths)
    limit = PER_SHARD * per_sample + 1024
    with streaming.MDSWriter(
        out=str(directory), columns={"rgb": "bytes", "cls": "int"}, size_limit=limit
    ) as writer:
        for index in range(len(samples)):
            sample = samples[index]
            writer.write({"rgb": sample["rgb"], "cls": int(sample["cls"])})


def upload(server: str, bucket: str, directory: Path, prefix: str) -> tuple[str, int]:
    """Upload every file of ``directory`` under ``prefix``; (URL, total bytes)."""
    files = {p.name: p for p in sorted(directory.iterdir()) if p.is_file()}
    url = make_bucket(server, files, bucket=bucket, prefix=prefix, create=False)
    return url, sum(p.stat().st_size for p in files.values())


def prepare(server: str, tmp: Path) -> Data:
    """Write the samples in each format and put them in a fresh bucket."""
    (tmp / "tar").mkdir()
    local = write_shards(tmp / "tar", shards=SHARDS, per_shard=PER_SHARD)
    bucket = make_bucket(server)[len("s3://") :]
    tar_url, tar_bytes = upload(server, bucket, tmp / "tar", "tar")
    sizes = {"tar": tar_bytes}
    litdata_url = mds_url = ""
    if importlib.util.find_spec("litdata"):
        write_litdata(local, tmp / "litdata")
        litdata_url, sizes["litdata"] = upload(server, bucket, tmp / "litdata", "litdata")
    if importlib.util.find_spec("streaming"):
        write_mds(local, tmp / "mds")
        mds_url, sizes["mds"] = upload(server, bucket, tmp / "mds", "mds")
    s3_tar = [f"{tar_url}/{Path(p).name}" for p in local]
    index_dir = str(tmp / "index")
    TarShardDataset(s3_tar, cache_dir=index_dir, prefetch=False)  # the index, built once
    return Data(local, s3_tar, litdata_url, mds_url, index_dir, sizes)


def epoch(loader: Iterable, limit: int | None = None) -> tuple[int, int]:
    """Iterate ``loader`` (at most ``limit`` batches); (samples, label sum)."""
    count = checksum = 0
    for number, (_, labels) in enumerate(loader):
        if limit is not None and number == limit:
            break
        count, checksum = count + len(labels), checksum + int(labels.sum())
    return count, checksum


def first_batch(
    make: Callable[[], Any], state: dict[str, Any] | None, finish: bool
) -> tuple[float, float]:
    """Seconds from building a loader (and loading ``state``) to its first batch, and with
    ``finish`` from there to the end of its epoch (else 0)."""
    began = time.perf_counter()
    loader = make()
    if state is not None:
        loader.load_state_dict(state)
    batches = iter(loader)
    next(batches)
    first = time.perf_counter()
    if finish:
        for _ in batches:
            pass
    return first - began, time.perf_counter() - first if finish else 0.0


# What a child process runs: one loader, from a fresh interpreter, so that no loader inherits
# another's state (a started obstore runtime, a start method, shared memory, imports).
def child_epoch(name: str, data: Data, cache: Path) -> tuple[float, float, tuple[int, int]]:
    """(samples/s, CPU seconds, (samples, label sum)) of one epoch, timed from building the
    loader; the CPU time is this process's and its workers' (reaped when the epoch ends)."""
    began, cpu = time.perf_counter(), cpu_seconds()
    seen = epoch(LOADERS[name][1](data, cache))
    return seen[0] / (time.perf_counter() - began), cpu_seconds() - cpu, seen


def child_half_state(name: str, data: Data, cache: Path) -> dict[str, Any]:
    """The loader's state_dict half way through an epoch."""
    loader = LOADERS[name][1](data, cache)
    epoch(loader, SHARDS * PER_SHARD // BATCH // 2)
    return loader.state_dict()


def child_first_batch(
    name: str, data: Data, cache: Path, state: dict[str, Any] | None, finish: bool
) -> tuple[float, float]:
    """:func:`first_batch` of a new loader with an empty cache."""
    return first_batch(lambda: LOADERS[name][1](data, cache), state, finish)


def _child_main(queue: Any, function: Callable[..., Any], args: tuple) -> None:
    # the start method a Linux process has by default (a spawned child is given its parent's,
    # which is spawn while a litdata optimize() runs there)
    multiprocessing.set_start_method("fork", force=True)
    try:
        queue.put((True, function(*args)))
    except BaseException:  # reported in the parent
        queue.put((False, traceback.format_exc()))


def in_child(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a spawned process (not a daemon: loaders start workers)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child_main, args=(queue, function, args))
    process.start()
    ok, result = queue.get(timeout=3600)
    process.join()
    if not ok:
        raise RuntimeError(f"{function.__name__}{args[:1]} failed:\n{result}")
    return result


class Runs:
    """Runs every loader in a child process with a fresh cache directory, reading the proxy's
    byte counter around it."""

    def __init__(self, data: Data, proxy: ProxyProcess, tmp: Path) -> None:
        self.data, self.proxy, self.tmp = data, proxy, tmp
        self.fresh = 0

    def cache(self) -> Path:
        self.fresh += 1
        return Path(tempfile.mkdtemp(prefix=f"cache{self.fresh}-", dir=self.tmp))

    def epoch(self, name: str) -> tuple[float, float, float, float, tuple[int, int]]:
        """(samples/s, bytes fetched / dataset, the loader's CPU seconds, the store's CPU
        seconds meanwhile, (samples, label sum)) of one epoch."""
        self.proxy.command("reset")
        store = store_cpu_seconds()
        rate, cpu, seen = in_child(child_epoch, name, self.data, self.cache())
        store = store_cpu_seconds() - store
        fetched = self.proxy.command("stats")[0]
        return rate, fetched / self.data.sizes[LOADERS[name][0]], cpu, store, seen

    def resume(self, name: str) -> tuple[float, float, float, float]:
        """(fresh first batch s, resumed first batch s, the resumed epoch's rest s, bytes
        fetched after the resume / the rest of the dataset's bytes), resuming at 50% with an
        empty cache."""
        cache = self.cache()
        state = in_child(child_half_state, name, self.data, cache)
        fresh, _ = in_child(child_first_batch, name, self.data, self.cache(), None, False)
        shutil.rmtree(cache)  # emptied, but at the same path: litdata's state names its cache
        cache.mkdir()
        self.proxy.command("reset")
        resumed, rest = in_child(child_first_batch, name, self.data, cache, state, True)
        fetched = self.proxy.command("stats")[0]
        return fresh, resumed, rest, fetched / (self.data.sizes[LOADERS[name][0]] / 2)


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of ``ours / theirs`` taken in the same round."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.01, help="seconds per round trip")
    parser.add_argument("--only", nargs="*", help="loaders whose name contains one of these")
    parser.add_argument("--resume-rounds", type=int, default=1, help="resumes per loader")
    args = parser.parse_args()
    kinds = {"litdata": "litdata", "mds": "streaming"}
    names = [
        name
        for name, (kind, _) in LOADERS.items()
        if importlib.util.find_spec(kinds.get(kind, "resumable_loader"))
        and (name == OURS_LOCAL or not args.only or any(o in name for o in args.only))
    ]
    skipped = [name for name in LOADERS if name not in names and not args.only]
    with (
        tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp,
        remote_endpoint(args.delay) as (server, proxy),
    ):
        data = prepare(server, Path(tmp))
        runs = Runs(data, proxy, Path(tmp))
        rates: dict[str, list[float]] = {name: [] for name in names}
        fetched: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        store: dict[str, list[float]] = {name: [] for name in names}
        seen: dict[str, tuple[int, int]] = {}
        for number in range(args.rounds):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                print(f"epoch: {name}, round {number + 1}/{args.rounds}", file=sys.stderr)
                rate, ratio, seconds, store_seconds, seen[name] = runs.epoch(name)
                rates[name].append(rate)
                fetched[name].append(ratio)
                cpu[name].append(seconds)
                store[name].append(store_seconds)
        measured: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
        for number in range(args.resume_rounds):
            for name in names:
                print(f"resume: {name}, round {number + 1}", file=sys.stderr)
                measured[name].append(runs.resume(name))
        resumes = {
            name: tuple(statistics.median(column) for column in zip(*rows, strict=True))
            for name, rows in measured.items()
        }
    print(
        f"# {SHARDS} shards x {PER_SHARD} samples (~3 KB), batch {BATCH}, {WORKERS} workers, "
        f"{args.delay * 1e3:.0f} ms a round trip; median of {args.rounds} interleaved rounds "
        f"({args.resume_rounds} of resumes); "
        f"dataset bytes: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in data.sizes.items())
    )
    width = max(map(len, names)) + 2
    peer = next((name for name in names if LOADERS[name][0] == "litdata"), OURS_LOCAL)
    print(
        f"{'loader':<{width}}{'samples/s':>10}{'vs local':>9}{'vs ' + peer[:7]:>11}"
        f"{'fetched':>9}{'CPU':>7}{'vs local':>9}{'store CPU':>10}"
        f"{'fresh 1st':>11}{'resumed 1st':>12}{'rest':>8}{'rest fetched':>13}"
        "  samples, label sum"
    )
    for name in names:
        fresh, resumed, rest_seconds, rest = resumes[name]
        print(
            f"{name:<{width}}{statistics.median(rates[name]):>10,.0f}"
            f"{median_ratio(rates[name], rates[OURS_LOCAL]):>8.2f}x"
            f"{median_ratio(rates[name], rates[peer]):>10.2f}x"
            f"{statistics.median(fetched[name]):>8.2f}x"
            f"{statistics.median(cpu[name]):>6.2f}s"
            f"{median_ratio(cpu[name], cpu[OURS_LOCAL]):>8.2f}x"
            f"{statistics.median(store[name]):>9.2f}s"
            f"{fresh:>10.2f}s{resumed:>11.2f}s{rest_seconds:>7.2f}s{rest:>12.2f}x  {seen[name]}"
        )
    for name in skipped:
        print(f"{name}: skipped, not installed (see the install commands at the top)")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
