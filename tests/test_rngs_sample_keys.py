"""Re-keying a fetch per sample: the inlined one-call reseed equals reseed_sample, fallbacks too."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from resumable_loader.errors import ResumableLoaderError
from resumable_loader.order.philox import Purpose
from resumable_loader.rngs import process
from resumable_loader.rngs import sample as keys
from resumable_loader.rngs.process import ALL, reseed_sample


def states() -> tuple:
    """Every state the reseed writes, compared whole (torch's as its bytes)."""
    return random.getstate(), repr(np.random.get_state()), torch.get_rng_state().tolist()


def reference(position: int, generators: int = ALL) -> tuple:
    """The states reseed_sample writes for position ``position`` of seed 7, epoch 1; the
    generators are then left in states no reseed writes, so that a missed reseed shows."""
    reseed_sample(7, 1, position, Purpose.SAMPLE, generators)
    written = states()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    return written


@pytest.fixture(autouse=True)
def fetch():
    """Leave no key installed and no batched read in progress behind."""
    yield
    keys.clear_key()
    keys.batch_positions = None


@pytest.mark.parametrize("position", [9, np.int64(9)])  # numpy's: the fallback's validation
def test_install_sample_key_reseeds_as_reseed_sample(position):
    expected = reference(9)
    keys.install_key(7, 1, 5, Purpose.BATCH, reseed_globals=True)
    keys.install_sample_key(position)
    assert states() == expected
    key = keys.sample_key()
    assert (key.seed, key.epoch, key.position, key.purpose) == (7, 1, 9, Purpose.SAMPLE)


def test_enter_samples_then_install_sample_key_is_install_key():
    expected = reference(3, 1 << process.NUMPY)
    keys.enter_samples(7, 1, reseed_globals=1 << process.NUMPY)
    keys.install_sample_key(3)
    assert states()[1] == expected[1]
    assert keys.sample_place() == (7, 1, 3)


@pytest.mark.parametrize("positions", [[4, 11], [np.int64(4), np.int64(11)]])
def test_install_batch_sample_key_reseeds_each_position(positions):
    expected = reference(11)
    keys.install_key(7, 1, 4, Purpose.SAMPLE, reseed_globals=True)
    keys.batch_positions = positions
    keys.install_batch_sample_key(1)
    assert states() == expected
    assert keys.sample_place() == (7, 1, 11)


def test_without_the_one_call_reseed_the_api_path_writes_the_same(monkeypatch):
    expected = reference(9)
    monkeypatch.setattr(process, "_reseeder", None)
    keys.install_key(7, 1, 5, Purpose.SAMPLE, reseed_globals=False)
    keys.enter_samples(7, 1, reseed_globals=True)
    monkeypatch.setattr(process, "_bound", None)  # rebinds: every layout checked again
    keys.install_sample_key(9)
    assert states() == expected


def test_reseed_off_leaves_the_generators_alone():
    random.seed(5)
    before = states()
    keys.enter_samples(7, 1, reseed_globals=False)
    keys.install_sample_key(9)
    assert states() == before
    assert keys.sample_key().position == 9


def test_outside_a_fetch_sample_key_and_install_sample_key_raise():
    keys.clear_key()
    with pytest.raises(ResumableLoaderError, match="sample_key"):
        keys.sample_key()
    with pytest.raises(ResumableLoaderError, match="install_sample_key"):
        keys.install_sample_key(3)
