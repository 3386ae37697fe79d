"""The loader between epochs: a failed iter() skips no epoch, and len() counts the next one."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, RandomSampler

from resumable_loader import DataLoader, Packed, WorkerError
from resumable_loader.packing import collate_varlen

N = 24


class Ids(Dataset):
    """Sample i is i."""

    fingerprint = "epoch-edges-ids"

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> int:
        return index


def shuffled(**workers: Any) -> DataLoader:
    return DataLoader(Ids(), batch_size=4, shuffle=True, seed=1, **workers)


def sampled(**workers: Any) -> DataLoader:
    """The stream of a user's RandomSampler, drawn from its generator when the epoch begins."""
    sampler = RandomSampler(range(N), generator=torch.Generator().manual_seed(5))
    return DataLoader(Ids(), batch_size=4, sampler=sampler, **workers)


def epoch_ids(loader: DataLoader) -> list[int]:
    return [i for batch in loader for i in batch.tolist()]


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def kill_idle_worker(loader: DataLoader) -> None:
    """SIGKILL a persistent worker between epochs; wait until torch's SIGCHLD handler has
    raised its RuntimeError here (so it cannot surface later, elsewhere)."""
    pid = loader._iterator._workers[0].pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            time.sleep(0.02)
        except RuntimeError as error:  # torch's SIGCHLD handler: a worker died
            assert str(pid) in str(error)
            return
    assert not alive(pid)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("make", [shuffled, sampled], ids=["own_order", "user_sampler"])
def test_a_persistent_worker_killed_between_epochs_skips_no_epoch(
    make: Callable[..., DataLoader],
) -> None:
    continuous = make()
    expected = [epoch_ids(continuous) for _ in range(2)]
    # timeout: torch notices the dead worker after it (else after its 5 s status check)
    loader = make(num_workers=2, persistent_workers=True, timeout=1)
    assert epoch_ids(loader) == expected[0]
    before = loader.state_dict()
    kill_idle_worker(loader)
    with pytest.raises(WorkerError, match="restarted at the next iter"):
        iter(loader)
    assert loader.state_dict() == before
    assert epoch_ids(loader) == expected[1]
    assert loader.state_dict()["epoch"] == 1


class Chats(Dataset):
    """Conversations of 0-299 tokens, packed into 512-token packs."""

    fingerprint = "epoch-edges-chats"

    def __init__(self) -> None:
        self.lengths = np.random.default_rng(1).integers(0, 300, 120)

    def __len__(self) -> int:
        return len(self.lengths)

    def sample_lengths(self) -> np.ndarray:
        return self.lengths

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.arange(int(self.lengths[index]))}


def packed() -> DataLoader:
    dataset = Packed(Chats(), max_tokens=512, strategy="next_fit")
    return DataLoader(dataset, batch_size=1, shuffle=True, seed=2, collate_fn=collate_varlen)


def test_len_of_a_packed_loader_counts_the_epoch_the_next_iter_runs() -> None:
    loader = packed()
    announced, delivered = [], []
    for _ in range(4):
        announced.append(len(loader))
        delivered.append(0)
        for _batch in loader:
            delivered[-1] += 1
            assert len(loader) == announced[-1]  # within the epoch, also at its last batch
    assert len(set(delivered)) > 1  # the pack count does change by epoch
    assert announced == delivered


def test_len_of_a_packed_loader_after_loading_a_state() -> None:
    finished = packed()
    full = [sum(1 for _ in finished) for _ in range(2)]
    assert full[0] != full[1]
    end_of_epoch_0 = packed()
    iterator = iter(end_of_epoch_0)
    for _ in range(full[0]):
        next(iterator)
    resumed = packed()
    resumed.load_state_dict(end_of_epoch_0.state_dict())
    assert len(resumed) == full[1] == sum(1 for _ in resumed)
    middle_of_epoch_1 = packed()
    middle_of_epoch_1.load_state_dict(end_of_epoch_0.state_dict())
    next(iter(middle_of_epoch_1))
    resumed = packed()
    resumed.load_state_dict(middle_of_epoch_1.state_dict())
    assert len(resumed) == full[1]  # the whole epoch's, as torch counts a resumed one
    assert sum(1 for _ in resumed) == full[1] - 1


@pytest.mark.parametrize(
    "workers", [{}, {"num_workers": 2}, {"num_workers": 2, "persistent_workers": True}]
)
def test_set_epoch_after_iter_before_a_batch_runs_that_epoch(workers: dict) -> None:
    """Lightning, restarting, creates the epoch's iterator, then calls set_epoch(e), then
    iterates that iterator: it ran the epoch begun (a loaded state's unfinished one, or a
    fresh loader's epoch 0) while state_dict() said epoch e, so the resumed run trained
    other samples than the continuous one."""
    continuous = shuffled(**workers)
    epoch_ids(continuous)
    expected = epoch_ids(continuous)  # epoch 1
    interrupted = shuffled(**workers)
    iterator = iter(interrupted)
    next(iterator)
    state = interrupted.state_dict()  # mid-epoch 0: the rest of it is not wanted
    del iterator
    resumed = shuffled(**workers)
    resumed.load_state_dict(state)
    batches = iter(resumed)
    resumed.set_epoch(1)
    assert [i for batch in batches for i in batch.tolist()] == expected
    assert (resumed.state_dict()["epoch"], resumed.state_dict()["position"]) == (1, N)
    fresh = shuffled(**workers)
    batches = iter(fresh)  # fresh: epoch 0 begun
    fresh.set_epoch(1)
    assert [i for batch in batches for i in batch.tolist()] == expected
