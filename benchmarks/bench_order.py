"""The permutation engine in ids/s against numpy's permutation and torch.randperm.

Run: python benchmarks/bench_order.py [--n N] [--repeats R]

Each engine produces a whole epoch's order of n ids, best of R; a checksum of the ids shows the
work was done. Also the cost of one per-sample key derivation and one random-access lookup.
"""

from __future__ import annotations

import argparse
import time
import timeit

import numpy as np
import torch

from resumable_loader.order import Permutation, Purpose, ShuffledOrder, derive_words

CHUNK = 65536


def best_rate(make, n: int, repeats: int) -> tuple[float, int]:
    """Best rate of make(step), which returns ids[::step] of the epoch it computes."""
    best, checksum, step = 0.0, 0, max(1, n // 4096)
    for _ in range(repeats):
        start = time.perf_counter()
        sample = make(step)
        best = max(best, n / (time.perf_counter() - start))
        checksum = int(np.asarray(sample, dtype=np.int64).sum())
    return best, checksum


def iterated(order: ShuffledOrder, n: int, step: int) -> np.ndarray:
    """The epoch as the loader reads it: ShuffledOrder.iter_ids chunks, each used and dropped."""
    picked, chunks = [], order.iter_ids(0, chunk_size=CHUNK)
    for start, chunk in zip(range(0, n, CHUNK), chunks, strict=True):
        # the ids at multiples of step; copied, so that the chunk itself is dropped
        picked.append(chunk[(-start) % step :: step].copy())
    return np.concatenate(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10**7)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.n
    permutation = Permutation(n, seed=1, epoch=0)
    order = ShuffledOrder(n, seed=1)
    rng = np.random.default_rng(0)
    engines = {
        "resumable_loader Permutation.fill": lambda step: permutation.fill(0, n)[::step],
        # how the loader reads an order: 65,536-id chunks, one thread (same ids, same checksum)
        "  same, via ShuffledOrder.iter_ids": lambda step: iterated(order, n, step),
        "numpy default_rng().permutation": lambda step: rng.permutation(n)[::step],
        "torch.randperm": lambda step: torch.randperm(n)[::step],
    }
    rates = {name: best_rate(make, n, args.repeats) for name, make in engines.items()}
    numpy_rate = rates["numpy default_rng().permutation"][0]
    print(f"# {n:,} ids per epoch, best of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"{'engine':<36}{'M ids/s':>10}{'vs numpy':>10}  checksum")
    for name, (rate, checksum) in rates.items():
        print(f"{name:<36}{rate / 1e6:>10.1f}{rate / numpy_rate:>10.2f}  {checksum:x}")
    calls = 200_000
    lookup = min(timeit.repeat(lambda: permutation[123_457], number=calls, repeat=3)) / calls
    derive = (
        min(timeit.repeat(lambda: derive_words(1, 2, 3, Purpose.SAMPLE), number=calls, repeat=3))
        / calls
    )
    print(f"\none Permutation[p] lookup from Python: {lookup * 1e9:.0f} ns")
    print(f"one derive_words(seed, epoch, position, purpose) from Python: {derive * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
