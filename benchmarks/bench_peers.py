"""Our loader beside its peers: tar throughput, first batch after a resume, cursor size, memory.

Run: python benchmarks/bench_peers.py [--quick]
Peers: pip install -e '.[bench]' -c constraints.txt (torchdata, litdata; the constraints keep
torch 2.13.0+cpu, pip adds torchvision 0.28 and tifffile for litdata; that torchvision is not
built for the CPU torch: `import litdata` then fails with "operator torchvision::nms does not
exist", so `pip uninstall -y torchvision` after). To leave torchvision out from the start:
pip install --no-deps litdata==0.2.76 tifffile (litdata's other dependencies, boto3, obstore,
filelock, lightning-utilities, requests, are already installed by the test extra).

1. samples/s over the same samples (16 shards x 1024 of 3x32x32 + label), workers, batch size
   and decode + crop/flip/noise, as raw arrays and as JPEG: ours (global shuffle; shard-local
   with ShardShuffle), torch's DataLoader and torchdata's StatefulDataLoader over the same
   TarShardDataset, webdataset's own pipeline (shard shuffle + shuffle buffer) in a torch
   DataLoader, and litdata's StreamingDataset/StreamingDataLoader over its own optimize()
   chunks of the same fields (16 chunks of 1024). Each epoch is timed from building the loader
   to its last batch; R interleaved rounds (each round runs every loader once, in a rotated
   order), page cache warmed first; the median samples/s and our rate over each peer's in the
   same round, median and range, of the wall clock and of CPU time (this process and its
   joined workers: on a shared machine, less swayed by the load). Then tiny samples (one
   1-byte member each) at 0 and 2 workers, ours (reseed_globals True, the default, and
   "auto") vs torch's DataLoader, and a random-access
   ``dataset[i]`` against a bare ``os.pread`` of the same span. MosaicML Streaming is not
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
import os
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


def augment_jpeg(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """JPEG decode (PIL) to the raw CHW bytes, then the same crop/flip/noise, and the label."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
    return augment_rgb(np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes()), int(sample["cls"])


AUGMENT = {"raw": augment, "jpeg": augment_jpeg}


def write_jpeg_shards(raw_paths: list[str], directory: Path) -> list[str]:
    """The samples of ``raw_paths`` again, each image as a JPEG (quality 90) member ``.jpg``."""
    from PIL import Image

    paths = []
    for number, raw in enumerate(raw_paths):
        path = directory / f"jpeg-{number:06d}.tar"
        with tarfile.open(raw) as source, tarfile.open(path, "w") as tar:
            for info in source.getmembers():
                payload = source.extractfile(info).read()
                if info.name.endswith(".rgb"):
                    image = np.frombuffer(payload, np.uint8).reshape(3, 32, 32).transpose(1, 2, 0)
                    encoded = io.BytesIO()
                    Image.fromarray(image).save(encoded, format="JPEG", quality=90)
                    payload, info = encoded.getvalue(), tarfile.TarInfo(info.name[:-3] + "jpg")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        paths.append(str(path))
    return paths


class SampleOf:
    """litdata's optimize() input function: sample ``i`` of our tar shards, as a dict of the
    same fields (the payload bytes, the label as an int)."""

    def __init__(self, paths: list[str]) -> None:
        self.dataset = TarShardDataset(paths)

    def __call__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        field = "rgb" if "rgb" in sample else "jpg"
        return {field: sample[field], "cls": int(sample["cls"])}


def write_litdata(paths: list[str], directory: Path) -> str:
    """litdata's own chunks of the samples of ``paths``: one chunk per 1024 samples.

    ``optimize`` sets this process's multiprocessing start method to "spawn" and leaves it so:
    every DataLoader built afterwards (ours, torch's, litdata's) would then start its workers
    as new interpreters, a few seconds an epoch that drowned the loaders' own costs (section 1
    measured ~4,000 samples/s instead of ~14,000). The method is put back as it was.
    """
    import litdata

    inputs = list(range(len(TarShardDataset(paths))))
    method = multiprocessing.get_start_method(allow_none=True)
    try:
        litdata.optimize(
            fn=SampleOf(paths),
            inputs=inputs,
            output_dir=str(directory),
            chunk_size=1024,
            num_workers=1,
            verbose=False,
        )
    finally:
        multiprocessing.set_start_method(method, force=True)
    return str(directory)


def litdata_loader(directory: str, transform: Callable[[Any], Any]) -> Any:
    from litdata import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(directory, shuffle=True, seed=0, transform=transform)
    return StreamingDataLoader(dataset, **COMMON)


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


def tar_peers(
    paths: list[str], transform: Callable[[Any], Any], litdata_dir: str | None, skipped: list[str]
) -> dict[str, Callable[[], Iterable]]:
    """Every peer's loader over the same samples; those that cannot run go to ``skipped``.

    Ours and torch's DataLoader read the same TarShardDataset, whose ``decode`` is the
    augmentation: both then read a batch through its ``__getitems__``.
    """
    dataset = TarShardDataset(paths, decode=transform)
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
            paths, transform
        )
    else:
        skipped.append("webdataset: skipped: webdataset not installed")
    if litdata_dir is not None:
        peers["litdata StreamingDataLoader, own chunks"] = lambda: litdata_loader(
            litdata_dir, transform
        )
    else:
        skipped.append("litdata: skipped: litdata not installed")
    if have("streaming"):
        skipped.append("MosaicML Streaming: installed, but this script has no comparison for it")
    else:
        skipped.append(
            "MosaicML Streaming: skipped: not installed; mosaicml-streaming 0.13 does not install "
            "cleanly beside torch 2.13 CPU (pip would replace torch with a 2.14 CUDA build and "
            "downgrade numpy)"
        )
    return peers


def throughput(paths: list[str], kind: str, rounds: int, directory: Path) -> None:
    """Section 1 for one sample format: every peer an epoch per round, rounds interleaved."""
    skipped: list[str] = []
    litdata_dir = write_litdata(paths, directory / f"litdata-{kind}") if have("litdata") else None
    peers = tar_peers(paths, AUGMENT[kind], litdata_dir, skipped)
    for path in [*paths, *(Path(litdata_dir).glob("*") if litdata_dir else [])]:
        Path(path).read_bytes()  # warm the page cache for every peer alike
    rates, seen = interleaved(peers, rounds, f"throughput {kind}")
    table(rates, "ours, global shuffle", seen)
    print("\n".join(skipped))


def epoch(make: Callable[[], Iterable]) -> tuple[tuple[float, float], tuple[int, int]]:
    """samples per second of one epoch from building the loader to its last batch, of the
    wall clock and of CPU time (this process's and its joined workers'); (samples, label sum).
    """
    start, cpu, count, checksum = time.perf_counter(), cpu_seconds(), 0, 0
    for batch in make():
        labels = batch[1] if isinstance(batch, (list, tuple)) else batch
        count, checksum = count + len(labels), checksum + int(labels.sum())
    wall, used = time.perf_counter() - start, cpu_seconds() - cpu
    return (count / wall, count / used), (count, checksum)


def cpu_seconds() -> float:
    """CPU seconds used by this process and by its children that ended (a loader's workers
    are joined at the end of its epoch): on a shared machine, less swayed by other processes'
    load than the wall clock."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def interleaved(
    peers: dict[str, Callable[[], Iterable]], rounds: int, what: str
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, tuple[int, int]]]:
    """Per peer, the (wall, CPU) samples/s of each round; each round runs every peer once, the
    order rotated by one each round, so no peer always runs first or after the same one."""
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in peers}
    seen: dict[str, tuple[int, int]] = {}
    names = list(peers)
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            print(f"{what}: {name}, round {number + 1}/{rounds}", file=sys.stderr)
            rate, seen[name] = epoch(peers[name])
            rates[name].append(rate)
    return rates, seen


def table(
    rates: dict[str, list[tuple[float, float]]], ours: str, seen: dict[str, tuple[int, int]]
) -> None:
    """Median samples/s, and our rate over each peer's in the same round: median [min-max],
    of the wall clock and of CPU time."""
    print(
        f"{'loader':<50}{'samples/s':>11}{'ours/this':>11}{'range':>15}"
        f"{'CPU ours/this':>15}{'range':>15}{'samples':>9}  label sum"
    )
    for name, mine in rates.items():
        columns = ""
        for kind in (0, 1):  # wall, CPU
            ratios = [a[kind] / b[kind] for a, b in zip(rates[ours], mine, strict=True)]
            spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
            width = 11 if kind == 0 else 15
            columns += f"{statistics.median(ratios):>{width}.3f}{spread:>15}"
        count, checksum = seen[name]
        wall = statistics.median(rate for rate, _ in mine)
        print(f"{name:<50}{wall:>11,.0f}{columns}{count:>9}  {checksum}")


AUTO = 'ours, global shuffle, reseed_globals="auto"'


def tiny_samples(directory: Path, rounds: int) -> None:
    """Samples of one 1-byte member: the loader's own cost per sample, ours vs torch's."""
    paths = write_tiny_shards(directory, 16 * 4096, shards=16)
    dataset = TarShardDataset(paths, decode=label_of)
    for workers in (0, 2):
        options = dict(batch_size=BATCH, num_workers=workers)
        peers: dict[str, Callable[[], Iterable]] = {
            "ours, global shuffle": lambda o=options: ResumableDataLoader(
                dataset, shuffle=True, seed=0, **o
            ),
            AUTO: lambda o=options: ResumableDataLoader(
                dataset, shuffle=True, seed=0, reseed_globals="auto", **o
            ),
            "torch DataLoader": lambda o=options: DataLoader(dataset, shuffle=True, **o),
        }
        print(f"{workers} workers:")
        rates, seen = interleaved(peers, rounds, f"tiny samples, {workers} workers")
        table(rates, "ours, global shuffle", seen)
        print(f"the same rounds, ours/this for {AUTO} (label_of draws nothing: none reseeded)")
        table(rates, AUTO, seen)


def random_access(paths: list[str], rounds: int) -> None:
    """``dataset[i]`` (locate, read, cut, check) against a bare ``os.pread`` of the same span,
    in a random order over every sample, rounds interleaved; one process."""
    dataset = TarShardDataset(paths)
    order = np.random.default_rng(0).permutation(len(dataset)).tolist()
    records = dataset.index.records
    spans = [(int(records[i, 0]), int(records[i, 1]), int(records[i, 2])) for i in order]
    files = [os.open(path, os.O_RDONLY) for path in paths]

    def bare() -> None:
        for shard, start, length in spans:
            os.pread(files[shard], length, start)

    def ours() -> None:
        for sample_id in order:
            dataset[sample_id]

    times: dict[str, list[float]] = {"bare os.pread": [], "dataset[i]": []}
    for _ in range(rounds):
        for name, run in (("bare os.pread", bare), ("dataset[i]", ours)):
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / len(order) * 1e6)
    for handle in files:
        os.close(handle)
    ratios = [a / b for a, b in zip(times["bare os.pread"], times["dataset[i]"], strict=True)]
    for name, values in times.items():
        print(f"{name:<16}{statistics.median(values):>8.2f} us a sample (median of {rounds})")
    print(
        f"dataset[i] speed / bare pread speed: {statistics.median(ratios):.3f} "
        f"[{min(ratios):.3f}-{max(ratios):.3f}]"
    )


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
            arrays = (index.records, index.checksums, index.shard_sizes, index.shard_offsets)
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


SECTIONS = ("1", "1b", "1c", "2", "3", "4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"which to run, e.g. 1,1c (of {SECTIONS})"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 2)")
    args = parser.parse_args()
    wanted = set(args.sections.split(","))
    shards, per_shard, repeats = (8, 512, 1) if args.quick else (16, 1024, 3)
    rounds = args.rounds or (2 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        paths = write_shards(Path(tmp), shards=shards, per_shard=per_shard)
        formats = {"raw": paths, "jpeg": write_jpeg_shards(paths, Path(tmp))}
        for kind, kind_paths in formats.items() if "1" in wanted else ():
            print(
                f"## 1. throughput, {kind}: {shards} tar shards x {per_shard} samples (3x32x32 + "
                f"label), batch {BATCH}, {WORKERS} workers, decode + crop/flip/noise, median of "
                f"{rounds} interleaved rounds"
            )
            throughput(kind_paths, kind, rounds, Path(tmp))
        if "1b" in wanted:
            print(
                f"\n## 1b. tiny samples (one 1-byte member), {16 * 4096} in 16 shards, batch "
                f"{BATCH}, median of {rounds} interleaved rounds"
            )
            tiny_samples(Path(tmp), rounds)
        if "1c" in wanted:
            print(f"\n## 1c. random access, {len(paths) * per_shard} samples (raw), one process")
            random_access(paths, rounds)
    if "2" in wanted:
        print(
            f"\n## 2. time to first batch, {WORKERS} workers, batch {BATCH}: build the loader, "
            f"load the state, iter(), next(); median of {repeats}"
        )
        resume_latency([10**6] if args.quick else [10**6, 10**7], repeats)
    if "3" in wanted:
        print(f"\n## 3. state_dict size after 3 batches of an epoch of 1e6, {WORKERS} workers")
        cursor_sizes()
    if "4" in wanted:
        print(
            f"\n## 4. peak RSS reading the first {MEMORY_SAMPLES:,} samples of an epoch of tiny "
            f"tar samples, {WORKERS} workers, batch {BATCH}\n(each case in a fresh process; a "
            "worker's RSS counts the pages it shares with the main process)"
        )
        memory([10**5] if args.quick else [10**5, 10**6])


if __name__ == "__main__":
    main()
