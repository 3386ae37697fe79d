"""Every load the Checkpointer refuses, each refused before anything is modified.

The target state is snapshotted before the load (weights, EMA, optimizer, scheduler, scaler,
loader cursor, the three CPU generators); after the CheckpointError it must be identical, bit
for bit, so a refused load can be followed by a fresh start or another checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_job import batches, build, train_step
from torch.optim.swa_utils import AveragedModel

from resumable_loader import DataLoader, Mixture, Packed, ResumeWarning
from resumable_loader.checkpoint import Checkpointer
from resumable_loader.errors import CheckpointError

SAVED = "step-0000000004"


def canonical(value: object) -> object:
    """``value`` with tensors and arrays as (dtype, shape, bytes), so == compares bits."""
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), tuple(value.shape), value.detach().numpy().tobytes())
    if isinstance(value, np.ndarray):
        return (str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def snapshot(state: dict) -> object:
    """Everything a load could change (tensors compared bit for bit)."""
    parts = {name: obj.state_dict() for name, obj in state.items()}
    parts["rng"] = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    return canonical(parts)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A checkpoint of step 4 (copied per test, since some tests damage it)."""
    root = tmp_path_factory.mktemp("saved")
    state = build(4, 0)
    stream = batches(state["loader"])
    for _ in range(4):
        train_step(state, state["model"], next(stream))
    Checkpointer(root).save(4, state)
    return root


def without(name: str) -> Callable[[dict], dict]:
    return lambda state: {k: v for k, v in state.items() if k != name}


def replaced(name: str, make: Callable[[dict], object]) -> Callable[[dict], dict]:
    return lambda state: {**state, name: make(state)}


def damage(relative: str, how: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda root: how(root / SAVED / relative)


def edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / SAVED / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))

    return edit


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (target state, damage to the checkpoint, the error's words)
REFUSALS = {
    "component missing from state": (without("ema"), None, r"components \['ema'\]: in the ch"),
    "component not in checkpoint": (
        replaced("ema2", lambda s: AveragedModel(s["model"])),
        None,
        r"components \['ema2'\]: in state but not",
    ),
    "another kind": (
        replaced("scaler", lambda s: torch.nn.Linear(2, 2)),
        None,
        "component 'scaler': saved a stateful",
    ),
    "other parameter names": (
        lambda s: build(4, 0, depth=2),
        None,
        r"component 'model': keys \['5.bias', '5.weight'\] \(2\) the current object has",
    ),
    "other shapes": (
        lambda s: build(4, 0, hidden=17),
        None,
        r"component 'model', key '0.bias': saved shape \[16\] torch.float32, current \[17\]",
    ),
    "another dataset": (
        lambda s: build(4, 0, length=40),
        None,
        r"component 'loader' \(loader\): field 'fingerprint.length': saved 36, current 40",
    ),
    "another explicit seed": (
        lambda s: build(4, 0, seed=8),
        None,
        r"component 'loader' \(loader\): field 'seed': saved 7, current loader 8",
    ),
    "strict with another batch size": (
        lambda s: build(3, 0),
        None,
        r"field 'batch_size': saved 4, now 3; mode='strict'",
    ),
    "unknown manifest version": (
        None,
        edit_manifest(lambda m: m.update(version=99)),
        r"field 'version' is 99, this release reads versions \[1, 2\]",
    ),
    "manifest field missing": (
        None,
        edit_manifest(lambda m: m.pop("world_size")),
        r"manifest.json: field 'world_size' is 'None', expected int",
    ),
    "RNG file missing": (
        None,
        damage("rng-rank-00000.json", Path.unlink),
        r"rank-00000.json: missing, so rank 0's RNG states cannot be restored",
    ),
    "RNG file damaged": (
        None,
        damage("rng-rank-00000.json", lambda p: p.write_text('{"format": 3')),
        r"rank-00000.json: unreadable",
    ),
    "RNG state damaged": (
        None,
        damage(
            "rng-rank-00000.json", lambda p: p.write_text(p.read_text().replace("[", "[9, ", 1))
        ),
        r"rank-00000.json: field 'python' is not a generator state",
    ),
    "data file truncated": (
        None,
        damage("__0_0.distcp", truncate),
        r"__0_0.distcp: \d+ bytes, but the metadata places data up to byte",
    ),
    "DCP metadata missing": (None, damage(".metadata", Path.unlink), r".metadata: unreadable"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("trained_target", [False, True], ids=["fresh", "trained"])
def test_refused_before_anything_is_modified(case, trained_target, saved, tmp_path):
    make_state, break_checkpoint, message = REFUSALS[case]
    root = tmp_path / "checkpoints"
    shutil.copytree(saved / SAVED, root / SAVED)
    if break_checkpoint is not None:
        break_checkpoint(root)
    state = build(4, 0)
    if trained_target:  # an optimizer that already has state takes the other path
        stream = batches(state["loader"])
        train_step(state, state["model"], next(stream))
    if make_state is not None:
        state = make_state(state)
    before = snapshot(state)
    with pytest.raises(CheckpointError, match=message):
        Checkpointer(root).load(state)
    assert snapshot(state) == before
    if not trained_target:
        assert not state["optimizer"].state  # the fresh optimizer is still fresh


def test_refuses_a_step_it_does_not_have(saved):
    with pytest.raises(CheckpointError, match=r"no complete checkpoint of step 3; .* \[4\]"):
        Checkpointer(saved).load(build(4, 0), step=3)


def mixture_loader(phases: list, weights: dict | None = None) -> DataLoader:
    sources = {"a": list(range(10)), "b": list(range(100, 130))}
    mixture = Mixture(sources, weights or {"a": 1, "b": 2}, phases=phases)
    return DataLoader(mixture, batch_size=3, seed=5)


def test_strict_refuses_a_changed_future_of_a_mixture_that_flexible_accepts(tmp_path):
    """The cursor holds only the phases begun (a flexible resume may change the rest); the
    manifest holds the whole schedule, so a strict resume refuses a phase appended after the
    saved position, and a flexible one reports it."""
    loader = mixture_loader([(40, {"a": 1})])
    iterator = iter(loader)
    for _ in range(4):
        next(iterator)
    Checkpointer(tmp_path).save(4, {"loader": loader})
    later = [(40, {"a": 1}), (60, {"b": 1})]
    with pytest.raises(CheckpointError, match=r"field 'phases': saved .*mode='strict'"):
        Checkpointer(tmp_path).load({"loader": mixture_loader(later)})
    resumed = mixture_loader(later)
    decision = Checkpointer(tmp_path).load({"loader": resumed}, mode="flexible")
    assert decision["changed"]["loader.phases"]["new"][-1] == [60, {"b": 1}]
    assert next(iter(resumed)).tolist() == next(iterator).tolist()  # same until position 60
    same = mixture_loader([(40, {"a": 1})])
    assert Checkpointer(tmp_path).load({"loader": same})["changed"] == {}


class Backwards(torch.utils.data.Sampler):
    """A custom sampler without state_dict(): its epoch cannot be resumed mid-way."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __iter__(self):
        return iter(range(self.length - 1, -1, -1))

    def __len__(self) -> int:
        return self.length


def sampled_loader(seed: int = 5) -> DataLoader:
    return DataLoader(list(range(24)), batch_size=3, sampler=Backwards(24), seed=seed)


# (the loader saved, the loader loaded into, mode, the error's words): refusals that only the
# loader's own load_state_dict made, after the model and optimizer were read in
LOADER_REFUSALS = {
    "another explicit seed": (
        lambda: mixture_loader([]),
        lambda: DataLoader(mixture_loader([]).dataset, batch_size=3, seed=6),
        "strict",
        r"field 'seed': saved 5, current loader 6",
    ),
    "a mixture's past rewritten": (
        lambda: mixture_loader([]),
        lambda: mixture_loader([], {"a": 1, "b": 1}),
        "flexible",
        r"field 'order_state.phases\[0\]' .* source 'b': saved weight 2, current 1",
    ),
    "a stateless sampler mid-epoch": (
        sampled_loader,
        sampled_loader,
        "strict",
        r"cannot resume mid-epoch \(position 6\) with sampler Backwards",
    ),
}


@pytest.mark.parametrize("case", list(LOADER_REFUSALS))
def test_the_loaders_refusals_come_before_the_weights_even_without_rollback(case, tmp_path):
    make_saved, make_target, mode, message = LOADER_REFUSALS[case]
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    loader = make_saved()
    iterator = iter(loader)
    for _ in range(2):
        next(iterator)
    with warnings.catch_warnings():  # the stateless sampler's: "load_state_dict() will refuse"
        warnings.simplefilter("ignore", ResumeWarning)
        Checkpointer(tmp_path).save(2, {"model": model, "loader": loader})
    torch.manual_seed(1)
    state = {"model": torch.nn.Linear(2, 1), "loader": make_target()}
    before = snapshot(state)
    with pytest.raises(CheckpointError, match=message):
        Checkpointer(tmp_path).load(state, mode=mode, rollback=False)
    assert snapshot(state) == before


class Sequences(torch.utils.data.Dataset):
    """Token sequences of 1 to 50 tokens, for packs."""

    def __init__(self, length: int, tag: str) -> None:
        self.lengths = np.arange(length) % 50 + 1
        self.fingerprint = f"sequences-{tag}-{length}"

    def __len__(self) -> int:
        return len(self.lengths)

    def sample_lengths(self) -> np.ndarray:
        return self.lengths

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": torch.arange(int(self.lengths[index]))}


def packed_mixture_loader(phases: list) -> DataLoader:
    sources = {"a": Sequences(100, "a"), "b": Sequences(60, "b")}
    mixture = Mixture(sources, {"a": 1, "b": 1}, phases=phases, samples_per_epoch=120)
    return DataLoader(Packed(mixture, max_tokens=128), batch_size=2, seed=3, collate_fn=list)


def test_packs_of_a_mixture_save_without_a_sample_count_and_strict_sees_their_schedule(
    tmp_path,
):
    # a save without samples_seen= raised KeyError (a pack cursor has no 'length'), and the
    # manifest held no schedule for packs of a Mixture, so a strict load took a changed future
    loader = packed_mixture_loader([])
    next(iter(loader))
    Checkpointer(tmp_path).save(1, {"loader": loader})
    manifest = json.loads((tmp_path / "step-0000000001" / "manifest.json").read_text())
    assert manifest["loaders"]["loader"]["phases"] == [[0, {"a": 1, "b": 1}]]
    later = [(1000, {"a": 5, "b": 1})]
    with pytest.raises(CheckpointError, match=r"field 'phases': saved .*mode='strict'"):
        Checkpointer(tmp_path).load({"loader": packed_mixture_loader(later)})
    resumed = packed_mixture_loader(later)
    Checkpointer(tmp_path).load({"loader": resumed}, mode="flexible")
    assert resumed.state_dict()["position"] == loader.state_dict()["position"] == 2
