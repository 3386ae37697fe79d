"""ResumableDataLoader vs torch's DataLoader on an in-memory HF ``datasets.Dataset``.

Run: python benchmarks/bench_hf_datasets.py [--rows N] [--repeats R]

torch reads a dataset with ``__getitems__`` a batch at a time; so do we (each sample still
keyed). Two datasets: the plain rows (the fetch is all there is), and the same rows under a
``set_transform`` that adds per-row noise from torch's global RNG. The last column is our
loader reading one row at a time (``__getitem__``), as it did before batched reads. Each epoch
is timed from iter() to the last batch, alternating the loaders, best of R; a checksum of the
ids seen shows all did the work.
"""

from __future__ import annotations

import argparse
import time

import datasets
import torch
from torch.utils.data import DataLoader

from resumable_loader import ResumableDataLoader


def global_noise(batch: dict) -> dict:
    """Per-row noise from torch's global RNG, as most augmentation code draws it."""
    batch["x"] = [torch.tensor(x) + torch.rand(8, dtype=torch.float64) for x in batch["x"]]
    return batch


class OneAtATime(torch.utils.data.Dataset):
    """The dataset without ``__getitems__``: how we read it before batched reads."""

    def __init__(self, inner: datasets.Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        return self.inner[index]


def make(rows: int, transform: bool) -> datasets.Dataset:
    data = datasets.Dataset.from_dict(
        {"id": list(range(rows)), "x": [[float(i)] * 8 for i in range(rows)]}
    )
    if transform:
        data.set_transform(global_noise)
    else:
        data = data.with_format("torch")
    return data


def epoch_seconds(loader: DataLoader) -> tuple[float, int]:
    start = time.perf_counter()
    checksum = 0
    for batch in loader:
        checksum += int(torch.as_tensor(batch["id"]).sum())
    return time.perf_counter() - start, checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    print(f"{args.rows} rows, batch {args.batch_size}, best of {args.repeats}")
    print(
        f"{'dataset':<14}{'workers':>8}{'torch s':>10}{'ours s':>10}{'ours/torch':>12}"
        f"{'per-row s':>11}{'per-row/torch':>15}  checksum"
    )
    for transform in (False, True):
        data = make(args.rows, transform)
        for workers in (0, 2):
            common = dict(batch_size=args.batch_size, shuffle=True, num_workers=workers)
            loaders = {
                "torch": DataLoader(data, **common),
                "ours": ResumableDataLoader(data, seed=1, **common),
                "per-row": ResumableDataLoader(OneAtATime(data), seed=1, **common),
            }
            best = dict.fromkeys(loaders, float("inf"))
            sums = set()
            for _ in range(args.repeats):
                for name, loader in loaders.items():
                    seconds, checksum = epoch_seconds(loader)
                    best[name] = min(best[name], seconds)
                    sums.add(checksum)
            assert len(sums) == 1, "the loaders saw different ids"
            name = "set_transform" if transform else "plain"
            torch_s, ours_s, row_s = best["torch"], best["ours"], best["per-row"]
            print(
                f"{name:<14}{workers:>8}{torch_s:>10.3f}{ours_s:>10.3f}{ours_s / torch_s:>12.2f}"
                f"{row_s:>11.3f}{row_s / torch_s:>15.2f}  {sums.pop()}"
            )


if __name__ == "__main__":
    main()
