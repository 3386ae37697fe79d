"""Mixtures beside their peers: exact shares, build cost, re-weighting, resume, throughput.

Run: python benchmarks/bench_mixture.py [--quick]

1. Exactness and build, ours vs Megatron-core's BlendedDataset (its greedy "largest error"
   index, built in C++ over the whole run): the largest |draws - t * share| of any source over
   every prefix t of N samples, the build time and the memory the build allocates (tracemalloc
   sees numpy's buffers), for 3 sources (0.5/0.3/0.2) and 8 sources.
2. Weights changed at 50% of a run of M samples: Megatron rebuilds its index with the new
   weights and the run continues at consumed_samples = M/2 of it; we append a phase at M/2.
   Per source, samples drawn twice and samples never drawn below the highest one drawn
   (sequential sources, so a source's k-th sample is its k-th draw).
3. torchdata.nodes' MultiNodeWeightedSampler -> ParallelMapper(augment) -> Loader, state taken
   after S items with 2 workers, resumed with 1 and 4 workers: items and augmentations equal to
   the continuous run's, and the same for our loader over a Mixture.
4. Throughput (samples/s) of a 3-source Mixture vs the same samples as one map-style dataset,
   our loader, epochs alternating between the two, best of R and the median of the rounds'
   ratios, with 0 and 2 workers; then the Mixture's own per-sample dispatch cost on free
   samples, timed alone (what a noisy shared machine cannot hide in a ratio near 1).
5. Time from building a loader (and loading a state) to its first batch, fresh vs resumed at
   90% of a 10^9-sample run of 8 sources and 3 phases (all shuffled; then one of them
   shard-local, which replays its buffer within its current epoch), median of R after one
   untimed round.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import time
import timeit
import tracemalloc
import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from resumable_loader import ResumableDataLoader, ShardShuffle
from resumable_loader.mixture import Mixture, MixtureSource
from resumable_loader.mixture.allocation import allocation_for

warnings.filterwarnings("ignore")
logging.getLogger("resumable_loader").setLevel(logging.WARNING)
THREE = [Fraction(1, 2), Fraction(3, 10), Fraction(1, 5)]
EIGHT = [Fraction(w, 100) for w in (35, 20, 15, 10, 8, 6, 4, 2)]
CHUNK = 10_000_000


class Ids(Dataset):
    """``length`` samples; sample i is its id (a free dataset: only the order is measured)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.fingerprint = f"ids-{length}"

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


class Light(Dataset):
    """A small in-memory sample with a light augmentation (what throughput compares)."""

    def __init__(self, length: int, tag: int = 0) -> None:
        self.data = torch.arange(length * 16, dtype=torch.float32).reshape(length, 16) + tag
        self.fingerprint = f"light-{length}-{tag}"

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index] * torch.rand(16)


class Image(Light):
    """A 3x32x32 crop, flip and noise of a stored 3x40x40 image: a heavier per-sample cost."""

    def __init__(self, length: int, tag: int = 0) -> None:
        self.data = torch.full((length, 3, 40, 40), float(tag))
        self.fingerprint = f"image-{length}-{tag}"

    def __getitem__(self, index: int) -> torch.Tensor:
        top, left = torch.randint(0, 9, (2,)).tolist()
        crop = self.data[index, :, top : top + 32, left : left + 32]
        if torch.rand(()) < 0.5:
            crop = crop.flip(-1)
        return (crop + 0.1 * torch.randn(3, 32, 32)).contiguous()


class Sharded(Ids):
    def __init__(self, shards: int, per_shard: int) -> None:
        super().__init__(shards * per_shard)
        self.shard_sizes = np.full(shards, per_shard)


def deviation(chunks: Any, shares: list[Fraction], total: int) -> float:
    """max over prefixes t <= total and sources of |draws before t - t * share|."""
    counts = np.zeros(len(shares), dtype=np.int64)
    worst, start = 0.0, 0
    for sources in chunks:
        t = np.arange(start + 1, start + len(sources) + 1, dtype=np.float64)
        for i, share in enumerate(shares):
            drawn = counts[i] + np.cumsum(sources == i)
            worst = max(worst, float(np.abs(drawn - t * float(share)).max()))
            counts[i] = drawn[-1]
        start += len(sources)
    assert start == total
    return worst


def megatron_index(weights: list[Fraction], size: int) -> tuple[Any, float, int]:
    """A real BlendedDataset over free sources: (dataset, build seconds, bytes allocated)."""
    from megatron.core.datasets.blended_dataset import BlendedDataset
    from megatron.core.datasets.blended_megatron_dataset_config import (
        BlendedMegatronDatasetConfig,
    )
    from megatron.core.datasets.utils import Split

    class Source:
        def __init__(self, n: int, name: str) -> None:
            self.n, self.index_split = n, Split.train
            self.unique_identifiers = {"name": name, "n": n}

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> dict[str, int]:
            return {"i": int(i)}

    sources = [Source(size, f"s{i}") for i in range(len(weights))]
    config = BlendedMegatronDatasetConfig(random_seed=0, sequence_length=1)
    tracemalloc.start()
    begin = time.perf_counter()
    blended = BlendedDataset(sources, [float(w) for w in weights], size, config)
    seconds = time.perf_counter() - begin
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return blended, seconds, peak


def ours(weights: list[Fraction], *, phases=(), size: int = 10**9, seed: int = 0) -> Any:
    names = [f"s{i}" for i in range(len(weights))]
    sources = {n: MixtureSource(Ids(size), shuffle=False) for n in names}
    mixture = Mixture(sources, dict(zip(names, weights, strict=True)), phases=phases)
    return mixture.loader_order(seed=seed)


def exactness(total: int) -> None:
    print(f"## 1. exact shares and build, N = {total:.0e} samples")
    print(f"{'sources':>7} {'blender':<28} {'max |dev|':>10} {'build s':>9} {'build MB':>9}")
    for weights in (THREE, EIGHT):
        tracemalloc.start()
        begin = time.perf_counter()
        order = ours(weights)
        seconds = time.perf_counter() - begin
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        allocation = order.allocations[0]
        chunks = (allocation.sources(a, min(a + CHUNK, total)) for a in range(0, total, CHUNK))
        dev = deviation(chunks, weights, total)
        print(
            f"{len(weights):>7} {'ours (Mixture)':<28} {dev:>10.4f} {seconds:>9.4f} "
            f"{peak / 2**20:>9.2f}"
        )
        blended, seconds, peak = megatron_index(weights, total)
        index = blended.dataset_index
        chunks = (index[a : a + CHUNK] for a in range(0, total, CHUNK))
        dev = deviation(chunks, weights, total)
        print(
            f"{len(weights):>7} {'megatron BlendedDataset':<28} {dev:>10.4f} {seconds:>9.4f} "
            f"{peak / 2**20:>9.2f}"
        )
        del blended, index


def reweighting(total: int) -> None:
    half = total // 2
    after = [Fraction(1, 5), Fraction(3, 10), Fraction(1, 2)]
    print(f"\n## 2. weights 0.5/0.3/0.2 -> 0.2/0.3/0.5 at 50% of {total:.0e} samples")
    print(f"{'blender':<26} {'source':>6} {'drawn':>9} {'twice':>9} {'never':>9}")
    old, _, _ = megatron_index(THREE, total)
    new, _, _ = megatron_index(after, total)
    sources = np.concatenate([old.dataset_index[:half], new.dataset_index[half:]])
    samples = np.concatenate([old.dataset_sample_index[:half], new.dataset_sample_index[half:]])
    _report("megatron (index rebuilt)", sources, samples, 3)
    del old, new
    first = ours(THREE, size=total)
    second = ours(
        THREE, phases=[(half, dict(zip(["s0", "s1", "s2"], after, strict=True)))], size=total
    )
    encoded = np.concatenate([first.ids(0, 0, half), second.ids(0, half, total)])
    ends = np.cumsum([total] * 3)
    sources = np.searchsorted(ends, encoded, side="right")
    _report("ours (phase appended)", sources, encoded - sources * total, 3)


def _report(name: str, sources: np.ndarray, samples: np.ndarray, count: int) -> None:
    for i in range(count):
        drawn = samples[sources == i]
        unique = np.unique(drawn)
        twice = len(drawn) - len(unique)
        never = int(unique.max()) + 1 - len(unique) if len(unique) else 0
        print(f"{name:<26} {i:>6} {len(drawn):>9} {twice:>9} {never:>9}")


def torchdata_resume(items: int, stop: int) -> None:
    print(f"\n## 3. resume with another worker count ({items} items, state after {stop})")
    print(f"{'loader':<40} {'workers':>8} {'same items':>11} {'same augment':>13}")
    import torchdata.nodes as tn

    def augment(item: Any) -> tuple[str, int, float]:
        source, value = item
        return source, value, float(torch.rand(()).item()) + float(np.random.rand())

    def pipeline(workers: int) -> Any:
        nodes = {
            name: tn.IterableWrapper([(name, i) for i in range(n)])
            for name, n in (("a", 300), ("b", 200), ("c", 100))
        }
        sampler = tn.MultiNodeWeightedSampler(
            nodes, {"a": 0.5, "b": 0.3, "c": 0.2}, rank=0, world_size=1, seed=3
        )
        return tn.Loader(tn.ParallelMapper(sampler, augment, num_workers=workers))

    loader = pipeline(2)
    continuous = [x for _, x in zip(range(items), loader, strict=False)]
    loader = pipeline(2)
    it = iter(loader)
    head = [next(it) for _ in range(stop)]
    state = loader.state_dict()
    for workers in (2, 1, 4):
        resumed = pipeline(workers)
        resumed.load_state_dict(state)
        tail = [x for _, x in zip(range(items - stop), resumed, strict=False)]
        got = head + tail
        same_items = sum(a[:2] == b[:2] for a, b in zip(got, continuous, strict=False))
        same_aug = sum(a == b for a, b in zip(got, continuous, strict=False))
        print(
            f"{'torchdata MultiNodeWeightedSampler':<40} {'2->' + str(workers):>8} "
            f"{same_items:>5}/{items:<5} {same_aug:>7}/{items:<5}"
        )

    def ours_loader(workers: int, batch: int) -> ResumableDataLoader:
        sources = {
            n: MixtureSource(Light(k, tag=t), shuffle=True)
            for t, (n, k) in enumerate((("a", 300), ("b", 200), ("c", 100)))
        }
        mixture = Mixture(sources, {"a": 5, "b": 3, "c": 2}, samples_per_epoch=items)
        return ResumableDataLoader(mixture, batch_size=batch, num_workers=workers, seed=3)

    def values(loader: ResumableDataLoader, batches: int | None) -> list[tuple[float, ...]]:
        out = []
        for batch in itertools.islice(loader, batches):
            out.extend(tuple(row.tolist()) for row in batch)
        return out

    continuous = values(ours_loader(2, 10), None)
    first = ours_loader(2, 10)
    head = values(first, stop // 10)
    state = first.state_dict()
    for workers in (2, 1, 4):
        resumed = ours_loader(workers, 7)
        resumed.load_state_dict(state)
        got = head + values(resumed, None)
        same = sum(a == b for a, b in zip(got, continuous, strict=False))
        same = same if len(got) == len(continuous) else -1
        print(
            f"{'ours (Mixture)':<40} {'2->' + str(workers):>8} {same:>5}/{items:<5} "
            f"{same:>7}/{items:<5}"
        )


def throughput(samples: int, repeats: int) -> None:
    print(
        f"\n## 4. throughput, batch 64, epochs alternating, best of {repeats}; ratio: of the "
        "bests, and the median (min-max) of the rounds' ratios"
    )
    print(
        f"{'sample':<22} {'workers':>7} {'dataset':<24} {'samples/s':>10} {'ratio':>6} "
        f"{'per round':>19}"
    )
    for kind, make, count in (
        ("light (16 floats)", Light, samples),
        ("image crop/flip/noise", Image, samples // 4),
    ):
        thirds = [count // 2, count * 3 // 10, count - count // 2 - count * 3 // 10]
        for workers in (0, 2):
            one = make(count)
            sources = {f"s{i}": make(n, tag=i) for i, n in enumerate(thirds)}
            mixture = Mixture(
                sources, dict(zip(sources, thirds, strict=True)), samples_per_epoch=count
            )
            loaders = {
                name: ResumableDataLoader(
                    dataset,
                    batch_size=64,
                    shuffle=True,
                    num_workers=workers,
                    seed=1,
                    persistent_workers=workers > 0,
                )
                for name, dataset in (("one map-style dataset", one), ("3-source Mixture", mixture))
            }
            rates: dict[str, list[float]] = {name: [] for name in loaders}
            for _ in range(repeats):  # alternating, so both see the same machine load
                for name, loader in loaders.items():
                    begin = time.perf_counter()
                    delivered = sum(len(batch) for batch in loader)
                    rates[name].append(delivered / (time.perf_counter() - begin))
            base = rates["one map-style dataset"]
            for name, rate in rates.items():
                rounds = [r / b for r, b in zip(rate, base, strict=True)]
                spread = f"{statistics.median(rounds):.3f} ({min(rounds):.2f}-{max(rounds):.2f})"
                print(
                    f"{kind:<22} {workers:>7} {name:<24} {max(rate):>10.0f} "
                    f"{max(rate) / max(base):>6.3f} {spread:>19}"
                )


def dispatch_cost(samples: int) -> None:
    """What the Mixture adds to each read, on free samples (the id itself) so that nothing
    else is timed: its ``__getitem__`` against the sources' own at the same decoded ids, in
    the same order, best of 7 alternating passes over an epoch (robust on a noisy machine)."""
    thirds = [samples // 2, samples * 3 // 10, samples - samples // 2 - samples * 3 // 10]
    sources = {f"s{i}": Ids(n) for i, n in enumerate(thirds)}
    mixture = Mixture(sources, dict(zip(sources, thirds, strict=True)), samples_per_epoch=samples)
    encoded = [int(i) for chunk in mixture.loader_order(seed=1).iter_ids(0) for i in chunk]
    direct = [(mixture.sources[s].dataset, i) for s, i in map(mixture.decode, encoded)]
    reads = {
        "direct": lambda: [dataset[i] for dataset, i in direct],
        "mixture": lambda: [mixture[i] for i in encoded],
    }
    best = dict.fromkeys(reads, float("inf"))
    for _ in range(7):  # alternating: both see the same caches and machine load
        for name, read in reads.items():
            best[name] = min(best[name], timeit.timeit(read, number=1))
    plain, mixed = (best[name] / samples * 1e6 for name in ("direct", "mixture"))
    print(
        f"per-sample dispatch: a source's own __getitem__ {plain:.3f} us, through the Mixture "
        f"{mixed:.3f} us: +{mixed - plain:.3f} us a sample"
    )


def resume_time(total: int, repeats: int) -> None:
    print(
        f"\n## 5. first batch, fresh vs resumed at 90% of {total:.0e} samples (8 sources, 3 "
        f"phases, batch 64, median of {repeats})"
    )
    print(f"{'sources':<34} {'fresh ms':>9} {'resumed ms':>11} {'ratio':>6}")
    names = [f"s{i}" for i in range(8)]
    phases = [
        (total // 3, dict(zip(names, [1, 1, 1, 1, 1, 1, 1, 1], strict=True))),
        (2 * total // 3, dict(zip(names, [1, 2, 3, 4, 4, 3, 2, 1], strict=True))),
    ]

    def make(shard_local: bool) -> ResumableDataLoader:
        sources: dict[str, Any] = {n: Ids(1_000_000 + 1000 * i) for i, n in enumerate(names)}
        if shard_local:
            sources["s0"] = MixtureSource(Sharded(1000, 1000), shard_shuffle=ShardShuffle(8, 1024))
        mixture = Mixture(sources, dict(zip(names, EIGHT, strict=True)), phases=phases)
        return ResumableDataLoader(mixture, batch_size=64, seed=5)

    for shard_local in (False, True):
        fresh, resumed = [], []
        for repeat in range(repeats + 1):  # the first, untimed: tables and imports warm up
            begin = time.perf_counter()
            next(iter(make(shard_local)))
            fresh.append(time.perf_counter() - begin)
            state = make(shard_local).state_at(0, total * 9 // 10)
            begin = time.perf_counter()
            loader = make(shard_local)
            loader.load_state_dict(state)
            next(iter(loader))
            resumed.append(time.perf_counter() - begin)
            if not repeat:
                fresh.clear()
                resumed.clear()
        a, b = statistics.median(fresh) * 1e3, statistics.median(resumed) * 1e3
        label = "8 shuffled" if not shard_local else "7 shuffled + 1 shard-local (1e6)"
        print(f"{label:<34} {a:>9.1f} {b:>11.1f} {b / a:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    exactness(10**7 if quick else 10**8)
    reweighting(10**6 if quick else 10**7)
    torchdata_resume(300, 120)
    throughput(20_000 if quick else 100_000, 2 if quick else 7)
    dispatch_cost(100_000 if quick else 1_000_000)
    resume_time(10**9, 5 if quick else 61)
    checksum = allocation_for((5, 3, 2)).sources(0, 10).tolist()
    print(f"\nchecksum (ours, 5:3:2, first 10 sources): {checksum}")


if __name__ == "__main__":
    main()
