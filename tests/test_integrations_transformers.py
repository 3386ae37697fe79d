"""transformers' Trainer on CPU: killed mid-epoch, resumed with resume_from_checkpoint.

Each run is tests/transformers_job.py in a subprocess, a ResumableTrainer checkpointing every
3 steps; the resumed runs change the batch size and the number of workers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="pip install -e '.[test-frameworks]' -c constraints.txt")
import torch
from integration_harness import assert_same_run, run_job, samples
from transformers import TrainingArguments
from transformers_job import EPOCHS, N

from resumable_loader import ConfigError, StateDictError
from resumable_loader.integrations.transformers import ResumableTrainer

JOB = Path(__file__).with_name("transformers_job.py")


def job(out: Path, *args: str, killed: bool = False, processes: int = 1) -> list[dict]:
    launcher = [sys.executable]
    if processes > 1:  # torchrun, as `accelerate launch` or a cluster would start the Trainer
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*launcher, str(JOB), str(out), *args]
    return run_job(command, out, killed=killed, cwd=JOB.parent)


@pytest.fixture(scope="module")
def continuous(tmp_path_factory) -> list[dict]:
    """The uninterrupted run: one process, 4 samples a step, 2 epochs."""
    steps = job(tmp_path_factory.mktemp("continuous") / "run", "--batch-size=4", "--workers=0")
    stream = [sample_id for _, sample_id, _ in samples(steps)]
    assert len(stream) == EPOCHS * N
    assert sorted(stream[:N]) == sorted(stream[N:]) == list(range(N))
    assert stream[:N] != stream[N:]
    return steps


@pytest.mark.slow
def test_killed_mid_epoch_resumes_exactly_with_other_workers_and_batch_size(tmp_path, continuous):
    head = job(tmp_path / "head", "--batch-size=4", "--workers=0", "--kill-at=5", killed=True)
    assert len(head) == 5
    checkpoint = tmp_path / "head" / "checkpoints" / "checkpoint-3"
    # the same batches from 2 workers: the same samples, augmentations and losses
    tail = job(tmp_path / "tail", "--batch-size=4", "--workers=2", f"--resume={checkpoint}")
    assert_same_run(head[:3] + tail, continuous)
    # twice the batch: the same samples and augmentations, to the last epoch's end (the
    # Trainer counted the epochs and steps left in the new batch size from the checkpoint's
    # step, and ended the run after the resumed epoch)
    wide = samples(
        job(tmp_path / "wide", "--batch-size=8", "--workers=1", f"--resume={checkpoint}")
    )
    assert samples(head[:3]) + wide == samples(continuous)


@pytest.mark.slow
def test_two_processes_killed_mid_epoch_resume_on_one(tmp_path, continuous):
    # 2 processes of 2 samples: the global batches of the single-process run of 4
    head = job(
        tmp_path / "head", "--batch-size=2", "--workers=0", "--kill-at=5", killed=True, processes=2
    )
    assert len(head) >= 3
    checkpoint = tmp_path / "head" / "checkpoints" / "checkpoint-3"
    tail = job(tmp_path / "tail", "--batch-size=4", "--workers=1", f"--resume={checkpoint}")
    assert_same_run(head[:3] + tail, continuous)


@pytest.mark.slow
def test_gradient_accumulation_resumed_mid_epoch_steps_on_the_same_micro_batches(tmp_path):
    """6 samples a micro-batch: 7 an epoch, the last of 4 samples; 2 a step: the epoch's last
    step has one. Resumed after step 3 (one micro-batch of the epoch left), that micro-batch
    was carried into the next epoch's first step (the Trainer waited for the whole epoch's
    count), and every later step shifted: the same micro-batches and losses now."""
    options = ["--batch-size=6", "--workers=0", "--accumulate=2"]
    continuous = job(tmp_path / "continuous", *options)
    assert len(continuous) == EPOCHS * 7
    head = job(tmp_path / "head", *options, "--kill-at=5", killed=True)
    checkpoint = tmp_path / "head" / "checkpoints" / "checkpoint-3"
    tail = job(tmp_path / "tail", *options, f"--resume={checkpoint}")
    assert_same_run(head[:6] + tail, continuous)


@pytest.mark.slow
def test_the_plain_trainer_over_a_keyed_dataset_resumes_its_augmentations(tmp_path):
    """The plain Trainer's own loader and skip-based resume, over a KeyedDataset with
    DatasetEpochCallback: resumed from its uninterrupted run's checkpoint-3 with 2 workers,
    the same samples, augmentations and losses as that run, across the epoch end. (A run
    killed after step 5 leaves the same checkpoint-3: the kills are the tests above's.)"""
    continuous = job(tmp_path / "continuous", "--plain", "--batch-size=4", "--workers=0")
    stream = [sample_id for _, sample_id, _ in samples(continuous)]
    assert sorted(stream[:N]) == sorted(stream[N:]) == list(range(N))
    epochs = [{i: d for _, i, d in samples(continuous)[e * N : (e + 1) * N]} for e in (0, 1)]
    assert all(epochs[0][i] != epochs[1][i] for i in range(N))  # the epoch is in every key
    checkpoint = tmp_path / "continuous" / "checkpoints" / "checkpoint-3"
    tail = job(
        tmp_path / "tail", "--plain", "--batch-size=4", "--workers=2", f"--resume={checkpoint}"
    )
    assert_same_run(continuous[:3] + tail, continuous)


def test_a_checkpoint_without_the_cursor_is_refused(tmp_path):
    trainer = ResumableTrainer(
        model=torch.nn.Linear(1, 1),
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
        train_dataset=list(range(4)),
    )
    trainer.resumed_from = str(tmp_path)
    with pytest.raises(StateDictError, match=r"cursor\.json is missing"):
        trainer.get_train_dataloader()


def test_resume_from_checkpoint_true_without_a_checkpoint_is_refused(tmp_path):
    """As the Trainer refuses it: a resume that finds nothing must not train from step 0."""
    trainer = ResumableTrainer(
        model=torch.nn.Linear(1, 1),
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
        train_dataset=list(range(4)),
    )
    with pytest.raises(StateDictError, match=r"No valid checkpoint found in output directory"):
        trainer.train(resume_from_checkpoint=True)


def test_resume_from_checkpoint_true_takes_the_newest_checkpoint_with_its_cursor(tmp_path):
    """A kill between the Trainer's checkpoint and the callback's cursor leaves the newest
    folder without one: True resumes the one before it (a folder named, as given, is refused)."""
    from resumable_loader.integrations.transformers import CURSOR_FILE, _last_with_cursor

    for step, cursor in ((3, True), (6, True), (9, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if cursor:
            (tmp_path / f"checkpoint-{step}" / CURSOR_FILE).write_text("{}")
    (tmp_path / "checkpoint-12.tmp").mkdir()  # not a checkpoint's name
    assert _last_with_cursor(str(tmp_path)) == str(tmp_path / "checkpoint-6")
    assert _last_with_cursor(str(tmp_path / "absent")) is None


def test_a_resume_with_accumulation_needs_a_trainer_that_runs_epochs(tmp_path, monkeypatch):
    """transformers 4 has no Trainer._run_epoch, through which the resumed epoch's length is
    passed on: a resume with gradient accumulation is refused there, not trained wrongly."""
    from transformers import Trainer

    trainer = ResumableTrainer(
        model=torch.nn.Linear(1, 1),
        args=TrainingArguments(
            output_dir=str(tmp_path), use_cpu=True, report_to="none", gradient_accumulation_steps=2
        ),
        train_dataset=list(range(4)),
    )
    monkeypatch.delattr(Trainer, "_run_epoch")
    with pytest.raises(ConfigError, match=r"needs transformers >= 5"):
        trainer.train(resume_from_checkpoint=str(tmp_path))


def test_a_sampling_strategy_the_loader_would_ignore_is_refused(tmp_path):
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        train_sampling_strategy="group_by_length",
    )
    trainer = ResumableTrainer(
        model=torch.nn.Linear(1, 1), args=arguments, train_dataset=list(range(4))
    )
    with pytest.raises(
        ConfigError, match=r"would ignore train_sampling_strategy='group_by_length'"
    ):
        trainer.get_train_dataloader()


def test_the_pass_after_an_epoch_has_the_next_epoch_s_batch_count(tmp_path):
    """A Packed dataset's pack count changes by epoch: at an epoch's end the next pass was
    counted with the finished epoch's length (the Trainer's accumulation windows follow it)."""
    from resumable_loader import Packed
    from resumable_loader.packing import collate_varlen

    class Chats(torch.utils.data.Dataset):
        lengths = tuple((7 * i) % 300 for i in range(120))

        def __len__(self):
            return len(self.lengths)

        def sample_lengths(self):
            return self.lengths

        def __getitem__(self, index):
            return {"input_ids": torch.arange(self.lengths[index])}

    trainer = ResumableTrainer(
        model=torch.nn.Linear(1, 1),
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
        train_dataset=Packed(Chats(), max_tokens=512, strategy="next_fit"),
        data_collator=collate_varlen,
    )
    trainer.get_train_dataloader()
    loader = trainer.cursor_saver.loader
    first = sum(1 for _ in loader)
    left = trainer._batches_left()  # at the end of epoch 0: the next pass is epoch 1
    second = sum(1 for _ in loader)
    assert first != second and left == second
