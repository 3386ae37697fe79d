"""transformers' Trainer: train from a ResumableDataLoader, resume from its cursor, never skip.

The Trainer builds its own DataLoader and, on ``train(resume_from_checkpoint=...)``, skips the
batches it already trained on with accelerate's ``skip_first_batches``, which rebuilds a plain
DataLoader (another order, other augmentations). :class:`ResumableTrainerMixin` replaces both:
the training loader is a ResumableDataLoader, its cursor is written into every checkpoint
folder (``resumable_loader_cursor.json``) and loaded from the one resumed, and the Trainer's
data skipping is turned off, since the cursor already starts where the checkpoint was.

The plain ``Trainer`` keeps its own loader; give it a
:class:`~resumable_loader.loader.keyed_dataset.KeyedDataset` and :class:`DatasetEpochCallback`
and its skip-based resume replays the augmentations too (each sample keyed by seed, epoch, id).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from resumable_loader.errors import ConfigError, StateDictError
from resumable_loader.index.atomic import atomic_write
from resumable_loader.loader.dataloader import ResumableDataLoader

CURSOR_FILE = "resumable_loader_cursor.json"
logger = logging.getLogger("resumable_loader")


class EpochlessLoader:
    """The training loader as the Trainer sees it: ``iter`` and ``len``, no ``set_epoch``.

    The Trainer numbers epochs from its global step, in steps of the batch size the checkpoint
    was taken with; after a resume with another batch size its numbers are not the loader's, so
    they are not passed on: the loader starts each pass where the last one ended, the resumed
    epoch first.
    """

    def __init__(self, loader: ResumableDataLoader) -> None:
        self.loader = loader
        self.dataset = loader.dataset  # Trainer.num_examples reads it

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __repr__(self) -> str:
        return f"EpochlessLoader(loader={self.loader!r})"


class SaveCursor(TrainerCallback):
    """Writes the training loader's cursor into each checkpoint folder the Trainer saves."""

    def __init__(self) -> None:
        self.loader: ResumableDataLoader | None = None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.loader is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        with atomic_write(os.path.join(folder, CURSOR_FILE)) as f:
            f.write(json.dumps(self.loader.state_dict()).encode())


class DatasetEpochCallback(TrainerCallback):
    """Sets a KeyedDataset's epoch before the plain Trainer reads each epoch (the Trainer sets
    its sampler's epoch, and Accelerate's loader then skips the dataset's)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # state.epoch: k exactly at epoch k's start, k + a fraction when resumed inside it
        self.dataset.set_epoch(math.floor(state.epoch or 0))


class ResumableTrainerMixin:
    """Mix into a ``transformers.Trainer`` (before it) to train from a ResumableDataLoader.

    ``train(resume_from_checkpoint=...)`` (a folder, or True for the output directory's last
    checkpoint) then continues the sample stream exactly, with any
    ``per_device_train_batch_size``, ``dataloader_num_workers`` or number of processes.
    ``args.ignore_data_skip`` is set to True: skipping batches would skip them twice. Override
    :meth:`resumable_train_loader` to build the loader otherwise.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_saver = SaveCursor()
        self.add_callback(self.cursor_saver)
        self.resumed_from: str | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = _last_with_cursor(self.args.output_dir)
            if resume_from_checkpoint is None:  # as the Trainer says (a ValueError), not from 0
                raise StateDictError(
                    f"No valid checkpoint found in output directory ({self.args.output_dir}): "
                    "resume_from_checkpoint=True resumes its last checkpoint-N folder; give "
                    "a checkpoint folder, or train without resume_from_checkpoint"
                )
        self.resumed_from = resume_from_checkpoint or None
        if self.resumed_from and self.args.gradient_accumulation_steps > 1:
            _check_epoch_runner()
        self.args.ignore_data_skip = True  # the cursor resumes the data; skipping would repeat it
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _init_training_state(
        self,
        max_steps: int,
        num_update_steps_per_epoch: int,
        num_train_epochs: int,
        resume_from_checkpoint: str | None,
        trial: Any,
    ) -> tuple[int, int]:
        # The Trainer counts the epochs and steps a resume has left from the checkpoint's
        # global step, in steps of the batch size and process count it runs with now; after a
        # change of either its numbers are not the data's (resumed at step 3 of batches of 16,
        # with batches of 32: "epoch 1 of 2 done", and the run ended after the rest of epoch 0).
        # They are taken from the cursor instead: the epochs from the one it resumes in, and,
        # when training by epochs, the steps left from the batches the cursor has left.
        epochs_trained, steps_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        loader = self.cursor_saver.loader
        if resume_from_checkpoint is None or loader is None or loader.partition is None:
            return epochs_trained, steps_trained
        epoch, position = (loader.state_dict()[key] for key in ("epoch", "position"))
        upcoming = epoch + 1 if position >= loader.partition.length else epoch
        epochs = self.args.num_train_epochs
        if self.args.max_steps <= 0 and float(epochs).is_integer() and upcoming < epochs:
            accumulation = self.args.gradient_accumulation_steps
            left = -(-self._batches_left() // accumulation)  # the resumed pass's updates
            left += max(0, int(epochs) - upcoming - 1) * num_update_steps_per_epoch
            self.state.max_steps = self.state.global_step + left
        return upcoming, steps_trained

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        # The resumed epoch holds the batches the cursor left, and the Trainer (which skips
        # none, ignore_data_skip) counts them from 0: tell it how many there are, or it would
        # wait for the whole epoch's count before syncing the last, partial accumulation window
        # and carry its gradient into the next epoch's first optimizer step.
        left = self._batches_left()
        if left is not None and "steps_in_epoch" in kwargs and left != kwargs["steps_in_epoch"]:
            kwargs["steps_in_epoch"] = left
            accumulation = self.args.gradient_accumulation_steps
            kwargs["num_update_steps_per_epoch"] = -(-left // accumulation)
        return super()._run_epoch(*args, **kwargs)

    def _batches_left(self) -> int | None:
        """Batches the training loader's next pass yields (None: no loader, or no epoch
        length): those after the cursor in a resumed epoch, else the whole epoch's."""
        loader = self.cursor_saver.loader
        partition = None if loader is None else loader.partition
        if partition is None:
            return None
        position = loader.state_dict()["position"]
        if position >= partition.length:  # a pass of the next epoch, whose length len() has
            return len(loader)  # (a Packed dataset's pack count changes by epoch)
        return partition.num_batches(position)

    def resumable_train_loader(self, dataset: Any) -> ResumableDataLoader:
        """The training loader, from the TrainingArguments: shuffled, seeded by ``data_seed``
        (else ``seed``), split over the processes of the Trainer's process group.
        """
        args = self.args
        _check_sampling(args)
        workers = args.dataloader_num_workers
        return ResumableDataLoader(
            dataset,
            batch_size=args.train_batch_size,
            shuffle=True,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            drop_last=args.dataloader_drop_last,
            persistent_workers=args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
            seed=args.data_seed if args.data_seed is not None else args.seed,
        )

    def get_train_dataloader(self) -> EpochlessLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        loader = self.resumable_train_loader(self.train_dataset)
        if self.resumed_from is not None:
            path = os.path.join(self.resumed_from, CURSOR_FILE)
            if not os.path.exists(path):
                raise StateDictError(
                    f"{path} is missing: checkpoint {self.resumed_from} was not saved by a "
                    "ResumableTrainerMixin trainer, so where its data stream stopped is unknown; "
                    "resume from a checkpoint it saved, or train without resume_from_checkpoint"
                )
            with open(path) as f:
                loader.load_state_dict(json.load(f))
        self.cursor_saver.loader = loader
        return EpochlessLoader(loader)


def _last_with_cursor(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` folder of ``output_dir`` that has the cursor file: the
    Trainer writes a checkpoint before the callback writes its cursor, so a kill between the
    two leaves a newest folder without one, which a resume cannot use (it is logged)."""
    named = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    steps = sorted((int(m.group(1)), name) for name in names if (m := named.fullmatch(name)))
    for _, name in reversed(steps):
        folder = os.path.join(output_dir, name)
        if os.path.isfile(os.path.join(folder, CURSOR_FILE)):
            return folder
        if os.path.isdir(folder):
            logger.warning("%s has no %s (killed while saving?): not resumed", folder, CURSOR_FILE)
    return None


def _check_sampling(args: Any) -> None:
    """Refuse a sampling the loader would not follow: it shuffles with its own seeded order."""
    strategy = getattr(args, "train_sampling_strategy", "random")  # transformers >= 5
    if getattr(args, "group_by_length", False):  # transformers 4's name for it
        strategy = "group_by_length"
    if strategy != "random":
        raise ConfigError(
            f"ResumableTrainer shuffles with its own seeded order, and would ignore "
            f"train_sampling_strategy={strategy!r}: leave it 'random', or override "
            "resumable_train_loader() to build the loader you want (a ResumableDataLoader with "
            "shuffle=False for 'sequential', or your own length-grouped sampler)"
        )


def _check_epoch_runner() -> None:
    """Refuse a resume with gradient accumulation where the Trainer has no ``_run_epoch``
    (transformers 4), whose resumed epoch the mixin cannot tell its length: the last, partial
    accumulation window would be carried into the next epoch's first step."""
    if not hasattr(Trainer, "_run_epoch"):
        raise ConfigError(
            "ResumableTrainer resumed with gradient_accumulation_steps > 1 needs transformers "
            ">= 5 (its Trainer._run_epoch takes the resumed epoch's length); upgrade "
            "transformers, or resume with gradient_accumulation_steps=1"
        )


class ResumableTrainer(ResumableTrainerMixin, Trainer):
    """``transformers.Trainer`` with :class:`ResumableTrainerMixin`."""
