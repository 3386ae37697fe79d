"""Partition: ranks' batches tile the global stream in order; every rank gets as many batches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resumable_loader import ConfigError
from resumable_loader.order import Partition

layouts = st.tuples(
    st.integers(0, 200),  # length
    st.integers(1, 9),  # batch size
    st.integers(1, 5),  # world size
    st.booleans(),  # drop_last
    st.booleans(),  # trim
).flatmap(lambda t: st.tuples(st.just(t), st.integers(0, t[0])))  # start position


def all_ranks(length, batch_size, world_size, drop_last, trim=False):
    return [
        Partition(length, batch_size, world_size=world_size, rank=r, drop_last=drop_last, trim=trim)
        for r in range(world_size)
    ]


@given(layouts)
def test_global_batches_concatenate_to_the_stream(layout):
    (length, batch_size, world_size, drop_last, trim), start = layout
    parts = all_ranks(length, batch_size, world_size, drop_last, trim)
    per_rank = [list(p.batches(start)) for p in parts]
    assert len({len(batches) for batches in per_rank}) == 1  # same count on every rank (DDP)
    assert all(len(b) == parts[0].num_batches(start) for b in per_rank)
    stream = []
    for global_batch in zip(*per_rank, strict=True):
        positions = [p for b in global_batch for p in range(b.start, b.stop)]
        real = [p for p in positions if p < length]
        assert len(real) == global_batch[0].global_size
        assert all(b.global_size == global_batch[0].global_size for b in global_batch)
        stream.extend(real)
        padding = [p for p in positions if p >= length]
        assert padding == list(range(length, length + len(padding)))  # wraps to the start
    assert stream == list(range(start, parts[0].end(start)))


@given(st.integers(0, 200), st.integers(1, 9), st.integers(1, 5), st.booleans())
def test_trim_gives_each_rank_the_batch_sizes_of_a_distributed_sampler_that_drops_last(
    length, batch_size, world_size, drop_last
):
    """DistributedSampler(drop_last=True) gives each rank floor(N / W) samples, batched by the
    loader (its own drop_last dropping a short batch): trim gives every rank those sizes, and
    no position twice or past the cut."""
    parts = all_ranks(length, batch_size, world_size, drop_last, trim=True)
    per_rank = length // world_size
    sizes = [batch_size] * (per_rank // batch_size)
    if per_rank % batch_size and not drop_last:
        sizes.append(per_rank % batch_size)
    delivered = []
    for part in parts:
        batches = list(part.batches(0))
        assert [b.stop - b.start for b in batches] == sizes
        delivered += [p for b in batches for p in range(b.start, b.stop)]
    assert sorted(delivered) == list(range(len(delivered)))  # no padding, nothing twice
    assert len(delivered) == parts[0].end(0) == world_size * sum(sizes)


def test_fixed_formula():
    part = Partition(100, 4, world_size=3, rank=2)
    batches = list(part.batches(0))
    assert (batches[0].start, batches[0].stop) == (8, 12)  # [kWB + rB, kWB + (r+1)B), k=0
    assert (batches[1].start, batches[1].stop) == (20, 24)


def test_single_rank_last_batch_is_short_not_padded():
    batches = list(Partition(10, 4).batches(0))
    assert [(b.start, b.stop) for b in batches] == [(0, 4), (4, 8), (8, 10)]


def test_drop_last_end():
    assert Partition(10, 4, world_size=2, drop_last=True).end(0) == 8
    assert Partition(10, 4, world_size=2, drop_last=True).num_batches(3) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(length=10, batch_size=0),
        dict(length=10, batch_size=2, world_size=0),
        dict(length=10, batch_size=2, world_size=2, rank=2),
        dict(length=-1, batch_size=2),
        dict(length=10, batch_size=True),
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        Partition(**kwargs)
