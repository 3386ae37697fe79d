"""Flexible resumes through the Checkpointer continue the same sample stream (hypothesis).

A run trains some steps with one batch size and worker count, saves, and a fresh state loads
it in flexible mode with another batch size and worker count; the samples (ids, positions and
augmented inputs) trained on before and after, concatenated, are the one-process stream of the
seed, and the decision lists exactly the settings that changed.
"""

from __future__ import annotations

import tempfile

from checkpoint_job import Regression, batches, build, entries, train_step
from hypothesis import given, settings
from hypothesis import strategies as st

from resumable_loader import DataLoader
from resumable_loader.checkpoint import Checkpointer


def reference(samples: int) -> list:
    single = DataLoader(Regression(), batch_size=7, shuffle=True, seed=7)
    stream = []
    for batch in batches(single):
        stream += entries(batch)
        if len(stream) >= samples:
            return stream[:samples]
    raise AssertionError("unreachable")


@settings(max_examples=6, deadline=None)
@given(
    first=st.tuples(st.integers(1, 6), st.integers(0, 1)),
    second=st.tuples(st.integers(1, 6), st.integers(0, 1)),
    steps=st.integers(1, 12),
)
def test_flexible_resume_continues_the_stream(first, second, steps):
    (batch_size, workers), (new_batch_size, new_workers) = first, second
    state = build(batch_size, workers)
    trained = []
    stream = batches(state["loader"])
    for _ in range(steps):
        batch = next(stream)
        train_step(state, state["model"], batch)
        trained += entries(batch)
    with tempfile.TemporaryDirectory() as directory:
        Checkpointer(directory).save(steps, state)
        resumed = build(new_batch_size, new_workers)
        decision = Checkpointer(directory).load(resumed, mode="flexible")
    expected_changes = {
        f"loader.{field}": {"old": old, "new": new}
        for field, old, new in (
            ("batch_size", batch_size, new_batch_size),
            ("num_workers", workers, new_workers),
        )
        if old != new
    }
    assert decision["changed"] == expected_changes
    assert decision["components"]["rng"] == "restored"
    stream = batches(resumed["loader"])
    for _ in range(3):
        batch = next(stream)
        train_step(resumed, resumed["model"], batch)
        trained += entries(batch)
    assert trained == reference(len(trained))
