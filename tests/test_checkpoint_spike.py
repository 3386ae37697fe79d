"""The demonstration of docs/checkpoint.md as a test: weights alone spike the loss, not us."""

from __future__ import annotations

from checkpoint_spike import RESUME, curves


def test_weights_alone_spike_the_loss_and_the_checkpointer_does_not():
    runs = curves()
    continuous, resumed = runs["continuous"], runs["Checkpointer"]
    assert max(abs(a - b) for a, b in zip(continuous, resumed, strict=True)) == 0.0
    after = slice(RESUME, RESUME + 10)
    at_resume = continuous[RESUME - 1]
    assert max(continuous[after]) < at_resume  # still going down where it was
    assert max(runs["weights alone"][after]) > 5 * at_resume  # 9.0e-03 vs 5.8e-04 here
