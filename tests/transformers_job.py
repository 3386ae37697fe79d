"""A transformers Trainer run on CPU for tests/test_integrations_transformers.py.

Run as ``python transformers_job.py OUT --batch-size B --workers W [--kill-at S] [--resume
DIR] [--accumulate K]``: a ResumableTrainer over a tiny regression model, checkpointing every 3
steps into ``OUT/checkpoints``. The model appends one JSON line per training step (a forward
pass: a micro-batch under gradient accumulation) to ``OUT/rank0.jsonl`` (epoch, sample ids,
digests of the augmentations, loss); with ``--kill-at S`` the process SIGKILLs itself after
step S. With ``--plain`` the job is the plain ``Trainer`` (its own loader,
its skip-based resume) over a ``KeyedDataset`` with ``DatasetEpochCallback``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import torch
from resume_harness import AugmentedDataset, digest
from transformers import Trainer, TrainerCallback, TrainingArguments

from resumable_loader.integrations.transformers import DatasetEpochCallback, ResumableTrainer
from resumable_loader.loader.keyed_dataset import KeyedDataset

N = 40
EPOCHS = 2
CHECKPOINT_EVERY = 3


class Regression(torch.nn.Module):
    """A linear model on the augmented samples; records what each training step saw."""

    def __init__(self, records: Path) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.records = records

    def forward(self, id: torch.Tensor, aug: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = torch.nn.functional.mse_loss(self.layer(aug), id.float().unsqueeze(1) / N)
        if self.training:
            record = {
                "epoch": -1,  # the Trainer's epochs count its steps; the stream is what counts
                "ids": id.tolist(),
                "digests": [digest(a) for a in aug],
                "loss": loss.item(),
            }
            with open(self.records, "a") as f:
                f.write(json.dumps(record) + "\n")
        return {"loss": loss}


class KillAt(TrainerCallback):
    """SIGKILL this process at the end of training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> None:
    """Train (or resume) and record every step (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume")
    parser.add_argument("--plain", action="store_true", help="the plain Trainer")
    parser.add_argument("--accumulate", type=int, default=1, help="gradient_accumulation_steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial weights in every run
    training = TrainingArguments(
        output_dir=str(args.out / "checkpoints"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulate,
        dataloader_num_workers=args.workers,
        num_train_epochs=EPOCHS,
        save_strategy="steps",
        save_steps=CHECKPOINT_EVERY,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        learning_rate=0.1,
        lr_scheduler_type="constant",
        optim="sgd",
        seed=7,
        disable_tqdm=True,
    )
    callbacks = [KillAt(args.kill_at)] if args.kill_at is not None else []
    dataset = AugmentedDataset(N)
    if args.plain:
        dataset = KeyedDataset(dataset, seed=7)
        callbacks.append(DatasetEpochCallback(dataset))
    trainer = (Trainer if args.plain else ResumableTrainer)(
        model=Regression(args.out / f"rank{os.environ.get('RANK', '0')}.jsonl"),
        args=training,
        train_dataset=dataset,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=args.resume)


if __name__ == "__main__":
    main()
