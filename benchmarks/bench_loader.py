"""ResumableDataLoader vs torch's DataLoader, side by side: samples/s, ratio, reseed cost.

Run: python benchmarks/bench_loader.py [--samples N] [--repeats R]

Both loaders get the same map-style dataset, shuffle, batch size and workers; each epoch is
timed from iter() to the last batch (worker start-up included, as a training loop sees it),
alternating the two loaders, best of R. A checksum of the ids seen shows both did the work.
"""

from __future__ import annotations

import argparse
import random
import time
import timeit

import torch
from torch.utils.data import DataLoader, Dataset

from resumable_loader import ResumableDataLoader
from resumable_loader.order import Purpose
from resumable_loader.rngs.sample import install_key

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class LightAugment(Dataset):
    """3x64x64 uint8 images: random 56x56 crop, random flip, normalize (torchvision-style)."""

    def __init__(self, length: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(
            0, 256, (length, 3, 64, 64), dtype=torch.uint8, generator=generator
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        top, left = torch.randint(0, 9, (2,)).tolist()
        image = self.images[index, :, top : top + 56, left : left + 56].float() / 255
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return (image - MEAN) / STD, index


class Tiny(Dataset):
    """Returns its index: measures pure per-sample overhead."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, index


def epoch_rate(loader: DataLoader) -> tuple[float, int]:
    start = time.perf_counter()
    checksum = 0
    count = 0
    for _, ids in loader:
        checksum = (checksum * 31 + int(ids.sum())) % (1 << 61)
        count += len(ids)
    return count / (time.perf_counter() - start), checksum


def compare(dataset: Dataset, *, workers: int, batch_size: int, repeats: int) -> dict:
    """Best samples/s of each loader (alternating, best of ``repeats``) and our checksum."""
    kwargs = dict(batch_size=batch_size, shuffle=True, num_workers=workers)
    loaders = {
        "torch": DataLoader(dataset, **kwargs),
        "ours": ResumableDataLoader(dataset, seed=0, **kwargs),
        "ours, reseed off": ResumableDataLoader(dataset, seed=0, reseed_globals=False, **kwargs),
    }
    best = {name: 0.0 for name in loaders}
    checksum = 0
    for _ in range(repeats):
        for name, loader in loaders.items():
            rate, sums = epoch_rate(loader)
            best[name] = max(best[name], rate)
            checksum = sums if name == "ours" else checksum
    return {**best, "checksum": checksum}


def reseed_costs(calls: int = 20000) -> dict[str, float]:
    """Microseconds per call of each part of the per-sample reseed."""
    words = (0x12345678, 0x9ABCDEF0, 0x0FEDCBA9, 0x87654321)
    counter = iter(range(10**9))

    def full() -> None:
        install_key(7, 1, next(counter), Purpose.SAMPLE, reseed_globals=True)

    def key_only() -> None:
        install_key(7, 1, next(counter), Purpose.SAMPLE, reseed_globals=False)

    x128 = words[0] | words[1] << 32 | words[2] << 64 | words[3] << 96
    parts = {
        "install_key + reseed all three": full,
        "install_key, no reseed": key_only,
        "random.seed(128-bit)": lambda: random.seed(x128),
        "torch.default_generator.manual_seed": lambda: torch.default_generator.manual_seed(5),
        "torch.manual_seed (for reference)": lambda: torch.manual_seed(5),
    }
    return {
        name: min(timeit.repeat(fn, number=calls // 10 if "reference" in name else calls, repeat=3))
        / (calls // 10 if "reference" in name else calls)
        * 1e6
        for name, fn in parts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    print(f"# {args.samples} samples, batch {args.batch_size}, best of {args.repeats} epochs")
    print(
        f"{'dataset':<14}{'workers':>8}{'torch/s':>11}{'ours/s':>11}{'ratio':>7}"
        f"{'reseed off/s':>14}{'ratio':>7}  checksum"
    )
    datasets = (("light-augment", LightAugment(args.samples)), ("tiny", Tiny(args.samples * 5)))
    for name, dataset in datasets:
        for workers in (0, 2):
            rates = compare(
                dataset, workers=workers, batch_size=args.batch_size, repeats=args.repeats
            )
            torch_rate = rates["torch"]
            print(
                f"{name:<14}{workers:>8}{torch_rate:>11,.0f}{rates['ours']:>11,.0f}"
                f"{rates['ours'] / torch_rate:>7.3f}{rates['ours, reseed off']:>14,.0f}"
                f"{rates['ours, reseed off'] / torch_rate:>7.3f}  {rates['checksum']:x}"
            )
    print("\n# per-sample reseed cost (us per call)")
    for name, micros in reseed_costs().items():
        print(f"{name:<40}{micros:>8.2f}")


if __name__ == "__main__":
    main()
