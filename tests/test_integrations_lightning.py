"""Lightning on CPU: DDP with its defaults, killed mid-epoch, resumed through its own checkpoint.

Each run is tests/lightning_job.py in a subprocess (Lightning's DDP launcher starts the other
rank itself); the user code there passes the loader no seed, rank or world size, and the
Trainer keeps ``use_distributed_sampler=True``, so Lightning rebuilds the loader around its
own DistributedSampler.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="pip install -e '.[test-frameworks]' -c constraints.txt")
from integration_harness import (
    Run,
    assert_covers_epochs,
    assert_kill_and_resume,
    assert_resumes,
    assert_same_run,
    recorded,
    run_job,
)
from lightning_job import EPOCHS, N
from resume_harness import AugmentedDataset, run, split_batch
from torch.utils.data import DataLoader, DistributedSampler

from resumable_loader import ResumableDataLoader

JOB = Path(__file__).with_name("lightning_job.py")


def job(out: Path, *args: str, killed: bool = False) -> list[dict]:
    command = [sys.executable, str(JOB), str(out), *args]
    return run_job(command, out, killed=killed, cwd=JOB.parent)


@pytest.fixture(scope="module")
def continuous(tmp_path_factory) -> Run:
    """The uninterrupted run: DDP on 2 processes, 4 samples each per step, no workers,
    2 epochs; it saves a checkpoint every 3 steps as the killed runs do."""
    out = tmp_path_factory.mktemp("continuous") / "run"
    steps = job(out, "--devices=2", "--batch-size=4")
    assert len(steps) == EPOCHS * N // 8
    assert_covers_epochs(steps, N, EPOCHS)
    return Run(out, steps)


def ddp(out: Path, *args: str, **kwargs) -> list[dict]:
    return job(out, "--devices=2", "--batch-size=4", *args, **kwargs)


def one_process(out: Path, *args: str) -> list[dict]:
    """One process, twice the batch: the same global batches, so the same losses."""
    return job(out, "--devices=1", "--batch-size=8", *args)


@pytest.mark.slow
def test_ddp_killed_mid_epoch_resumes_on_one_process_with_another_batch_size(tmp_path, continuous):
    """Killed with 2 workers per process, resumed with 1."""
    assert_kill_and_resume(
        ddp,
        one_process,
        continuous.steps,
        tmp_path,
        checkpoint="step=3.ckpt",
        head_workers=2,
        tail_workers=1,
    )


@pytest.mark.slow
def test_ddp_without_workers_resumes_on_one_process_with_another_batch_size(tmp_path, continuous):
    """The continuous run's checkpoint of step 3 (no workers), resumed with none. A run
    killed after step 5 leaves the same file for step 3: the kill is the test above's."""
    assert_resumes(one_process, continuous, continuous.steps, tmp_path, "step=3.ckpt", 0)


@pytest.mark.slow
def test_reload_dataloaders_every_epoch_keeps_the_epoch_sequence(tmp_path, continuous):
    assert_same_run(ddp(tmp_path / "reloaded", "--reload"), continuous.steps)


@pytest.mark.slow
def test_dropout_resumes_exactly_with_the_rng_callback(tmp_path):
    """Dropout draws from the training loop's generators, which Lightning's checkpoint does not
    hold: with ``RNGStateCallback`` the resumed losses are the uninterrupted run's (one process,
    resumed from its checkpoint of step 3 with a worker). Without the callback the same runs
    differ from step 4 on (checked when this test was written; not rerun, to keep the suite
    short)."""
    flags = ("--devices=1", "--batch-size=8", "--dropout", "--rng-callback")
    out = tmp_path / "continuous"
    continuous = Run(out, job(out, *flags, "--num-workers=0"))
    assert recorded(out, "num_workers") == {0}
    assert_resumes(
        lambda out, *args: job(out, *flags, *args),
        continuous,
        continuous.steps,
        tmp_path,
        "step=3.ckpt",
        1,
    )


def our_stream(loader: ResumableDataLoader, epochs: int) -> list:
    return [(e, i, d) for e, i, d in run(loader, epochs)[0]]


def test_an_injected_distributed_sampler_gives_coordinates_shuffle_and_seed():
    dataset = AugmentedDataset(N)
    injected = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
    rebuilt = ResumableDataLoader(dataset, batch_size=2, sampler=injected, shuffle=False)
    assert (rebuilt.rank, rebuilt.world_size, rebuilt.seed) == (1, 2, 3)
    ours = ResumableDataLoader(dataset, batch_size=2, shuffle=True, seed=3, rank=1, world_size=2)
    assert our_stream(rebuilt, 2) == our_stream(ours, 2)
    assert rebuilt.sampler is injected  # what Lightning sees is what it made


@pytest.mark.parametrize("length", [11, 12, 13])
def test_an_injected_sampler_that_drops_last_drops_the_tail_as_torch_does(length: int):
    """DistributedSampler(drop_last=True): floor(N / W) samples a rank, none twice, in the
    batch sizes torch's DataLoader gives, and the tail's cut is part of the cursor's settings."""
    dataset = AugmentedDataset(length)
    streams, sizes = [], []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, seed=3, drop_last=True)
        torch_sizes = [len(b["id"]) for b in DataLoader(dataset, 2, sampler=sampler)]
        loader = ResumableDataLoader(dataset, batch_size=2, sampler=sampler, shuffle=False)
        batches = [b["id"].tolist() for b in loader]
        assert [len(b) for b in batches] == torch_sizes
        streams += [i for b in batches for i in b]
        sizes.append(torch_sizes)
    assert len(streams) == len(set(streams)) == 2 * (length // 2)
    padded = ResumableDataLoader(
        dataset, batch_size=2, shuffle=False, sampler=DistributedSampler(dataset, 2, 0, seed=3)
    )
    assert "trim" in loader.fingerprint() and "trim" not in padded.fingerprint()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shuffle": None},  # a user's own DistributedSampler, as torch's docs pass it
        {"shuffle": False, "other_dataset": True},
    ],
)
def test_other_distributed_samplers_stay_the_users(kwargs):
    dataset = AugmentedDataset(N)
    over = AugmentedDataset(N) if kwargs.get("other_dataset") else dataset
    sampler = DistributedSampler(over, num_replicas=2, rank=0, seed=3)
    loader = ResumableDataLoader(
        dataset, batch_size=2, sampler=sampler, shuffle=kwargs["shuffle"], seed=1, world_size=1
    )
    assert loader.order is None  # the user's sampler decides the order


def test_set_epoch_after_iter_is_taken_by_that_iteration():
    """Lightning's order: iter(), then set_epoch on the visible sampler, then the batches."""
    dataset = AugmentedDataset(N)
    loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=3)
    expected = our_stream(ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=3), 2)
    stream = []
    for epoch in range(2):
        batches = iter(loader)
        loader.sampler.set_epoch(epoch)
        for batch in batches:
            stream.extend((epoch, i, d) for i, d in split_batch(batch))
            if epoch == 0 and len(stream) == 12:
                assert loader.state_dict()["position"] == 12  # not "epoch 0 from the start"
    assert stream == expected
    reloaded = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=3)
    batches = iter(reloaded)  # a loader rebuilt for epoch 1: iter() then set_epoch(1)
    reloaded.sampler.set_epoch(1)
    assert list(split_batch(next(iter(reloaded)))) == [(i, d) for _, i, d in expected[N : N + 4]]
    del batches


# Lightning's own use of torch's pytree, deprecated in torch 2.13 (the jobs in subprocesses
# do not turn warnings into errors)
@pytest.mark.filterwarnings("ignore:`isinstance.treespec, LeafSpec.` is deprecated:FutureWarning")
def test_a_module_over_an_iterable_dataset_checkpoints_as_with_torchs_loader(tmp_path: Path):
    """Lightning saves the state of every Stateful loader: a loader over an IterableDataset
    has none (as torch's), so its checkpoints are written instead of the fit failing."""
    import lightning as L
    import torch
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            generator = torch.Generator().manual_seed(0)
            for _ in range(32):
                yield torch.randn(4, generator=generator), torch.randn(1, generator=generator)

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def train_dataloader(self):
            return ResumableDataLoader(Stream(), batch_size=8)

        def training_step(self, batch, index):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    every_two = L.pytorch.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[every_two],
        default_root_dir=tmp_path,
    )
    trainer.fit(Model())
    assert trainer.global_step == 4 and list(tmp_path.glob("*.ckpt"))
