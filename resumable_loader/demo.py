"""The demo: a training-like loop run continuously, then interrupted and resumed elsewhere.

It writes small WebDataset tar shards of random images, reads them with random augmentations
(crop, flip, noise from torch, numpy and random), runs two epochs continuously, then runs the
same job interrupted mid-epoch and resumed from the saved cursor with another worker count and
batch size, and prints whether the two streams (sample ids and augmented tensors) match.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch

from resumable_loader.loader.dataloader import ResumableDataLoader
from resumable_loader.sources.webdataset import TarShardDataset

IMAGE_SHAPE = (3, 32, 32)


def write_shards(directory: Path, *, shards: int, per_shard: int) -> list[str]:
    """Write ``shards`` tar files of ``per_shard`` samples (``.rgb`` raw bytes, ``.cls``)."""
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        path = directory / f"demo-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"sample{s * per_shard + i:08d}"
                image = rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8).tobytes()
                for ext, payload in (("rgb", image), ("cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(str(path))
    return paths


def augment(rgb: bytes, *, noise: float = 0.01) -> torch.Tensor:
    """Decode a raw 3x32x32 image; random crop (torch), flip (random), noise (numpy).

    Draws from all three global generators on purpose, as unmodified augmentation code does.
    """
    image = torch.frombuffer(bytearray(rgb), dtype=torch.uint8).view(IMAGE_SHAPE).float() / 255
    top, left = torch.randint(0, 5, (2,)).tolist()
    image = image[:, top : top + 28, left : left + 28]
    if random.random() < 0.5:
        image = image.flip(-1)
    return image + torch.from_numpy(np.random.normal(0, noise, image.shape)).float()


class Augmented(torch.utils.data.Dataset):
    """Decodes and augments a tar sample, as a training pipeline would.

    Its ``fingerprint`` (the shards' plus this class's name) is the identity the loader records
    in its cursor, so a saved state is refused by other data; a dataset of yours should carry
    one the same way (docs/design.md).
    """

    def __init__(self, shards: TarShardDataset) -> None:
        self.shards = shards
        self.fingerprint = f"{type(self).__qualname__}:{shards.fingerprint}"

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.shards[index]
        return {"id": index, "image": augment(sample["rgb"]), "label": int(sample["cls"])}


class StreamDigest:
    """Accumulates the ids and a hash of the augmented tensors, batch by batch."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.augmentations: list[str] = []

    def add(self, batch: dict[str, Any]) -> None:
        self.ids.extend(batch["id"].tolist())
        for image in batch["image"]:
            self.augmentations.append(hashlib.blake2b(image.numpy().tobytes()).hexdigest())

    def extend(self, other: StreamDigest) -> None:
        self.ids.extend(other.ids)
        self.augmentations.extend(other.augmentations)


def run_demo(*, shards: int = 8, per_shard: int = 96, epochs: int = 2, stop_step: int = 17) -> bool:
    """Run the demo and print its table; returns whether the streams matched."""
    with tempfile.TemporaryDirectory(prefix="resumable-loader-demo-") as tmp:
        dataset = Augmented(
            TarShardDataset(write_shards(Path(tmp), shards=shards, per_shard=per_shard))
        )

        def loader(workers: int, batch_size: int) -> ResumableDataLoader:
            return ResumableDataLoader(
                dataset, batch_size=batch_size, shuffle=True, seed=2026, num_workers=workers
            )

        continuous, uninterrupted = StreamDigest(), loader(2, 32)
        for _ in range(epochs):
            for batch in uninterrupted:
                continuous.add(batch)

        head, first, step = StreamDigest(), loader(2, 32), 0
        for _ in range(epochs):
            for batch in first:
                head.add(batch)
                step += 1
                if step == stop_step:
                    break
            if step == stop_step:
                break
        saved = msgpack.packb(first.state_dict())
        del first  # the "crash"

        started = time.perf_counter()
        resumed = loader(1, 24)
        state = msgpack.unpackb(saved)
        resumed.load_state_dict(state)
        tail, first_batch_seconds = StreamDigest(), None
        finished = state["position"] == state["fingerprint"]["length"]
        for _ in range(epochs - state["epoch"] - finished):
            for batch in resumed:
                if first_batch_seconds is None:
                    first_batch_seconds = time.perf_counter() - started
                tail.add(batch)
        combined = StreamDigest()
        combined.extend(head)
        combined.extend(tail)

        ids_match = combined.ids == continuous.ids
        augs_match = combined.augmentations == continuous.augmentations
        rows = [
            ("continuous", "2", "32", len(continuous.ids), ""),
            (
                "interrupted",
                "2",
                "32",
                len(head.ids),
                f"stopped at step {stop_step} (epoch {state['epoch']}, position "
                f"{state['position']}); cursor = {len(saved)} bytes of msgpack",
            ),
            (
                "resumed",
                "1",
                "24",
                len(tail.ids),
                f"first batch {first_batch_seconds * 1000:.0f} ms after the restart",
            ),
        ]
        print(
            f"resumable_loader demo: {shards} tar shards x {per_shard} samples, {epochs} "
            f"epochs, shuffle=True, random crop/flip/noise from torch, numpy and random\n"
        )
        print(f"{'run':<13}{'workers':>8}{'batch':>7}{'samples':>9}  note")
        for name, workers, batch_size, samples, note in rows:
            print(f"{name:<13}{workers:>8}{batch_size:>7}{samples:>9}  {note}")
        print(
            f"\nsample ids match:       {'yes' if ids_match else 'NO'} "
            f"({len(combined.ids)} vs {len(continuous.ids)} samples)"
        )
        print(
            f"augmentations match:    {'yes' if augs_match else 'NO'} "
            "(hash of every augmented tensor, bit for bit)"
        )
        return ids_match and augs_match
