"""The per-sample reseed of the global RNGs, and what it costs tiny samples at num_workers=0.

Run: python benchmarks/bench_reseed.py [--samples N] [--repeats R]

Timed in this process's CPU time, not the wall clock: on a shared machine other processes'
load swings the wall clock far more than the work measured, and with num_workers=0 the
whole loading runs in this process. Two tables:

- per call: installing a sample's key with and without the reseed of all three generators
  (one C++ call), and re-keying a fetch to its next sample (what a batched read or a pack
  does per sample), beside the libraries' own seeding for reference; the best of R rounds;
- tiny samples, batch 64: samples per CPU second of torch's DataLoader, ours (reseed_globals
  True), ours with "auto" (nothing drawn, so no generator reseeded) and with False, the best
  of R alternating epochs, and the ratio to torch; the checksum of the ids shows the same work
  was done. Two datasets: one returning its index (the
  loader's cost alone), and bench_peers' section 1b tar shards of one 1-byte member a sample
  read through TarShardDataset's ``__getitems__`` (each sample decoded under its own key).

Only public names are used, so the same script measures an earlier release (put its package
first on the path) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import torch
from bench_loader import Tiny  # this folder's script: the same per-sample-overhead dataset
from bench_peers import label_of, write_tiny_shards  # and bench_peers' tiny tar samples
from torch.utils.data import DataLoader, Dataset

from resumable_loader import ResumableDataLoader, TarShardDataset
from resumable_loader.order import Purpose
from resumable_loader.rngs.sample import enter_samples, install_key, install_sample_key

CALLS = 2000  # calls per timed round


def per_call(repeats: int) -> None:
    positions = iter(range(10**12))

    def next_sample() -> None:  # a fetch's next sample, as a batched read or a pack keys it
        install_sample_key(next(positions))

    parts = {
        "install_key + reseed of all three": lambda: install_key(
            7, 1, next(positions), Purpose.SAMPLE, reseed_globals=True
        ),
        "install_sample_key + reseed of all three": next_sample,
        "install_key, no reseed": lambda: install_key(
            7, 1, next(positions), Purpose.SAMPLE, reseed_globals=False
        ),
        "random.seed(128-bit int)": lambda: random.seed(2**127 + next(positions)),
        "np.random.seed(32-bit int)": lambda: np.random.seed(next(positions) % 2**32),
        "torch.default_generator.manual_seed": lambda: torch.default_generator.manual_seed(
            next(positions)
        ),
    }
    print(f"# per call, CPU time, best of {repeats} rounds of {CALLS:,} calls")
    print(f"{'call':<44}{'us':>8}")
    for name, call in parts.items():
        enter_samples(7, 1, reseed_globals=True)  # for install_sample_key
        best = min(timeit.repeat(call, number=CALLS, repeat=repeats, timer=time.process_time))
        print(f"{name:<44}{best / CALLS * 1e6:>8.2f}")


def tiny_samples(dataset: Dataset, what: str, repeats: int) -> None:
    samples = len(dataset)
    loaders = {
        "torch": DataLoader(dataset, batch_size=64, shuffle=True),
        "ours": ResumableDataLoader(dataset, batch_size=64, shuffle=True, seed=0),
        "ours, reseed auto": ResumableDataLoader(
            dataset, batch_size=64, shuffle=True, seed=0, reseed_globals="auto"
        ),
        "ours, reseed off": ResumableDataLoader(
            dataset, batch_size=64, shuffle=True, seed=0, reseed_globals=False
        ),
    }
    best = dict.fromkeys(loaders, 0.0)
    checksum = 0
    for _ in range(repeats):
        for name, loader in loaders.items():
            start, sums = time.process_time(), 0
            for batch in loader:
                ids = batch[1] if isinstance(batch, (list, tuple)) else batch
                sums = (sums * 31 + int(ids.sum())) % (1 << 61)
            best[name] = max(best[name], samples / (time.process_time() - start))
            checksum = sums if name == "ours" else checksum
    print(
        f"\n# {what} at num_workers=0: {samples:,} an epoch, batch 64, samples per CPU "
        f"second, best of {repeats} alternating epochs"
    )
    print(f"{'loader':<20}{'samples/s':>12}{'vs torch':>10}")
    for name, rate in best.items():
        print(f"{name:<20}{rate:>12,.0f}{rate / best['torch']:>10.3f}")
    print(f"checksum of our ids: {checksum:x}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    per_call(max(args.repeats, 10))
    tiny_samples(Tiny(args.samples), "tiny samples (the index)", args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-reseed-") as tmp:
        paths = write_tiny_shards(Path(tmp), args.samples, shards=16)
        tar = TarShardDataset(paths, decode=label_of)
        tiny_samples(tar, "tiny tar samples (bench_peers 1b)", args.repeats)


if __name__ == "__main__":
    main()
