"""The shard-local order through the loader: a resume anywhere continues the stream exactly."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resume_harness import AugmentedDataset, interrupted_stream, run

from resumable_loader import ResumableDataLoader, ShardShuffle

SHARD_SIZES = (23, 0, 41, 7, 30, 19)  # uneven, one empty: lanes cut shards, blocks cut lanes


class ShardedAugmented(AugmentedDataset):
    """Samples that draw from all three global generators, in shards of SHARD_SIZES."""

    shard_sizes = SHARD_SIZES
    fingerprint = "sharded-augmented"

    def __init__(self) -> None:
        super().__init__(sum(SHARD_SIZES))


def factory(*, num_workers: int = 0, batch_size: int = 5, window: int = 3, buffer_size: int = 4):
    shard_shuffle = ShardShuffle(window=window, buffer_size=buffer_size)
    return lambda: ResumableDataLoader(
        ShardedAugmented(),
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=True,
        seed=23,
        shard_shuffle=shard_shuffle,
    )


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    settings_=st.tuples(st.integers(1, 4), st.integers(1, 9)),
    workers=st.tuples(st.sampled_from([0, 0, 1]), st.sampled_from([0, 0, 2])),
    batch_sizes=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    stop_fraction=st.floats(0, 1),
)
def test_a_resume_anywhere_continues_the_stream(settings_, workers, batch_sizes, stop_fraction):
    window, buffer_size = settings_
    make = {"window": window, "buffer_size": buffer_size}
    expected, _ = run(factory(**make)(), 2)
    assert sorted(r[1] for r in expected if r[0] == 0) == list(range(sum(SHARD_SIZES)))
    stop_after = round(stop_fraction * 2 * -(-sum(SHARD_SIZES) // batch_sizes[0]))
    got = interrupted_stream(
        factory(num_workers=workers[0], batch_size=batch_sizes[0], **make),
        factory(num_workers=workers[1], batch_size=batch_sizes[1], **make),
        epochs=2,
        stop_after=stop_after,
    )
    assert got == expected


@pytest.mark.parametrize("position", [0, 1, 11, 12, 13, 59, 60, 61, 119])  # blocks of 12
def test_state_at_any_position_starts_at_that_positions_ids(position):
    loader = factory(batch_size=1)()
    loader.load_state_dict(loader.state_at(1, position))
    first = next(iter(loader))
    assert first["id"].tolist() == [loader.order.ids(1, 0, len(loader.order))[position]]


def test_shard_shuffle_given_other_than_a_shard_shuffle_is_named():
    from resumable_loader import ConfigError

    with pytest.raises(
        ConfigError, match=r"shard_shuffle takes a ShardShuffle.*got tuple \(4, 8\)"
    ):
        ResumableDataLoader(AugmentedDataset(8), shuffle=True, seed=1, shard_shuffle=(4, 8))
