"""An Accelerate training run on CPU for tests/test_integrations_accelerate.py.

Run under ``accelerate launch`` as ``accelerate_job.py OUT --batch-size B [--num-workers W]
[--kill-at S] [--resume DIR]``. The loader is built after ``Accelerator()`` with no seed, rank
or world size, goes through ``prepare_loader`` (model and optimizer through
``accelerator.prepare``), and ``accelerator.save_state`` runs every 3 steps into
``OUT/checkpoints/step<k>``. Each process appends one JSON line per step to
``OUT/rank<r>.jsonl`` (epoch, step, sample ids, digests of the augmentations, loss,
num_workers); with ``--kill-at S`` every process SIGKILLs itself after step S.

With ``--standard`` the job takes Accelerate's own path instead: ``accelerator.prepare(model,
optimizer, loader)`` with ``use_stateful_dataloader=True``, the epoch from the saved step count
and ``set_epoch`` on the prepared loader (the conditions the loader's ResumeWarning names, so
the job silences it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from resume_harness import AugmentedDataset, digest

from resumable_loader import ResumableDataLoader, ResumeWarning
from resumable_loader.integrations.accelerate import prepare_loader

N = 40
EPOCHS = 2
CHECKPOINT_EVERY = 3


class Progress:
    """The step counter, saved beside the loader's cursor by ``save_state``."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = state["step"]


def main(argv: Sequence[str] | None = None) -> None:
    """Train (or resume) and record every step (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume")
    parser.add_argument("--standard", action="store_true", help="accelerator.prepare(loader)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial weights on every process and run
    config = DataLoaderConfiguration(use_stateful_dataloader=args.standard)
    accelerator = Accelerator(cpu=True, dataloader_config=config)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = ResumableDataLoader(
        AugmentedDataset(N), batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers
    )
    if args.standard:
        warnings.simplefilter("ignore", ResumeWarning)  # its conditions are met, see above
        model, optimizer, batches = accelerator.prepare(model, optimizer, loader)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
        batches = prepare_loader(accelerator, loader)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    if args.resume is not None:
        accelerator.load_state(args.resume)
    if args.standard:  # Accelerate saves no epoch: count it from the steps, as its examples do
        first_epoch = progress.step // len(batches)
    else:
        state = loader.state_dict()
        first_epoch = state["epoch"] + (state["position"] == state["fingerprint"]["length"])
    records = args.out / f"rank{accelerator.process_index}.jsonl"
    for epoch in range(first_epoch, EPOCHS):
        (batches if args.standard else loader).set_epoch(epoch)
        for batch in batches:
            target = batch["id"].float().unsqueeze(1) / N
            loss = torch.nn.functional.mse_loss(model(batch["aug"]), target)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            record = {
                "epoch": epoch,
                "step": progress.step,
                "ids": batch["id"].tolist(),
                "digests": [digest(aug) for aug in batch["aug"]],
                "loss": loss.item(),
                "num_workers": loader.num_workers,
            }
            with open(records, "a") as f:
                f.write(json.dumps(record) + "\n")
            progress.step += 1
            if progress.step % CHECKPOINT_EVERY == 0:
                accelerator.save_state(str(args.out / "checkpoints" / f"step{progress.step}"))
            if progress.step == args.kill_at:
                accelerator.wait_for_everyone()  # the checkpoint before is complete
                os.kill(os.getpid(), signal.SIGKILL)
    accelerator.end_training()
    # Exit before the DDP model is freed: torch 2.13 then destroys its gloo process group with
    # the GIL held, which can deadlock with gloo's thread releasing the last allreduce (seen:
    # rank 0 hung there after training, every record written).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
