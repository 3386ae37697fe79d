"""The per-sample cost of on_sample_error="substitute" when no sample fails, against "raise".

Run: python benchmarks/bench_bad_samples.py [--samples N] [--repeats R] [--quick]

What the loader's fetch runs per batch (``KeyedFetch``: each sample's key installed, the
dataset read, the batch collated) over an in-memory dataset whose ``__getitem__`` costs almost
nothing, so the difference is the policy's own cost: an epoch check per batch and, per sample,
a set lookup and a ``try``. Both loops run alternately in one process, best of R (the floor of
each, what the code costs when the shared machine does not interfere), reseed_globals=False so
the per-sample reseed (2 us) does not hide it; the ids summed over the loaded batches are
printed as a checksum, equal for both.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from resumable_loader.loader.bad_samples import BadSamples
from resumable_loader.loader.keyed_fetch import BatchRef, KeyedFetch

BATCH = 64


class Ids:
    """sample i is i: a read that costs a list index."""

    def __init__(self, length: int) -> None:
        self.items = list(range(length))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> int:
        return self.items[index]


def epoch(fetch: KeyedFetch, length: int) -> tuple[float, int]:
    """(seconds, checksum) of one pass over ``length`` samples in batches of BATCH."""
    total = 0
    start = time.perf_counter()
    for first in range(0, length, BATCH):
        batch = fetch(BatchRef(seed=1, epoch=0, start=first, ids=list(range(first, first + BATCH))))
        total += batch[-1]
    return time.perf_counter() - start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=640_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="64,000 samples, 3 repeats")
    args = parser.parse_args()
    samples, repeats = (64_000, 3) if args.quick else (args.samples, args.repeats)
    dataset = Ids(samples)
    plain = KeyedFetch(dataset, lambda batch: batch, reseed_globals=False)
    guarded = KeyedFetch(dataset, lambda batch: batch, reseed_globals=False)
    with tempfile.TemporaryDirectory() as quarantine:
        guarded.bad_samples = BadSamples(
            max_bad_fraction=0.01, quarantine_dir=quarantine, rank=0, world_size=1, length=samples
        )
        best = {"raise": float("inf"), "substitute": float("inf")}
        sums = {}
        for _ in range(repeats):
            for name, fetch in (("raise", plain), ("substitute", guarded)):
                seconds, sums[name] = epoch(fetch, samples)
                best[name] = min(best[name], seconds)
    per = {name: seconds / samples * 1e9 for name, seconds in best.items()}
    print(f"# {samples:,} samples in batches of {BATCH}, best of {repeats}, nothing fails")
    print(f"{'on_sample_error':<20}{'ns/sample':>10}{'checksum':>16}")
    for name in best:
        print(f"{name:<20}{per[name]:>10.1f}{sums[name]:>16}")
    extra = per["substitute"] - per["raise"]
    print(f"\nsubstitute costs {extra:+.1f} ns a sample when no sample fails")


if __name__ == "__main__":
    main()
