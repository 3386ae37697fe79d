"""Our loader beside its peers: tar throughput, first batch after a resume, cursor size, memory.

Run: python benchmarks/bench_peers.py [--quick]

1. samples/s over the same WebDataset tar shards, workers, batch size and decode/augment: ours
   (global shuffle; shard-local with ShardShuffle), torch's DataLoader and torchdata's
   StatefulDataLoader over the same TarShardDataset, and webdataset's own pipeline (shard
   shuffle + shuffle buffer) in a torch DataLoader. Each epoch is timed from iter() to its last
   batch, loaders alternating, best of R, page cache warmed first. MosaicML Streaming is not
   compared: it does not install beside the CPU build of torch (it pulls a CUDA build).
2. seconds from building a loader (and loading a state) to its first batch, fresh and resumed
   at 10/50/90% of an epoch of 1e6 and 1e7 samples of a free map-style dataset, ours vs
   StatefulDataLoader (which fast-forwards its sampler), median of R.
3. state_dict bytes (msgpack, torch.save), ours vs StatefulDataLoader.
4. peak RSS (VmHWM) of the main process and of the largest worker while reading 5e4 shuffled
   samples of tar shards of N tiny samples, beside the bytes of the tar index's arrays; each
   case in a fresh spawned process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import io
import itertools
import multiprocessing
import resource
import statistics
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from resumable_loader import ResumableDataLoader, ShardShuffle, TarShardDataset
from resumable_loader.demo import augment as augment_rgb
from resumable_loader.demo import write_shards

BATCH, WORKERS = 64, 2
MEMORY_SAMPLES = 50_000  # read per memory case: shuffled, they touch every page of the index
COMMON: dict[str, Any] = dict(batch_size=BATCH, num_workers=WORKERS)
warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata 0.11 under torch 2.13


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def augment(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """The demo's decode + crop/flip/noise, and the label."""
    return augment_rgb(sample["rgb"]), int(sample["cls"])


class Mapped(Dataset):
    """``dataset[i]`` through ``transform``: the same decode for every map-style peer."""

    def __init__(self, dataset: Any, transform: Callable[[Any], Any]) -> None:
        self.dataset, self.transform = dataset, transform
        for name in ("shard_sizes", "fingerprint"):  # what the loader reads of a shard set
            if hasattr(dataset, name):
                setattr(self, name, getattr(dataset, name))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.transform(self.dataset[index])


def ours(dataset: Dataset, **kwargs: Any) -> ResumableDataLoader:
    return ResumableDataLoader(dataset, shuffle=True, seed=0, **COMMON, **kwargs)


def stateful(dataset: Dataset) -> Any:
    from torchdata.stateful_dataloader import StatefulDataLoader

    generator = torch.Generator().manual_seed(0)
    return StatefulDataLoader(dataset, shuffle=True, generator=generator, **COMMON)


def webdataset_pipeline(paths: list[str], transform: Callable[[Any], Any]) -> DataLoader:
    import webdataset as wds

    samples = wds.WebDataset(paths, shardshuffle=len(paths), seed=0, empty_check=False)
    return DataLoader(samples.shuffle(1024).map(transform), **COMMON)


def tar_peers(paths: list[str], skipped: list[str]) -> dict[str, Callable[[], Iterable]]:
    """Every peer's loader over the same shards; those that cannot run go to ``skipped``."""
    dataset = Mapped(TarShardDataset(paths), augment)
    peers: dict[str, Callable[[], Iterable]] = {
        "ours, global shuffle": lambda: ours(dataset),
        "torch DataLoader": lambda: DataLoader(dataset, shuffle=True, **COMMON),
    }
    windowed = ShardShuffle(window=4, buffer_size=1024)
    peers["ours, ShardShuffle(window=4, buffer_size=1024)"] = lambda: ours(
        dataset, shard_shuffle=windowed
    )
    if have("torchdata"):
        peers["torchdata StatefulDataLoader"] = lambda: stateful(dataset)
    else:
        skipped.append("torchdata StatefulDataLoader: skipped: torchdata not installed")
    if have("webdataset"):
        peers["webdataset, shardshuffle + shuffle(1024)"] = lambda: webdataset_pipeline(
            paths, augment
        )
    else:
        skipped.append("webdataset: skipped: webdataset not installed")
    if have("streaming"):
        skipped.append("MosaicML Streaming: installed, but this script has no comparison for it")
    else:
        skipped.append(
            "MosaicML Streaming: skipped: not installed; mosaicml-streaming 0.13 does not install "
            "cleanly beside torch 2.13 CPU (pip would replace torch with a 2.14 CUDA build and "
            "downgrade numpy)"
        )
    return peers


def throughput(paths: list[str], repeats: int) -> None:
    skipped: list[str] = []
    peers = tar_peers(paths, skipped)
    for path in paths:
        Path(path).read_bytes()  # warm the page cache for every peer alike
    best, seen = dict.fromkeys(peers, 0.0), {}
    for repeat in range(repeats):
        for name, make in peers.items():
            print(f"throughput: {name}, epoch {repeat + 1}/{repeats}", file=sys.stderr)
            start, count, checksum = time.perf_counter(), 0, 0
            for _images, labels in make():
                count, checksum = count + len(labels), checksum + int(labels.sum())
            best[name] = max(best[name], count / (time.perf_counter() - start))
            seen[name] = count, checksum
    ours_rate = best["ours, global shuffle"]
    print(f"{'loader':<50}{'samples/s':>11}{'ours/this':>11}{'samples':>9}  label sum")
    for name, rate in best.items():
        count, checksum = seen[name]
        print(f"{name:<50}{rate:>11,.0f}{ours_rate / rate:>11.3f}{count:>9}  {checksum}")
    print("\n".join(skipped))


class Indices(Dataset):
    """A map-style dataset of any length whose samples cost nothing: isolates the loader."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


def state_after(loader: Any, batches: int) -> dict[str, Any]:
    iterator = iter(loader)
    for _ in range(batches):
        next(iterator)
    state = loader.state_dict()
    del iterator
    return state


def stateful_state_at(state: dict[str, Any], batches: int) -> dict[str, Any]:
    """A StatefulDataLoader state with its counters moved to ``batches`` delivered batches.

    Consuming 9e6 samples to reach 90% of a 1e7 epoch would take minutes, so a real state
    taken after one batch has its counters set; ``resume_latency`` checks this on a small case.
    """
    counters = {
        "_num_yielded": batches,
        "_sampler_iter_yielded": batches,
        "_snapshot_step": batches,
        "samples_yielded": batches * BATCH,
        "yielded": batches * BATCH,
        "_last_yielded_worker_id": (batches - 1) % max(WORKERS, 1),
    }
    moved = {}
    for key, value in state.items():
        moved[key] = stateful_state_at(value, batches) if isinstance(value, dict) else value
        moved[key] = counters.get(key, moved[key])
    return moved


def same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def first_batch(make: Callable[[], Any], state: dict[str, Any] | None) -> float:
    """Seconds from building the loader (and loading ``state``) to its first batch."""
    start = time.perf_counter()
    loader = make()
    if state is not None:
        loader.load_state_dict(state)
    iterator = iter(loader)
    next(iterator)
    seconds = time.perf_counter() - start
    del iterator
    return seconds


def resume_latency(sizes: list[int], repeats: int) -> None:
    theirs_too = have("torchdata")
    if theirs_too:
        small = Indices(50 * BATCH)
        patched = stateful_state_at(state_after(stateful(small), 1), 7)
        check = same(patched, state_after(stateful(small), 7))
        print(f"check: StatefulDataLoader state moved 1 -> 7 batches == its real state: {check}")
    else:
        print("StatefulDataLoader: skipped: torchdata not installed")
    moved = ours(Indices(50 * BATCH)).state_at(0, 7 * BATCH)
    check = moved == state_after(ours(Indices(50 * BATCH)), 7)
    print(f"check: our fresh cursor with position = 7 batches == our real cursor: {check}")
    print(f"{'samples':>8}{'resume at':>11}{'ours ms':>10}{'StatefulDL ms':>15}{'ours/theirs':>13}")
    for size in sizes:
        dataset = Indices(size)
        template = ours(dataset)
        their_start = state_after(stateful(dataset), 1) if theirs_too else {}
        for fraction in (0.0, 0.1, 0.5, 0.9):
            print(f"first batch: {size:.0e} samples, {fraction:.0%}", file=sys.stderr)
            batches = round(fraction * size / BATCH)
            cursor = template.state_at(0, batches * BATCH) if batches else None
            mine = statistics.median(
                first_batch(lambda d=dataset: ours(d), cursor) for _ in range(repeats)
            )
            row = f"{size:>8.0e}{f'{fraction:.0%}' if batches else 'fresh':>11}{mine * 1e3:>10.1f}"
            if theirs_too:
                state = stateful_state_at(their_start, batches) if batches else None
                other = statistics.median(
                    first_batch(lambda d=dataset: stateful(d), state) for _ in range(repeats)
                )
                row += f"{other * 1e3:>15.1f}{mine / other:>13.4f}"
            print(row)


def cursor_sizes() -> None:
    dataset = Indices(10**6)
    states = {"ours": state_after(ours(dataset), 3)}
    if have("torchdata"):
        states["StatefulDataLoader"] = state_after(stateful(dataset), 3)
    ours_size = len(saved(states["ours"]))
    print(f"{'loader':<20}{'torch.save bytes':>17}{'ours/this':>11}  msgpack bytes")
    for name, state in states.items():
        try:
            packed = str(len(msgpack.packb(state)))
        except TypeError as error:
            packed = f"fails: {error}"
        size = len(saved(state))
        print(f"{name:<20}{size:>17}{ours_size / size:>11.3f}  {packed}")


def saved(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_tiny_shards(directory: Path, samples: int, shards: int) -> list[str]:
    """Tar shards of one 1-byte ``.cls`` member per sample, written as numpy records."""
    info = tarfile.TarInfo("000000000.cls")
    info.size, info.mtime = 1, 0
    template = np.frombuffer(info.tobuf(tarfile.USTAR_FORMAT) + b"1".ljust(512, b"\0"), np.uint8)
    paths = []
    for shard, ids in enumerate(np.array_split(np.arange(samples), shards)):
        records = np.tile(template, (len(ids), 1))
        for digit in range(9):
            records[:, 8 - digit] = ord("0") + ids // 10**digit % 10
        records[:, 148:156] = ord(" ")
        checksum = records[:, :512].sum(axis=1, dtype=np.int64)
        for digit in range(6):
            records[:, 153 - digit] = ord("0") + (checksum >> (3 * digit)) % 8
        records[:, 154] = 0
        path = directory / f"tiny-{shard:04d}.tar"
        path.write_bytes(records.tobytes() + bytes(1024))
        paths.append(str(path))
    return paths


def peak_rss(kind: str, paths: list[str]) -> tuple[int, int, int]:
    """In a fresh process: KiB of VmHWM after imports and after the epoch; workers' peak."""
    imports = vm_hwm()
    if kind == "webdataset":
        loader = webdataset_pipeline(paths, label_of)
    else:
        dataset = Mapped(TarShardDataset(paths), label_of)  # loads the index, memory-mapped
        loader = ours(dataset) if kind == "ours" else DataLoader(dataset, shuffle=True, **COMMON)
    iterator = iter(loader)
    for _batch in itertools.islice(iterator, MEMORY_SAMPLES // BATCH):
        pass
    del iterator  # stops and joins the workers
    # ru_maxrss of the joined workers (forked, so counting pages shared with this process).
    return imports, vm_hwm(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def vm_hwm() -> int:
    """This process's peak RSS in KiB (unlike ru_maxrss, not inherited across exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


def label_of(sample: dict[str, Any]) -> int:
    return int(sample["cls"])


def memory(sizes: list[int]) -> None:
    kinds = ["ours", "torch DataLoader"] + (["webdataset"] if have("webdataset") else [])
    spawn = multiprocessing.get_context("spawn")
    print(
        f"{'samples':>8}{'index MiB':>11}  {'loader':<18}{'imports MiB':>12}"
        f"{'main peak MiB':>15}{'worker peak MiB':>17}"
    )
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-peers-tiny-") as tmp:
            paths = write_tiny_shards(Path(tmp), size, shards=8)
            index = TarShardDataset(paths).index  # built here once, beside the shards
            arrays = (index.spans, index.shard_sizes, index.shard_offsets)
            index_mib = sum(array.nbytes for array in arrays) / 2**20
            for kind in kinds:
                print(f"memory: {size:.0e} samples, {kind}", file=sys.stderr)
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                    imports, main, worker = pool.submit(peak_rss, kind, paths).result()
                held = f"{index_mib:.2f}" if kind != "webdataset" else "none"
                print(  # VmHWM and ru_maxrss are in KiB
                    f"{size:>8.0e}{held:>11}  {kind:<18}"
                    f"{imports / 1024:>12.0f}{main / 1024:>15.0f}{worker / 1024:>17.0f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    args = parser.parse_args()
    shards, per_shard, repeats = (8, 512, 1) if args.quick else (16, 1024, 3)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        paths = write_shards(Path(tmp), shards=shards, per_shard=per_shard)
        print(
            f"## 1. throughput: {shards} tar shards x {per_shard} samples (3x32x32 + label), "
            f"batch {BATCH}, {WORKERS} workers, decode + crop/flip/noise, best of {repeats}"
        )
        throughput(paths, repeats)
    print(
        f"\n## 2. time to first batch, {WORKERS} workers, batch {BATCH}: build the loader, "
        f"load the state, iter(), next(); median of {repeats}"
    )
    resume_latency([10**6] if args.quick else [10**6, 10**7], repeats)
    print(f"\n## 3. state_dict size after 3 batches of an epoch of 1e6, {WORKERS} workers")
    cursor_sizes()
    print(
        f"\n## 4. peak RSS reading the first {MEMORY_SAMPLES:,} samples of an epoch of tiny tar "
        f"samples, {WORKERS} workers, batch {BATCH}\n(each case in a fresh process; a worker's "
        "RSS counts the pages it shares with the main process)"
    )
    memory([10**5] if args.quick else [10**5, 10**6])


if __name__ == "__main__":
    main()
