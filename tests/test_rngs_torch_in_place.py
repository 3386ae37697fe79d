"""torch's generator written in place: the state set_state would leave, under torch's mutex."""

from __future__ import annotations

import sys
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable_loader.order.philox import Purpose
from resumable_loader.rngs import process as global_rngs
from resumable_loader.rngs.process import GlobalRngs, reseed_sample

keys = st.tuples(*[st.integers(0, 2**32 - 1)] * 4)


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture
def both_ways(monkeypatch):
    """Two GlobalRngs: torch's state written in place, and through set_state."""
    in_place = GlobalRngs()
    monkeypatch.setattr(global_rngs, "_torch_fields_layout", lambda generator, buffer: None)
    through_set_state = GlobalRngs()
    assert not through_set_state._torch_in_place and not through_set_state._torch_by_api
    return in_place, through_set_state


@linux_only
def test_the_in_place_layout_is_found_here():
    assert GlobalRngs()._torch_in_place


@linux_only
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys)
def test_in_place_writes_what_set_state_leaves(both_ways, key):
    in_place, through_set_state = both_ways
    torch.randn(1)  # leaves a cached normal, which both must drop
    through_set_state.reseed(key)
    expected = torch.get_rng_state()
    draws = torch.rand(700), torch.randn(3)  # past a twist, and Gaussians
    torch.randn(1)
    in_place.reseed(key)
    assert torch.equal(torch.get_rng_state(), expected)
    again = torch.rand(700), torch.randn(3)
    assert all(torch.equal(a, b) for a, b in zip(again, draws, strict=True))


@linux_only
def test_save_and_restore_in_place_keep_cached_normals():
    rngs = GlobalRngs()
    assert rngs._torch_in_place
    torch.manual_seed(5)
    torch.randn(1)
    torch.randn(1, dtype=torch.float64)
    saved = rngs.save()
    expected = torch.get_rng_state(), torch.randn(1), torch.randn(1, dtype=torch.float64)
    rngs.save()
    rngs.restore(saved)
    assert torch.equal(torch.get_rng_state(), expected[0])
    assert torch.equal(torch.randn(1), expected[1])
    assert torch.equal(torch.randn(1, dtype=torch.float64), expected[2])
    rngs.reseed((1, 2, 3, 4))
    rngs.restore(saved)
    assert torch.equal(torch.get_rng_state(), expected[0])


@linux_only
def test_reseed_waits_for_a_torch_draw_in_another_thread():
    # torch draws without the GIL, under its generator's mutex: a reseed that ignored the mutex
    # would change the state in the middle of that draw (measured: it does, with another lock).
    assert global_rngs.this_process()._torch_in_place
    reseed_sample(1, 2, 3, Purpose.SAMPLE)
    after_reseed = torch.rand(4_000_000, dtype=torch.float64)
    torch.manual_seed(11)
    before_reseed = torch.rand(4_000_000, dtype=torch.float64)
    torch.manual_seed(11)
    drawn = []
    thread = threading.Thread(
        target=lambda: drawn.append(torch.rand(4_000_000, dtype=torch.float64))
    )
    thread.start()
    while thread.is_alive():
        reseed_sample(1, 2, 3, Purpose.SAMPLE)
    thread.join()
    # whole draws only: from the old state, or (if the thread began late) from the new one
    assert torch.equal(drawn[0], before_reseed) or torch.equal(drawn[0], after_reseed)
