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

from resumable_loader import Permutation, Purpose, derive_words

CHUNK = 65536


def best_rate(make, n: int, repeats: int) -> tuple[float, int]:
    best, checksum = 0.0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        ids = make()
        best = max(best, n / (time.perf_counter() - start))
        checksum = int(np.asarray(ids[:: max(1, n // 4096)], dtype=np.int64).sum())
    return best, checksum


def chunked_fill(permutation: Permutation, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        out[start:stop] = permutation.fill(start, stop)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10**7)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.n
    permutation = Permutation(n, seed=1, epoch=0)
    rng = np.random.default_rng(0)
    engines = {
        "resumable_loader Permutation.fill": lambda: permutation.fill(0, n),
        # how the loader reads an order: chunk by chunk, one thread each (copied into one array,
        # so the checksum must equal the whole fill's)
        "  same, in 65,536-id chunks": lambda: chunked_fill(permutation, n),
        "numpy default_rng().permutation": lambda: rng.permutation(n),
        "torch.randperm": lambda: torch.randperm(n),
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
