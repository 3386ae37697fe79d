"""What torch's DataLoader users rely on: the training loop's RNG, typing, growing datasets,
the seed torch reports, reseed_globals on resume, and a warning for a worker that hangs."""

from __future__ import annotations

import gc
import logging
import random
import re
import time
import weakref

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, default_collate

import resumable_loader
from resumable_loader import ConfigError, ResumableDataLoader, StateDictError


class Numbers(Dataset):
    def __init__(self, n: int = 40) -> None:
        self.items = list(range(n))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"id": torch.tensor(self.items[index]), "noise": torch.rand(2)}


def _ids(batches) -> list[int]:
    return [int(i) for batch in batches for i in batch["id"]]


class TestTrainingLoopRng:
    """iter() must not draw from torch's global generator (torch's iterator does when its
    ``generator`` is None): a loop resumed with torch.set_rng_state() gets its own dropout masks."""

    @pytest.mark.parametrize(
        ("workers", "persistent"), [(0, False), (2, False), (2, True)], ids=["w0", "w2", "w2p"]
    )
    def test_iter_and_next_leave_the_global_generators_alone(self, workers, persistent):
        loader = ResumableDataLoader(
            Numbers(),
            batch_size=4,
            shuffle=True,
            seed=5,
            num_workers=workers,
            persistent_workers=persistent,
        )
        torch.manual_seed(123)
        random.seed(1)
        np.random.seed(2)
        before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
        for _ in range(2):  # two iter() calls: persistent workers are reused at the second
            iterator = iter(loader)
            next(iterator)
            assert torch.equal(torch.get_rng_state(), before[0])
            assert random.getstate() == before[1]
            assert np.array_equal(np.random.get_state()[1], before[2])
            del iterator

    @pytest.mark.slow
    def test_a_resumed_loop_draws_the_same_dropout_masks(self):
        def run(stop: int | None, state=None, rng=None):
            loader = ResumableDataLoader(Numbers(), batch_size=4, shuffle=True, seed=3)
            if state is not None:
                loader.load_state_dict(state)
                torch.set_rng_state(rng)
            else:
                torch.manual_seed(0)
            masks = []
            for step, batch in enumerate(loader):
                masks.append(torch.nn.functional.dropout(torch.ones(4), 0.5) * batch["id"])
                if stop is not None and step + 1 == stop:
                    return masks, loader.state_dict(), torch.get_rng_state()
            return masks, None, None

        continuous, _, _ = run(None)
        first, state, rng = run(3)
        rest, _, _ = run(None, state, rng)
        assert all(torch.equal(a, b) for a, b in zip(continuous, first + rest, strict=True))


class TestLifetime:
    def test_a_dropped_loader_is_freed_at_once_with_its_persistent_workers(self):
        loader = ResumableDataLoader(
            Numbers(), batch_size=4, shuffle=True, seed=1, num_workers=1, persistent_workers=True
        )
        next(iter(loader))
        alive = weakref.ref(loader)
        gc.disable()  # freed by reference counting, not by a later gc run (with workers alive)
        try:
            del loader
            assert alive() is None
        finally:
            gc.enable()


class TestTyping:
    def test_the_class_is_generic_like_torchs(self):
        alias = resumable_loader.DataLoader[torch.Tensor]
        assert alias.__origin__ is ResumableDataLoader


class TestGrowingDataset:
    def test_len_and_iteration_follow_a_dataset_grown_between_epochs(self):
        dataset = Numbers(10)
        loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=1)
        assert sorted(_ids(loader)) == list(range(10))
        dataset.items.extend(range(10, 16))
        assert len(loader) == 4
        assert sorted(_ids(loader)) == list(range(16))
        assert loader.state_dict()["fingerprint"]["length"] == 16

    def test_growth_in_the_middle_of_an_epoch_is_an_error_naming_both_lengths(self):
        dataset = Numbers(12)
        loader = ResumableDataLoader(dataset, batch_size=4, shuffle=False)
        iterator = iter(loader)
        next(iterator)
        dataset.items.append(12)
        with pytest.raises(ConfigError, match="changed from 12 to 13 samples in the middle"):
            iter(loader)


class SeedReporting(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"seed": torch.initial_seed()}


class TestSeedTorchSees:
    def test_initial_seed_fits_int64_so_default_collate_takes_it(self):
        loader = ResumableDataLoader(SeedReporting(), batch_size=8, shuffle=True, seed=2**64 - 1)
        seeds = torch.cat([batch["seed"] for batch in loader])
        assert seeds.dtype == torch.int64 and len(set(seeds.tolist())) == 64
        assert default_collate([{"seed": torch.initial_seed()}])["seed"].dtype == torch.int64


class TestReseedGlobalsOnResume:
    def test_a_changed_reseed_globals_is_refused_naming_the_field(self):
        saved = ResumableDataLoader(Numbers(), batch_size=4, seed=1).state_dict()
        other = ResumableDataLoader(Numbers(), batch_size=4, seed=1, reseed_globals=False)
        expected = "'fingerprint.reseed_globals': saved 1, current 0"
        with pytest.raises(StateDictError, match=re.escape(expected)):
            other.load_state_dict(saved)


class Hangs(Dataset):
    """Sample ``late`` takes ``delay`` seconds to load."""

    def __init__(self, delay: float, late: int = 5) -> None:
        self.delay, self.late = delay, late

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        if index == self.late:
            time.sleep(self.delay)
        return index


class TestStallWarning:
    @pytest.mark.slow
    @pytest.mark.parametrize(
        ("late", "first"),
        [(5, 4), (1, 0)],  # the first batch: sent by torch before the loader watches it
    )
    def test_a_batch_late_past_stall_warning_is_logged_naming_worker_positions_and_ids(
        self, caplog, late, first
    ):
        loader = ResumableDataLoader(
            Hangs(2.5, late), batch_size=2, num_workers=1, shuffle=False, stall_warning=0.5
        )
        with caplog.at_level(logging.WARNING, logger="resumable_loader"):
            assert [int(i) for batch in loader for i in batch] == list(range(8))
        stalls = [
            r.getMessage() for r in caplog.records if "no batch has arrived" in r.getMessage()
        ]
        assert stalls, caplog.text
        assert "worker 0" in stalls[0] and f"positions {first}..{first + 1}" in stalls[0]
        assert f"sample ids [{first}, {first + 1}]" in stalls[0]

    def test_no_warning_when_batches_arrive_in_time(self, caplog):
        loader = ResumableDataLoader(Hangs(0), batch_size=2, num_workers=1, stall_warning=5)
        with caplog.at_level(logging.WARNING, logger="resumable_loader"):
            list(loader)
        assert "no batch has arrived" not in caplog.text

    @pytest.mark.parametrize("bad", [-1, "5", float("nan")])
    def test_bad_stall_warning(self, bad):
        with pytest.raises(ConfigError, match="stall_warning"):
            ResumableDataLoader(Hangs(0), stall_warning=bad)
