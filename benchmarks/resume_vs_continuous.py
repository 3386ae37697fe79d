"""Training loss, continuous vs interrupted-and-resumed, for our loader and its peers.

Run: python benchmarks/resume_vs_continuous.py [--quick] [--plot PATH]

A tiny CNN trains on CPU (one thread, deterministic algorithms, fixed init) over synthetic
3x32x32 tar shards whose __getitem__ augments with torch, numpy and random (crop, flip, noise),
with SGD + momentum and a per-step cosine schedule. Each loader trains continuously; at a
mid-epoch step the model, optimizer, scheduler and loader states go through torch.save, fresh
objects load them and train to the same total step count. Every resumed step's loss is compared
with the continuous run's loss at that step (bitwise: goal 0.0 for ours). The loss curves are
saved as a PNG.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import os
import sys
import tarfile
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from resumable_loader import ResumableDataLoader, TarShardDataset
from resumable_loader.demo import augment

SEED = 2026
DOCS = Path(__file__).resolve().parents[1] / "docs"
Batch = list[tuple[torch.Tensor, ...]]  # a step's (images, labels, ids) micro-batches


def write_shards(directory: Path, *, samples: int, shards: int) -> list[str]:
    """Tar shards of 3x32x32 uint8 images whose colour and noise depend on the label."""
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 216, (10, 3, 1, 1))
    paths = []
    for s in range(shards):
        path = directory / f"train-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s * samples // shards, (s + 1) * samples // shards):
                label = int(rng.integers(10))
                image = np.clip(palette[label] + rng.normal(0, 40, (3, 32, 32)), 0, 255)
                for ext, payload in (
                    ("rgb", image.astype(np.uint8).tobytes()),
                    ("cls", str(label).encode()),
                ):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(str(path))
    return paths


class Augmented(Dataset):
    """Decodes a sample; random 28x28 crop (torch), flip (random), noise (numpy); adds its id."""

    def __init__(self, shards: TarShardDataset) -> None:
        self.shards = shards
        self.fingerprint = f"{type(self).__qualname__}:{shards.fingerprint}"  # the cursor's

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        sample = self.shards[index]
        return augment(sample["rgb"], noise=0.05), int(sample["cls"]), index


class Trainer:
    """Model, optimizer and scheduler; ``step`` averages the gradient over micro-batches."""

    def __init__(self, total_steps: int) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(
            *_conv_block(3, 16), *_conv_block(16, 32), nn.Flatten(), nn.Linear(32 * 7 * 7, 10)
        )
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total_steps)
        self.parts = {"model": self.model, "optimizer": self.optimizer, "sched": self.scheduler}

    def step(self, parts: Batch) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for images, labels, _ids in parts:
            loss = F.cross_entropy(self.model(images), labels) / len(parts)
            loss.backward()
            total += loss.item()
        self.optimizer.step()
        self.scheduler.step()
        return total

    def save(self, loader_state: Any) -> bytes:
        """The checkpoint: every part's state_dict and the loader's, through torch.save."""
        buffer = io.BytesIO()
        states = {name: part.state_dict() for name, part in self.parts.items()}
        torch.save({**states, "loader": loader_state}, buffer)
        return buffer.getvalue()

    def load(self, checkpoint: bytes) -> Any:
        """Restore every part; return the loader's state."""
        states = torch.load(io.BytesIO(checkpoint), weights_only=True)
        for name, part in self.parts.items():
            part.load_state_dict(states[name])
        return states["loader"]

    def weights(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.model.parameters()])


def _conv_block(channels_in: int, channels_out: int) -> tuple[nn.Module, ...]:
    return (nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


class Step(NamedTuple):
    loss: float
    ids: list[int]
    images: bytes  # digest of the step's augmented images


def train(trainer: Trainer, batches: Iterator[Batch], steps: int) -> list[Step]:
    done = []
    for _ in range(steps):
        parts = next(batches)
        ids = [i for *_, part_ids in parts for i in part_ids.tolist()]
        images = hashlib.blake2b(b"".join(part[0].numpy().tobytes() for part in parts)).digest()
        done.append(Step(trainer.step(parts), ids, images))
    return done


def epochs(loader: DataLoader) -> Iterator[Batch]:
    """Endless steps from a loader whose every iter() begins its next epoch."""
    while True:
        for batch in loader:
            yield [tuple(batch)]


@dataclass
class Variant:
    """A loader set-up: how it starts (batches + a state getter) and how it resumes."""

    name: str
    how: str
    start: Callable[[], tuple[Iterator[Batch], Callable[[], Any]]]
    resume: Callable[[Any], Iterator[Batch]]


@dataclass
class Result:
    variant: Variant
    continuous: list[float]  # every step's loss
    resumed: list[float]  # the losses from step save_at on
    save_at: int
    weight_gap: float  # max |weight difference| at the end
    same: dict[str, int]  # resumed steps whose ids / images / loss equal the continuous run's

    @property
    def gaps(self) -> list[float]:
        tail = self.continuous[self.save_at :]
        return [abs(a - b) for a, b in zip(tail, self.resumed, strict=True)]


def compare(variant: Variant, total: int, save_at: int) -> Result:
    """Train continuously (checkpointing at ``save_at``), then resume fresh objects from it."""
    print(f"{variant.name}: {variant.how}", file=sys.stderr)
    reference = Trainer(total)
    batches, loader_state = variant.start()
    head = train(reference, batches, save_at)
    checkpoint = reference.save(loader_state())
    head += train(reference, batches, total - save_at)
    resumed = Trainer(total)
    tail = train(resumed, variant.resume(resumed.load(checkpoint)), total - save_at)
    pairs = list(zip(head[save_at:], tail, strict=True))
    same = {
        field: sum(getattr(a, field) == getattr(b, field) for a, b in pairs)
        for field in Step._fields
    }
    gap = float((resumed.weights() - reference.weights()).abs().max())
    return Result(variant, [s.loss for s in head], [s.loss for s in tail], save_at, gap, same)


def variants(dataset: Augmented, batch_size: int) -> tuple[list[Variant], str]:
    """Ours (two ways), torch's DataLoader resumed DIY, torchdata's StatefulDataLoader."""
    common = dict(batch_size=batch_size, shuffle=True)

    def ours() -> tuple[Iterator[Batch], Callable[[], Any]]:
        loader = ResumableDataLoader(dataset, num_workers=2, seed=SEED, **common)
        return epochs(loader), loader.state_dict

    def ranks(cursor: Any, concatenate: bool) -> Iterator[Batch]:
        """2 simulated ranks x 1 worker, half the batch each; step k uses their k-th batches."""
        per_rank = dict(batch_size=batch_size // 2, num_workers=1, seed=SEED, world_size=2)
        loaders = [ResumableDataLoader(dataset, shuffle=True, rank=r, **per_rank) for r in (0, 1)]
        for loader in loaders:
            loader.load_state_dict(cursor)
        while True:
            for pair in zip(*loaders, strict=True):
                if concatenate:
                    yield [tuple(torch.cat(parts) for parts in zip(*pair, strict=True))]
                else:
                    yield list(pair)

    def torch_epochs(first_epoch: int, at: list[int]) -> Iterator[Batch]:
        """DIY: a DataLoader per epoch, its shuffle seeded by the epoch; ``at`` tracks it."""
        for epoch in itertools.count(first_epoch):
            at[0] = epoch
            generator = torch.Generator().manual_seed(SEED + epoch)
            for batch in DataLoader(dataset, num_workers=2, generator=generator, **common):
                yield [tuple(batch)]

    def torch_start() -> tuple[Iterator[Batch], Callable[[], Any]]:
        at = [0]
        return torch_epochs(0, at), lambda: {"epoch": at[0]}

    ours_name = "ours: 2 workers -> 2 ranks x 1 worker"
    found = [
        Variant(ours_name, "cursor; ranks' batches concatenated", ours, lambda c: ranks(c, True)),
        Variant(ours_name, "cursor; gradient mean over ranks", ours, lambda c: ranks(c, False)),
        Variant(
            "torch DataLoader, 2 -> 2 workers",
            "weights only; epoch restarted",
            torch_start,
            lambda state: torch_epochs(state["epoch"], [0]),
        ),
    ]
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
    except ImportError:
        return found, "skipped: torchdata not installed"
    warnings.filterwarnings("ignore", message=".*set_vital.*")

    def stateful(workers: int) -> StatefulDataLoader:
        generator = torch.Generator().manual_seed(SEED)
        return StatefulDataLoader(dataset, num_workers=workers, generator=generator, **common)

    def stateful_start() -> tuple[Iterator[Batch], Callable[[], Any]]:
        loader = stateful(2)
        return epochs(loader), loader.state_dict

    def stateful_resume(state: Any, workers: int = 2) -> Iterator[Batch]:
        loader = stateful(workers)
        loader.load_state_dict(state)
        return epochs(loader)

    name = "StatefulDataLoader, 2 -> 2 workers"
    found.append(Variant(name, "its state_dict", stateful_start, stateful_resume))
    batches, state = stateful_start()
    next(batches)
    saved = state()
    batches.close()
    try:
        next(stateful_resume(saved, workers=1))
    except Exception as error:  # whatever it raises is the finding
        frame = traceback.extract_tb(error.__traceback__)[-1]
        return found, (
            f"2 -> 1 workers refused: {type(error).__name__}({str(error)!r}) at "
            f"{Path(frame.filename).name}:{frame.lineno}: {frame.line}"
        )
    return found, "2 -> 1 workers: resumed without error"


def plot(results: list[Result], path: Path) -> str:
    try:
        import matplotlib
    except ImportError:
        return "skipped: matplotlib not installed"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        2,
        len(results),
        figsize=(4.2 * len(results), 5.6),
        sharex=True,
        sharey="row",
        gridspec_kw={"height_ratios": [2, 1]},
        squeeze=False,
    )
    for (top, bottom), result in zip(axes.T, results, strict=True):
        resumed_steps = range(result.save_at, len(result.continuous))
        top.plot(range(len(result.continuous)), result.continuous, lw=1.2, label="continuous")
        top.plot(resumed_steps, result.resumed, "--", lw=1.2, label="resumed")
        bottom.plot(resumed_steps, result.gaps, ".-", lw=0.8, color="C3")
        bottom.set_yscale("symlog", linthresh=1e-8)
        for ax in (top, bottom):
            ax.axvline(result.save_at, color="grey", lw=0.8)
        top.set_title(
            f"{result.variant.name}\n{result.variant.how}\nmax |Δloss| = {fmt(max(result.gaps))}",
            fontsize=8,
        )
        bottom.set_xlabel("step")
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("|resumed - continuous|")
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return f"plot: {os.path.relpath(path)}"


def fmt(value: float) -> str:
    """0.0 printed as such (bitwise equal), anything else to 3 significant digits."""
    return "0.0" if value == 0 else f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3072)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resume-epoch", type=int, default=1, help="interrupt in this epoch")
    parser.add_argument("--quick", action="store_true", help="1024 samples, 2 epochs")
    parser.add_argument("--plot", type=Path, default=DOCS / "resume_vs_continuous.png")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.epochs = 1024, 2
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="resume-vs-continuous-") as tmp:
        dataset = Augmented(
            TarShardDataset(write_shards(Path(tmp), samples=args.samples, shards=8))
        )
        found, refusal = variants(dataset, args.batch_size)
        per_epoch = len(dataset) // args.batch_size
        save_at = int((args.resume_epoch + 0.4) * per_epoch)
        results = [compare(v, args.epochs * per_epoch, save_at) for v in found]
    print(
        f"# {args.samples} samples in 8 tar shards, batch {args.batch_size}, {args.epochs} "
        f"epochs, interrupted after step {save_at}; CPU, 1 thread, deterministic"
    )
    print(
        f"{'loader':<38}{'resumed with':<36}{'steps':>6}{'same ids':>9}{'same imgs':>10}"
        f"{'same loss':>10}{'max |Δloss|':>12}{'max |Δw| end':>13}"
    )
    for r in results:
        print(
            f"{r.variant.name:<38}{r.variant.how:<36}{len(r.resumed):>6}{r.same['ids']:>9}"
            f"{r.same['images']:>10}{r.same['loss']:>10}{fmt(max(r.gaps)):>12}"
            f"{fmt(r.weight_gap):>13}"
        )
    print(
        f"\nStatefulDataLoader, {refusal}\n\n"
        "same ids / imgs / loss: resumed steps whose sample ids, augmented images (bitwise) and "
        "loss (bitwise)\n  equal the continuous run's at the same step. ours, concatenated: the "
        "two ranks' k-th batches form\n  the global batch, run in one forward/backward, so any "
        "difference would be a data difference.\n  ours, gradient mean: one forward/backward per"
        " rank, gradients averaged as DDP does: the float\n  summation order differs, so tiny "
        "differences are expected.\n" + plot(results, args.plot)
    )


if __name__ == "__main__":
    main()
