"""Shard-local order: a pure-Python reference of the algorithm equals the C++ stream exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from resumable_loader import ConfigError, ShardShuffle
from resumable_loader.order import Permutation, Purpose, ShardLocalOrder
from resumable_loader.order.philox import derive_words

layouts = st.lists(st.integers(0, 12), min_size=1, max_size=8)


def reference(sizes, seed, epoch, window, buffer_size):
    """The contract of csrc/shard_blocks.h, written out plainly."""
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    order = Permutation(len(sizes), seed=seed, epoch=epoch, purpose=Purpose.SHARD_ORDER)
    shards = [order[i] for i in range(len(sizes))]
    sequence = [i for s in shards for i in range(offsets[s], offsets[s + 1])]  # V
    n, k = len(sequence), window
    rows, rest = divmod(n, k)
    lanes = [sequence[j * rows + min(j, rest) :][: rows + (j < rest)] for j in range(k)]
    interleaved = [lanes[q % k][q // k] for q in range(k * rows)]
    interleaved += [lanes[j][rows] for j in range(rest)]
    out, size = [], 3 * buffer_size  # a block: three buffer sizes
    for first in range(0, n, size):
        block = interleaved[first : first + size]
        for i in range(len(block) - 1, 0, -1):
            word = derive_words(seed, epoch, (first + i) // 4, Purpose.SHUFFLE_BUFFER)
            j = (word[(first + i) % 4] * (i + 1)) >> 32
            block[i], block[j] = block[j], block[i]
        out += block
    return out


def check_against_reference(sizes, seed, epoch, window, buffer_size):
    order = ShardLocalOrder(np.array(sizes), seed=seed, window=window, buffer_size=buffer_size)
    got = order.ids(epoch, 0, len(order)).tolist()
    assert got == reference(sizes, seed, epoch, window, buffer_size)
    assert sorted(got) == list(range(sum(sizes)))  # every epoch is a permutation


@settings(max_examples=60)
@given(
    layouts, st.integers(0, 2**64 - 1), st.integers(0, 50), st.integers(1, 4), st.integers(1, 40)
)
@example([0, 3, 0, 5, 0], 1, 0, 1, 1)  # empty shards, no buffer
@example([4, 2], 2, 3, 4, 1)  # window > shards
@example([3, 1, 2], 3, 1, 2, 40)  # buffer > n
@example([0, 0], 4, 0, 2, 2)  # nothing to read
def test_equals_reference(sizes, seed, epoch, window, buffer_size):
    check_against_reference(sizes, seed, epoch, window, buffer_size)


@pytest.mark.parametrize(("window", "buffer_size"), [(1, 1), (3, 64), (8, 2000)])
def test_equals_reference_over_many_pick_batches(window, buffer_size):
    # C++ draws its picks in batches of Philox blocks; this crosses several batch boundaries.
    sizes = [300, 0, 517, 1, 250, 0, 90]
    check_against_reference(sizes, 2**40 + 9, 2**32 - 1, window, buffer_size)


@settings(max_examples=40)
@given(layouts.filter(lambda s: sum(s) > 0), st.data())
def test_random_access_equals_chunked_stream(sizes, data):
    order = ShardLocalOrder(np.array(sizes), seed=3, window=2, buffer_size=5)
    n = len(order)
    start = data.draw(st.integers(0, n))
    stop = data.draw(st.integers(start, n))
    chunks = list(order.iter_ids(1, start, chunk_size=data.draw(st.integers(1, 50))))
    joined = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    assert joined.tolist() == order.ids(1, start, n).tolist()
    assert order.ids(1, start, stop).tolist() == joined[: stop - start].tolist()


def test_reading_front_to_back_in_chunks_of_any_size_equals_random_access():
    sizes = [300, 0, 517, 1, 250, 0, 90]
    order = ShardLocalOrder(np.array(sizes), seed=11, window=3, buffer_size=20)  # blocks of 60
    whole = order.ids(4, 0, len(order))
    for start in (0, 1, 59, 60, 61, 1000):
        for chunk_size in (1, 7, 59, 60, 61, 130, 2000):
            chunks = list(order.iter_ids(4, start, chunk_size=chunk_size))
            assert np.concatenate(chunks).tolist() == whole[start:].tolist()


@settings(max_examples=40, deadline=None)
@given(
    layouts.filter(lambda s: sum(s) > 0),
    st.integers(0, 2**64 - 1),
    st.integers(1, 5),
    st.integers(1, 9),
    st.data(),
)
def test_any_position_is_computed_directly(sizes, seed, window, buffer_size, data):
    order = ShardLocalOrder(np.array(sizes), seed=seed, window=window, buffer_size=buffer_size)
    stream = order.ids(2, 0, len(order))
    positions = data.draw(st.lists(st.integers(0, len(order) - 1), min_size=1, max_size=10))
    for p in positions:
        fresh = ShardLocalOrder(np.array(sizes), seed=seed, window=window, buffer_size=buffer_size)
        assert fresh.ids(2, p, p + 1)[0] == stream[p]


def test_a_position_near_the_end_of_a_billion_samples_is_computed_directly():
    sizes = np.full(100_000, 10_000)  # 10^9 samples
    order = ShardLocalOrder(sizes, seed=5, window=8, buffer_size=1000)  # blocks of 3000
    p = 900_000_123
    ahead = order.ids(0, p - 4500, p + 64)
    assert order.ids(0, p, p + 64).tolist() == ahead[4500:].tolist()
    block = order.ids(0, p // 3000 * 3000, p // 3000 * 3000 + 3000)
    assert sorted(block.tolist()) == sorted(set(block.tolist()))  # a block holds distinct ids


def test_with_one_lane_it_reads_shards_in_order_shuffling_only_within_blocks():
    sizes = [4, 3, 5]
    order = ShardLocalOrder(np.array(sizes), seed=8, window=1, buffer_size=1)  # blocks of 3
    ids = order.ids(0, 0, 12).tolist()
    shard_order = [
        Permutation(3, seed=8, epoch=0, purpose=Purpose.SHARD_ORDER)[i] for i in range(3)
    ]
    offsets = [0, 4, 7, 12]
    sequential = [i for s in shard_order for i in range(offsets[s], offsets[s + 1])]
    assert ids != sequential
    for first in range(0, 12, 3):
        assert sorted(ids[first : first + 3]) == sorted(sequential[first : first + 3])


def test_window_bounds_the_open_shards():
    # k lanes each read one shard at a time; a shard cut by a lane boundary is read in two
    # parts, by two lanes, so at most k - 1 more shards are begun and not finished.
    sizes = np.full(20, 10)
    ids = ShardLocalOrder(sizes, seed=1, window=3, buffer_size=1).ids(0, 0, 200)
    shards = ids // 10
    for prefix in range(1, 201):
        touched = set(shards[:prefix].tolist())
        finished = sum((shards[:prefix] == s).sum() == 10 for s in touched)
        assert len(touched) - finished <= 2 * 3 - 1
    rows = shards[:198].reshape(66, 3)  # a block here: one id from each lane, shuffled
    assert all(len(set(row.tolist())) == 3 for row in rows)


def test_epochs_seeds_and_neighbours_differ():
    sizes = np.full(6, 7)

    def ids(seed, epoch):
        return ShardLocalOrder(sizes, seed=seed, window=2, buffer_size=8).ids(epoch, 0, 42)

    assert not np.array_equal(ids(1, 0), ids(1, 1))
    assert not np.array_equal(ids(1, 0), ids(2, 0))
    assert not np.array_equal(ids(5, 1), ids(6, 0))


def test_pinned_stream():
    # Changing this breaks every saved shard-local cursor (shard-blocks-v1; the buffer replay
    # before it pinned [12, 14, 13, 15, 16, 17, 5, 18, 19, 6, ...]).
    order = ShardLocalOrder(np.array([5, 7, 3, 9]), seed=42, window=2, buffer_size=4)
    assert order.ids(0, 0, 20).tolist() == PINNED


PINNED = [15, 16, 8, 7, 14, 5, 6, 13, 17, 10, 12, 9, 18, 0, 3, 21, 4, 2, 22, 23]


def test_settings_and_validation():
    order = ShardLocalOrder(np.array([2, 3]), seed=1, window=2, buffer_size=4)
    assert order.settings() == {
        "order": "shard_local",
        "algorithm": "shard-blocks-v1",
        "length": 5,
        "shards": 2,
        "window": 2,
        "buffer_size": 4,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(window=0),
        dict(buffer_size=0),
        dict(window=True),
        dict(buffer_size=2.0),
        dict(buffer_size=(2**32 - 1) // 3 + 1),
    ],
)
def test_invalid_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        ShardShuffle(**kwargs)
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        ShardLocalOrder(np.array([2, 3]), seed=1, **{"window": 2, "buffer_size": 4, **kwargs})


@pytest.mark.parametrize(
    "sizes",
    [np.array([2, -1]), np.array([1.5, 2.0]), np.array([[1, 2]]), np.array([2**62, 2**62])],
)
def test_invalid_shard_sizes_raise_config_error(sizes):
    with pytest.raises(ConfigError, match="shard_sizes"):
        ShardLocalOrder(sizes, seed=1, window=1, buffer_size=1)


def test_invalid_positions_seed_and_epoch_raise_config_error():
    order = ShardLocalOrder(np.array([2, 3]), seed=1, window=2, buffer_size=4)
    for bad in [(0, -1, 2), (0, 3, 2), (0, 0, 6), (-1, 0, 1), (2**32, 0, 1)]:
        with pytest.raises(ConfigError):
            order.ids(*bad)
    with pytest.raises(ConfigError, match="chunk_size"):
        next(order.iter_ids(0, chunk_size=0))
    with pytest.raises(ConfigError, match="seed"):
        ShardLocalOrder(np.array([2]), seed=-1, window=1, buffer_size=1)


class _Sharded:
    def __init__(self, length, shard_sizes):
        self.length, self.shard_sizes = length, shard_sizes

    def __len__(self):
        return self.length


def test_order_for_reads_the_datasets_shard_sizes():
    order = ShardShuffle(window=3, buffer_size=5).order_for(_Sharded(7, [3, 4]), seed=9)
    assert order.settings()["shards"] == 2 and len(order) == 7
    with pytest.raises(ConfigError, match="shard_sizes"):
        ShardShuffle().order_for([1, 2, 3], seed=0)
    with pytest.raises(ConfigError, match="sum to 7"):
        ShardShuffle().order_for(_Sharded(8, np.array([3, 4])), seed=0)
