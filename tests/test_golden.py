"""Golden fixtures (tests/data, written by tests/data/make_golden.py): a change of stream or of
the cursor format shows here as a failing fixture, never as a silent change."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from torch.utils.data import Dataset

from resumable_loader import ResumableDataLoader, ShardShuffle, StateDictError

DATA = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)


class Blank(Dataset):
    def __len__(self) -> int:
        return 50000

    def __getitem__(self, index: int) -> int:
        return index


def test_the_version_1_cursor_keeps_loading():
    saved = json.loads((DATA / "cursor_v1.json").read_text())
    loader = ResumableDataLoader(Blank(), batch_size=64, shuffle=True)
    loader.load_state_dict(saved)
    state = loader.state_dict()
    assert (state["seed"], state["epoch"], state["position"]) == (2026, 3, 4096)
    first = next(iter(loader))
    assert first.tolist() == loader.order.ids(3, 4096, 4096 + 64).tolist()


class Sharded(Blank):
    shard_sizes = (30, 50, 20)

    def __len__(self) -> int:
        return 100


def test_a_shard_local_cursor_of_the_replayed_buffer_is_refused_naming_the_algorithm():
    saved = json.loads((DATA / "cursor_shard_local_feistel_v2.json").read_text())
    loader = ResumableDataLoader(
        Sharded(), batch_size=4, shuffle=True, shard_shuffle=ShardShuffle(window=2, buffer_size=16)
    )
    with pytest.raises(StateDictError, match=r"fingerprint\.algorithm.*feistel-v2.*state_at"):
        loader.load_state_dict(saved)
    loader.load_state_dict(loader.state_at(saved["epoch"] + 1, 0))  # the fix it names
    assert next(iter(loader)).tolist() == loader.order.ids(1, 0, 4).tolist()


def test_the_streams_are_the_golden_ones():
    golden = json.loads((DATA / "streams.json").read_text())
    assert make_golden.streams() == golden
