"""A Lightning training run on CPU for tests/test_integrations_lightning.py.

Run as ``python lightning_job.py OUT --devices D --batch-size B [--num-workers W] [--kill-at S]
[--resume CKPT] [--reload]``. The user code is what a Lightning user writes: ``seed_everything``,
a loader built in ``train_dataloader`` (no seed, rank or world size given),
``Trainer(strategy="ddp")`` with its defaults, so Lightning injects its DistributedSampler;
``ModelCheckpoint`` every 3 steps. Each rank appends one JSON line per training step to
``OUT/rank<r>.jsonl`` (epoch, global step, sample ids, digests of the augmentations, loss, the
loader's num_workers) and its pid to ``OUT/pids``; with ``--kill-at S`` every rank SIGKILLs
itself after step S, as a preempted job dies. ``--dropout`` puts ``Dropout(0.5)`` before the
layer (the training loop's own randomness); ``--rng-callback`` adds ``RNGStateCallback``, which
saves and restores it with the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from resume_harness import AugmentedDataset, digest

from resumable_loader import ResumableDataLoader
from resumable_loader.integrations.lightning import RNGStateCallback

N = 40
EPOCHS = 2
CHECKPOINT_EVERY = 3


class Regression(L.LightningModule):
    """A linear model on the augmented samples; logs what each step trained on."""

    def __init__(self, out: Path, batch_size: int, num_workers: int, dropout: float) -> None:
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(3, 1))
        self.out, self.batch_size, self.num_workers = out, batch_size, num_workers

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(
            AugmentedDataset(N),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        target = batch["id"].float().unsqueeze(1) / N
        loss = torch.nn.functional.mse_loss(self.layer(batch["aug"]), target)
        record = {
            "epoch": self.current_epoch,
            "step": self.global_step,
            "ids": batch["id"].tolist(),
            "digests": [digest(aug) for aug in batch["aug"]],
            "loss": loss.item(),
            "num_workers": self.trainer.train_dataloader.num_workers,  # the loader Lightning made
        }
        with open(self.out / f"rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class KillAt(L.Callback):
    """SIGKILL this process at the end of training step ``step`` (no cleanup, no final save)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> None:
    """Train (or resume) and record every step (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume")
    parser.add_argument("--reload", action="store_true")
    parser.add_argument("--dropout", action="store_true")
    parser.add_argument("--rng-callback", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with open(args.out / "pids", "a") as f:
        f.write(f"{os.getpid()}\n")
    L.seed_everything(7)
    callbacks: list[L.Callback] = [
        L.pytorch.callbacks.ModelCheckpoint(
            dirpath=args.out / "checkpoints",
            every_n_train_steps=CHECKPOINT_EVERY,
            save_top_k=-1,
            filename="{step}",
        )
    ]
    if args.kill_at is not None:
        callbacks.append(KillAt(args.kill_at))
    if args.rng_callback:
        callbacks.append(RNGStateCallback())
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=EPOCHS,
        callbacks=callbacks,
        reload_dataloaders_every_n_epochs=1 if args.reload else 0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Regression(args.out, args.batch_size, args.num_workers, 0.5 if args.dropout else 0.0)
    trainer.fit(model, ckpt_path=args.resume)


if __name__ == "__main__":
    main()
