"""The resume probe of a loader with ``on_sample_error="substitute"``: its batch holds the
substitute the stream holds at the bad sample's position, and probing changes nothing.

The probe batch is the first ``probe_samples`` positions of epoch 0, so with batches of that
size it is the first batch the stream delivered: the recorded loss must be that batch's loss,
bit for bit. Nothing else may move: the quarantine file, the loader's cursor and bad-sample
count, the generators, the optimizer; the rest of the run is the run of a loader never probed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bad_samples_job import Corrupt, loader
from torch import nn

from resumable_loader.checkpoint import Checkpointer
from resumable_loader.loader.bad_samples import quarantine_file, read_quarantine

STEPS = 3


def loss_fn(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch.float() / 1000).pow(2).mean()


def probe_ids() -> list[int]:
    """The probe batch's sample ids: positions 0-3 of epoch 0."""
    order = loader(Corrupt(set()), None, batch_size=4)
    return [order.sample_at(0, p)["id"] for p in range(4)]


BAD = {probe_ids()[1]}  # a sample of the probe batch fails to load


def build(quarantine: Path) -> dict[str, Any]:
    """A model, its optimizer and a loader over samples of which BAD fail (at most 1 of 48)."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    data = loader(Corrupt(BAD), str(quarantine), batch_size=4, max_bad_fraction=1 / 48)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return {"model": model, "optimizer": optimizer, "loader": data}


def train(state: dict[str, Any], batches: Any, steps: int) -> list[list[int]]:
    """``steps`` training steps on ``batches``; the samples trained on."""
    seen = []
    for _ in range(steps):
        batch = next(batches)
        seen += batch.tolist()
        loss_fn(state["model"], batch).backward()
        state["optimizer"].step()
        state["optimizer"].zero_grad()
    return seen


def untouched(state: dict[str, Any], quarantine: Path) -> dict[str, Any]:
    """What the probe must leave as it was."""
    path = quarantine_file(quarantine, 0)
    return {
        "quarantine": path.read_bytes() if path.exists() else None,
        "cursor": state["loader"].state_dict(),
        "bad samples": repr(state["loader"].bad_samples),
        "torch": torch.get_rng_state(),
        "numpy": repr(np.random.get_state()),
        "random": random.getstate(),
        "optimizer": repr(state["optimizer"].state_dict()),
        "weights": [p.detach().clone() for p in state["model"].parameters()],
    }


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        for key in a
        for x, y in ([(a[key], b[key])] if key != "weights" else zip(a[key], b[key], strict=True))
    )


@pytest.mark.parametrize("trained", [0, STEPS])
def test_the_probe_loads_a_bad_sample_as_the_stream_substitutes_it_and_changes_nothing(
    tmp_path, trained
):
    """Saved before the stream met the bad sample (step 0: the probe reads it first) or after
    (it is quarantined): the probe's loss is that of the stream's first batch, substitute
    included; nothing is quarantined, counted or drawn by the probe, and the run goes on as
    a run never probed; a load then recomputes the same probe."""
    reference = build(tmp_path / "reference-q")
    stream = iter(reference["loader"])
    whole = train(reference, stream, STEPS) + [s for b in stream for s in b.tolist()]

    state = build(tmp_path / "q")
    batches = iter(state["loader"])
    seen = train(state, batches, trained)
    if trained:
        assert sorted(read_quarantine(tmp_path / "q")) == sorted(BAD)
    first_batch = torch.tensor(whole[:4])
    with torch.no_grad():
        expected = float(loss_fn(state["model"], first_batch)).hex()
    before = untouched(state, tmp_path / "q")
    folder = Checkpointer(tmp_path / "checkpoints").save(trained, state, probe=loss_fn)
    assert same(untouched(state, tmp_path / "q"), before)
    probe = json.loads((folder / "manifest.json").read_text())["probe"]
    assert probe["ids"] == probe_ids() and probe["loss"] == expected

    seen += train(state, batches, STEPS - trained) + [s for b in batches for s in b.tolist()]
    assert seen == whole  # the run goes on as one never probed, and never stops
    assert read_quarantine(tmp_path / "q") == read_quarantine(tmp_path / "reference-q")

    resumed = build(tmp_path / "q")
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.load(resumed)
    before = untouched(resumed, tmp_path / "q")
    report = checkpointer.probe(resumed["model"], loss_fn)
    assert report["exact"] and report["ok"]
    assert same(untouched(resumed, tmp_path / "q"), before)
