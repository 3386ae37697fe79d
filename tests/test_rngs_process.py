"""The global generators' reseed: exact states, the public-API path equal, caches, independence."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from philox_reference import global_rng_state_words

from resumable_loader import ConfigError
from resumable_loader.order.philox import Purpose, derive_words
from resumable_loader.rngs import process as global_rngs
from resumable_loader.rngs.process import NUMPY, PYTHON, TORCH, GlobalRngs, reseed_sample

keys = st.tuples(*[st.integers(0, 2**32 - 1)] * 4)
places = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))


def states() -> tuple:
    """Every state the reseed writes, compared whole (torch's as its bytes)."""
    return random.getstate(), repr(np.random.get_state()), torch.get_rng_state().tolist()


def draws() -> tuple:
    """What augmentations would see: uniforms and Gaussians from all three generators."""
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(2).tolist(),
        np.random.normal(size=3).tolist(),
        torch.rand(2).tolist(),
        torch.randn(3).tolist(),
    )


@pytest.fixture
def by_api(monkeypatch):
    """A GlobalRngs whose layout checks all failed: every generator reseeded by its own API."""
    monkeypatch.setattr(global_rngs, "_python_layout", lambda instance: None)
    monkeypatch.setattr(global_rngs, "_numpy_layout", lambda state, bit_generator: None)
    monkeypatch.setattr(global_rngs, "_torch_layout_ok", lambda generator, buffer: False)
    return GlobalRngs()


def test_layouts_are_found_here():
    rngs = GlobalRngs()
    assert not (rngs._python_by_api or rngs._numpy_by_api or rngs._torch_by_api)


@settings(max_examples=30)
@given(keys)
def test_states_are_the_reference_ones(key):
    global_rngs.this_process().reseed(key)
    _, python, _ = random.getstate()
    assert list(python[:-1]) == global_rng_state_words(key, PYTHON).tolist()
    assert python[-1] == 0  # as if just twisted: the first draw reads word 0
    kind, numpy_words, pos, has_gauss, gauss = np.random.get_state()
    assert numpy_words.tolist() == global_rng_state_words(key, NUMPY).tolist()
    assert (kind, pos, has_gauss, gauss) == ("MT19937", 0, 0, 0.0)
    torch_words = np.frombuffer(torch.get_rng_state().numpy().tobytes(), "<u8", 624, 24)
    assert torch_words.tolist() == global_rng_state_words(key, TORCH).tolist()


@settings(max_examples=30)
@given(keys, st.sampled_from([PYTHON, NUMPY, TORCH]))
def test_the_state_word_kernels_agree(key, generator):
    # the AVX-512 kernel where the CPU has it, the portable one everywhere: the same words
    expected = global_rng_state_words(key, generator).tolist()
    assert global_rngs._core._mt19937_state_words_with("portable", key, generator) == expected
    try:
        words = global_rngs._core._mt19937_state_words_with("avx512", key, generator)
    except ValueError:
        return  # no AVX-512 here
    assert words == expected


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=keys)
def test_fast_path_draws_what_the_public_api_path_draws(by_api, key):
    global_rngs.this_process().reseed(key)
    fast = draws()
    by_api.reseed(key)
    assert draws()[:4] == fast[:4]  # random's and numpy's: the same state through their API
    # torch's API cannot set a state without its format: manual_seed of the 64-bit seed.
    mask = global_rngs._core.TORCH_SEED_MASK  # torch reports the seed as an int64
    assert torch.initial_seed() == global_rngs._core.global_rng_seed(key, TORCH) & mask


@settings(max_examples=30, deadline=None)
@given(places, st.sampled_from(list(Purpose)))
def test_the_one_call_per_sample_writes_what_reseed_of_the_derived_key_writes(place, purpose):
    rngs = global_rngs.this_process()
    assert global_rngs._reseeder is not None  # the layouts check out here: the one C++ call
    draws()  # leaves cached Gaussians, which both must drop
    reseed_sample(*place, purpose)
    one_call = states()
    draws()
    rngs.reseed(derive_words(*place, purpose))
    assert states() == one_call


def test_the_one_call_validates_what_is_not_a_plain_int():
    reseed_sample(np.int64(7), np.uint32(1), np.int64(5), Purpose.SAMPLE)
    expected = states()
    reseed_sample(7, 1, 5, Purpose.SAMPLE)
    assert states() == expected
    for bad in [(-1, 0, 0), (0, 2**32, 0), (0, 0, 2**64), (0.5, 0, 0)]:
        with pytest.raises(ConfigError):
            reseed_sample(*bad, Purpose.SAMPLE)


@pytest.mark.parametrize("fast", [True, False])
def test_reseed_drops_cached_gaussians(fast, by_api):
    rngs = GlobalRngs() if fast else by_api
    key = (1, 2, 3, 4)
    rngs.reseed(key)
    expected = draws()
    rngs.reseed((5, 6, 7, 8))
    draws()  # leaves a cached Gaussian in random, numpy and torch (odd counts drawn)
    rngs.reseed(key)
    assert draws() == expected


def test_the_three_generators_draw_unrelated_streams():
    global_rngs.this_process().reseed((9, 9, 9, 9))
    ours = random.random(), float(np.random.rand()), float(torch.rand((), dtype=torch.float64))
    assert len(set(ours)) == 3
    assert len({global_rngs._core.global_rng_seed((9, 9, 9, 9), g) for g in range(3)}) == 3


def test_torch_gets_all_64_bits_of_its_seed_and_reports_63():
    # torch.manual_seed keeps only the low 32 bits: seeds 1 and 2**32 + 1 give one stream.
    # Its state words come from all 64 bits; initial_seed() reports 63, to stay an int64.
    seeds = [global_rngs._core.global_rng_seed((0, 0, 0, i), TORCH) for i in range(1000)]
    assert max(seeds) >= 2**63
    global_rngs.this_process().reseed((0, 0, 0, 7))
    assert torch.initial_seed() == seeds[7] & (2**63 - 1)


@pytest.mark.parametrize("fast", [True, False])
def test_save_and_restore_put_every_state_back(fast, by_api):
    rngs = GlobalRngs() if fast else by_api
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.gauss(0, 1)
    np.random.normal()
    torch.randn(1)  # all three now hold a cached Gaussian
    saved = rngs.save()
    expected = draws()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.gauss(0, 1)
    np.random.normal()
    torch.randn(1)
    rngs.reseed((4, 3, 2, 1))
    draws()
    rngs.restore(saved)
    assert draws() == expected


def test_a_replaced_numpy_bit_generator_is_bound_again():
    original = np.random.get_bit_generator()
    try:
        np.random.set_bit_generator(np.random.MT19937(5))
        global_rngs.this_process().reseed((1, 1, 1, 1))
        assert np.random.get_state()[1].tolist() == global_rng_state_words((1,) * 4, NUMPY).tolist()
        np.random.set_bit_generator(np.random.MT19937(6))  # and noticed by the one-call reseed
        reseed_sample(2, 3, 4, Purpose.SAMPLE)
        key = derive_words(2, 3, 4, Purpose.SAMPLE)
        assert np.random.get_state()[1].tolist() == global_rng_state_words(key, NUMPY).tolist()
        np.random.set_bit_generator(np.random.PCG64(5))
        with pytest.raises(ConfigError, match=r"PCG64.*reseed_globals=False"):
            global_rngs.this_process()
    finally:
        np.random.set_bit_generator(original)


@pytest.mark.parametrize("one_call", [False, True])
def test_reseed_waits_for_a_numpy_draw_in_another_thread(one_call):
    # numpy draws large arrays without the GIL, under its bit generator's lock: a reseed that
    # ignored the lock would change the state in the middle of that draw.
    rngs = global_rngs.this_process()
    key = derive_words(1, 2, 3, Purpose.SAMPLE)
    reseed = (
        (lambda: reseed_sample(1, 2, 3, Purpose.SAMPLE)) if one_call else lambda: rngs.reseed(key)
    )
    reseed()
    after_reseed = np.random.random(3_000_000)
    np.random.seed(11)
    before_reseed = np.random.random(3_000_000)
    np.random.seed(11)
    drawn = []
    thread = threading.Thread(target=lambda: drawn.append(np.random.random(3_000_000)))
    thread.start()
    while thread.is_alive():
        reseed()
    thread.join()
    # whole draws only: from the old state, or (if the thread began late) from the new one
    assert np.array_equal(drawn[0], before_reseed) or np.array_equal(drawn[0], after_reseed)
