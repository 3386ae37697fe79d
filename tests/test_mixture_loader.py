"""A Mixture through the loader: continuous vs interrupted streams, re-weighting, provenance."""

from __future__ import annotations

import logging
import random
from fractions import Fraction
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from resume_harness import digest, transport
from shard_factory import write_parquet_shards, write_tar_shards
from torch.utils.data import Dataset

from resumable_loader import ParquetDataset, ResumableDataLoader, ShardShuffle, TarShardDataset
from resumable_loader.errors import ConfigError, StateDictError
from resumable_loader.mixture import Mixture, MixtureSource
from resumable_loader.verify import verify_pipeline

EPOCH = 96
PHASES = [(40, {"tar": 1, "mem": 1}), (70, {"pq": 2, "mem": 1, "tiny": 1}), (130, {"tar": 1})]


class Tagged(Dataset):
    """A source's samples as one shape: its index, a digest of its data and an augmentation.

    Forwards ``shard_sizes`` and ``fingerprint``, so tar and Parquet sources keep their
    shard-local order and identity.
    """

    def __init__(self, inner: Any, tag: int) -> None:
        self.inner, self.tag = inner, tag
        for name in ("shard_sizes", "fingerprint"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        noise = torch.rand(2) + torch.from_numpy(np.random.rand(2)).float() + random.random()
        return {
            "tag": self.tag,
            "id": index,
            "data": digest(repr(self.inner[index])),
            "aug": noise,
        }


class Plain(Dataset):
    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index * 3


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("mixture")
    tar = TarShardDataset(write_tar_shards(root / "tar", num_shards=4, samples_per_shard=6))
    parquet = ParquetDataset(write_parquet_shards(root / "pq", num_shards=3, rows_per_shard=5))
    return {
        "tar": MixtureSource(Tagged(tar, 0), shard_shuffle=ShardShuffle(2, 4)),
        "pq": Tagged(parquet, 1),  # shuffled globally
        "mem": MixtureSource(Tagged(Plain(60), 2), shuffle=False),
        "tiny": Tagged(Plain(3), 3),  # 20x smaller than mem
    }


def make(sources, *, phases=PHASES, weights=None, **kwargs) -> ResumableDataLoader:
    mixture = Mixture(
        sources,
        weights or {"tar": 3, "pq": 2, "mem": Fraction(3, 2), "tiny": 1},
        phases=phases,
        samples_per_epoch=EPOCH,
    )
    kwargs.setdefault("batch_size", 10)
    return ResumableDataLoader(mixture, seed=kwargs.pop("seed", 21), **kwargs)


def records(batch: dict[str, Any]) -> list[tuple[int, int, str, str]]:
    """(source tag, source's sample id, data digest, augmentation digest) per sample."""
    return [
        (int(t), int(i), d, digest(a))
        for t, i, d, a in zip(batch["tag"], batch["id"], batch["data"], batch["aug"], strict=True)
    ]


def consume(loader, epochs: int, stop_after: int | None = None) -> list[tuple]:
    stream, batches = [], 0
    for _ in range(epochs):
        for batch in loader:
            stream.extend(records(batch))
            batches += 1
            if batches == stop_after:
                return stream
    return stream


def resumed(first, second, *, epochs: int, stop_after: int, how: str = "msgpack") -> list:
    head = consume(first, epochs, stop_after)
    state = first.state_dict()
    second.load_state_dict(transport(state, how))
    left = epochs - state["epoch"] - (1 if state["position"] == EPOCH else 0)
    return head + consume(second, left)


@pytest.fixture(scope="module")
def continuous(sources) -> list[tuple]:
    return consume(make(sources), 2)


@pytest.mark.parametrize(
    "stop_after, second",
    [
        (3, dict(num_workers=2, batch_size=7)),  # inside phase 0; then across three boundaries
        (4, dict(batch_size=5)),  # exactly at the boundary at 40
        (7, dict(num_workers=1, batch_size=16)),  # exactly at 70, into the next epoch
        (13, dict(batch_size=3, num_workers=2, prefetch_factor=1)),  # at 130, epoch 1
    ],
)
def test_resumed_stream_equals_continuous(sources, continuous, stop_after, second):
    stream = resumed(make(sources), make(sources, **second), epochs=2, stop_after=stop_after)
    assert stream == continuous


@settings(max_examples=3, deadline=None)
@given(
    stop_after=st.integers(1, 17),
    batch_size=st.integers(1, 12),
    how=st.sampled_from(["msgpack", "json", "torch"]),
)
def test_resume_anywhere_with_any_batch_size(sources, continuous, stop_after, batch_size, how):
    stream = resumed(
        make(sources),
        make(sources, batch_size=batch_size),
        epochs=2,
        stop_after=stop_after,
        how=how,
    )
    assert stream == continuous


def lockstep(loaders, epochs: int, stop_after: int | None = None) -> list[tuple]:
    """The global stream of in-process ranks: their k-th batches in rank order."""
    stream, steps = [], 0
    for _ in range(epochs):
        for batches in zip(*loaders, strict=True):
            for batch in batches:
                stream.extend(records(batch))
            steps += 1
            if steps == stop_after:
                return stream
    return stream


@pytest.mark.parametrize("before, after, steps", [(2, 3, 6), (3, 1, 5)])
def test_resume_on_another_world_size(sources, continuous, before, after, steps):
    first = [make(sources, batch_size=4, rank=r, world_size=before) for r in range(before)]
    head = lockstep(first, 1, stop_after=steps)
    state = transport(first[0].state_dict(), "msgpack")
    second = [make(sources, batch_size=4, rank=r, world_size=after) for r in range(after)]
    for loader in second:
        loader.load_state_dict(state)
    tail = lockstep(second, 1)
    assert state["position"] == steps * 4 * before  # the rest splits without padding
    assert head + tail == continuous[:EPOCH]


def test_each_source_streams_its_own_order_with_a_100x_smaller_source():
    mixture = Mixture(
        {"big": Tagged(Plain(400), 0), "small": Tagged(Plain(4), 1)},
        {"big": 1, "small": 1},
        samples_per_epoch=100,
    )
    loader = ResumableDataLoader(mixture, batch_size=8, seed=2)
    stream = consume(loader, 2)
    small = [i for t, i, _, _ in stream if t == 1]
    assert len(small) == 100
    assert all(sorted(small[e * 4 : (e + 1) * 4]) == [0, 1, 2, 3] for e in range(25))
    big = [i for t, i, _, _ in stream if t == 0]
    assert len(set(big)) == len(big) == 100  # no repeat before its epoch of 400 ends
    order = loader.order
    assert small == order.streams[1].ids(0, 100).tolist()


def test_reweighting_on_resume_continues_every_stream(sources, caplog):
    old = PHASES[:1]
    first = make(sources, phases=old)
    head = consume(first, 1, stop_after=5)
    state = first.state_dict()
    new = [*old, (50, {"pq": 1, "tiny": 3})]
    second = make(sources, phases=new, num_workers=2)
    with caplog.at_level(logging.INFO, logger="resumable_loader"):
        second.load_state_dict(transport(state, "json"))
    (line,) = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert "position 50 in phase 2" in line and "(50, {'pq': 1, 'tiny': 3})" in line
    stream = head + consume(second, 2 - state["epoch"])
    names = second.dataset.names
    for tag, stream_of in enumerate(second.order.streams):
        drawn = [i for t, i, _, _ in stream if t == tag]
        assert drawn == stream_of.ids(0, len(drawn)).tolist(), names[tag]  # no repeat, no gap
    composition = [t for t, *_ in stream[50:EPOCH]]  # the new phase: pq 1, tiny 3
    assert abs(composition.count(1) - 46 / 4) < 1 and abs(composition.count(3) - 46 * 3 / 4) < 1


@pytest.mark.parametrize(
    "changed, message",
    [
        (dict(phases=[(40, {"tar": 2, "mem": 1})]), r"phases\[1\]' \(start 40\), source 'tar'"),
        (dict(phases=[(30, {"tar": 1, "mem": 1})]), r"phases\[1\]\.start': saved 40, current 30"),
    ],
)
def test_a_rewritten_past_is_refused_by_the_loader(sources, changed, message):
    first = make(sources)
    consume(first, 1, stop_after=5)
    state = first.state_dict()
    second = make(sources, **changed)
    with pytest.raises(StateDictError, match=message):
        second.load_state_dict(state)
    assert second.state_dict()["position"] == 0  # nothing was loaded


def test_the_order_state_is_covered_by_the_checksum(sources):
    loader = make(sources)
    consume(loader, 1, stop_after=5)
    state = transport(loader.state_dict(), "msgpack")
    state["order_state"]["sources"][0][2] += 1
    with pytest.raises(StateDictError, match="checksum"):
        make(sources).load_state_dict(state)


def test_cursor_size_for_8_sources_and_4_phases():
    names = [f"source-{i:02d}" for i in range(8)]
    phases = [(10**9 * (k + 1), {n: k + i + 1 for i, n in enumerate(names)}) for k in range(3)]
    mixture = Mixture({n: Plain(10**6) for n in names}, dict.fromkeys(names, 7), phases=phases)
    loader = ResumableDataLoader(mixture, batch_size=4, seed=2**64 - 1)
    for where, started in ((4 * 10**9 - 1, 4), (10**9 - 1, 1)):  # the past, then the future
        state = loader.state_at(0, where)
        saved = state["order_state"]
        assert (len(saved["phases"]), len(saved["future"])) == (started, 4 - started)
        assert len(msgpack.packb(state)) <= 1024


def test_sample_at_names_what_every_mode_delivers(sources, tmp_path):
    loader = make(sources, batch_size=EPOCH)
    (batch,) = [b for _, b in zip(range(1), loader, strict=False)]
    names = loader.dataset.names
    for position, (tag, sample_id, _, _) in enumerate(records(batch)):
        info = loader.sample_at(0, position)
        assert (info["source"], info["sample_id"]) == (names[tag], sample_id)
    tar = TarShardDataset(write_tar_shards(tmp_path, num_shards=3, samples_per_shard=5))
    for kwargs in (dict(shuffle=False), dict(shuffle=True), dict(shard_shuffle=ShardShuffle(2, 3))):
        plain = ResumableDataLoader(
            tar,
            batch_size=15,
            seed=4,
            collate_fn=lambda s: [x["__key__"] for x in s],
            **{"shuffle": True, **kwargs},
        )
        (keys,) = list(plain)
        ids = [plain.sample_at(0, p)["id"] for p in range(15)]
        assert keys == [f"sample{i:06d}" for i in ids]
    with pytest.raises(ConfigError, match="position"):
        plain.sample_at(0, 15)


def test_mixture_progress_counts_what_was_delivered(sources):
    loader = make(sources)
    stream = consume(loader, 1, stop_after=8)
    progress = loader.mixture_progress()
    assert progress["position"] == 80 and progress["phase"] == 2
    for tag, name in enumerate(loader.dataset.names):
        drawn = progress["sources"][name]
        assert drawn["draws"] == sum(1 for t, *_ in stream if t == tag)
    tiny = progress["sources"]["tiny"]
    assert tiny["epochs_completed"] == tiny["draws"] // 3
    assert progress["weights"] == {"pq": 2, "mem": 1, "tiny": 1}


def test_the_loader_settings_that_do_not_apply_are_refused(sources):
    with pytest.raises(ConfigError, match="MixtureSource"):
        make(sources, shuffle=True, shard_shuffle=ShardShuffle())
    with pytest.raises(ConfigError, match="Mixture"):
        ResumableDataLoader(Plain(5), batch_size=2, seed=0).mixture_progress()


def mixture_factory() -> ResumableDataLoader:
    mixture = Mixture(
        {"a": Tagged(Plain(30), 0), "b": Tagged(Plain(7), 1)},
        {"a": 2, "b": 1},
        phases=[(25, {"b": 1}), (40, {"a": 1, "b": 1})],
        samples_per_epoch=48,
    )
    return ResumableDataLoader(mixture, batch_size=6, num_workers=0, seed=9)


def test_verify_accepts_a_mixture_factory():
    report = verify_pipeline(mixture_factory, epochs=1, stops=(0.4,), num_workers=1)
    assert report.passed and report.samples_compared >= 48, report
