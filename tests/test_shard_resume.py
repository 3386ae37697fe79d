"""Exact resume on tar and Parquet shards, global and shard-local shuffle, changing layouts."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resume_harness import digest, epochs_left, interrupted_stream, run, transport
from shard_factory import write_parquet_shards, write_tar_shards
from torch.utils.data import Dataset

from resumable_loader import (
    ParquetDataset,
    ResumableDataLoader,
    ShardShuffle,
    StateDictError,
    TarShardDataset,
    sample_numpy_generator,
)

SHARDS, PER_SHARD = 5, 9


class Augment(Dataset):
    """Turns a shard sample into (id, augmented digest input) with per-sample randomness."""

    def __init__(self, source: Dataset) -> None:
        self.source = source
        self.shard_sizes = source.shard_sizes
        self.fingerprint = source.fingerprint

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        sample = self.source[index]
        payload = repr(sorted((k, str(v)) for k, v in sample.items() if k != "__url__"))
        noise = sample_numpy_generator().random(2)
        return {"id": index, "aug": digest(payload) + digest(noise)}


def per_sample(batch):
    yield from zip(batch["id"].tolist(), batch["aug"], strict=True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    tar = write_tar_shards(root / "tar", num_shards=SHARDS, samples_per_shard=PER_SHARD)
    parquet = write_parquet_shards(root / "parquet", num_shards=SHARDS, rows_per_shard=PER_SHARD)
    return {"tar": Augment(TarShardDataset(tar)), "parquet": Augment(ParquetDataset(parquet))}


def factory(dataset, mode, **kwargs):
    shard_shuffle = ShardShuffle(window=2, buffer_size=4) if mode == "shard_local" else None
    kwargs.setdefault("batch_size", 4)
    return lambda: ResumableDataLoader(
        dataset, shuffle=True, seed=17, shard_shuffle=shard_shuffle, **kwargs
    )


@pytest.mark.parametrize("source", ["tar", "parquet"])
@pytest.mark.parametrize("mode", ["global", "shard_local"])
def test_workers_and_batch_size_change_across_resume(sources, source, mode):
    dataset = sources[source]
    expected, _ = run(factory(dataset, mode)(), 2, per_sample=per_sample)
    assert sorted(r[1] for r in expected if r[0] == 0) == list(range(len(dataset)))
    for stop_after in (0, 4, 11, 13):
        got = interrupted_stream(
            factory(dataset, mode, num_workers=2),
            factory(dataset, mode, num_workers=1, batch_size=3),
            epochs=2,
            stop_after=stop_after,
            per_sample=per_sample,
        )
        assert got == expected, (source, mode, stop_after)


EPOCHS = 3  # 12 batches of 4 an epoch (45 samples): batch 12 ends epoch 0, 24 epoch 1


@pytest.fixture(scope="module")
def three_epochs(sources):
    """The uninterrupted stream of each (source, mode), computed once."""
    cache = {}

    def expected(source, mode):
        if (source, mode) not in cache:
            cache[source, mode] = run(
                factory(sources[source], mode)(), EPOCHS, per_sample=per_sample
            )[0]
        return cache[source, mode]

    return expected


@pytest.mark.parametrize("source", ["tar", "parquet"])
@pytest.mark.parametrize("mode", ["global", "shard_local"])
@pytest.mark.parametrize(
    ("stop_after", "how", "first", "second"),
    [
        (12, "torch", {"num_workers": 2, "persistent_workers": True}, {"batch_size": 5}),
        (
            24,
            "json",
            {"num_workers": 1},
            {"num_workers": 2, "persistent_workers": True, "batch_size": 3},
        ),
        (
            27,
            "torch",
            {"num_workers": 2, "persistent_workers": True},
            {"num_workers": 1, "batch_size": 7},
        ),
    ],
    ids=["end-of-epoch-0", "end-of-epoch-1", "inside-epoch-2"],
)
@pytest.mark.slow
def test_epoch_ends_persistent_workers_and_checkpoint_formats(
    sources, three_epochs, source, mode, stop_after, how, first, second
):
    # "torch" is torch.save then torch.load(weights_only=True); workers persist on one side
    dataset = sources[source]
    got = interrupted_stream(
        factory(dataset, mode, **first),
        factory(dataset, mode, **second),
        epochs=EPOCHS,
        stop_after=stop_after,
        how=how,
        per_sample=per_sample,
    )
    assert got == three_epochs(source, mode)


@pytest.mark.parametrize("source", ["tar", "parquet"])
@pytest.mark.parametrize("mode", ["global", "shard_local"])
def test_resume_after_an_epoch_ran_out(sources, three_epochs, source, mode):
    # the first run's epoch ends by StopIteration, not by a break at its last batch
    dataset = sources[source]
    first = factory(dataset, mode, num_workers=2, persistent_workers=True)()
    head, state = run(first, 1, per_sample=per_sample)
    for how in ("json", "torch"):
        resumed = factory(dataset, mode, num_workers=1, batch_size=6)()
        resumed.load_state_dict(transport(state, how))
        tail, _ = run(resumed, epochs_left(state, EPOCHS), per_sample=per_sample)
        assert head + tail == three_epochs(source, mode), how


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    source=st.sampled_from(["tar", "parquet"]),
    mode=st.sampled_from(["global", "shard_local"]),
    workers=st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([0, 1, 2])),
    batch_sizes=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    stop_fraction=st.floats(0, 1),
)
def test_random_layouts(sources, source, mode, workers, batch_sizes, stop_fraction):
    dataset = sources[source]
    expected, _ = run(factory(dataset, mode)(), 2, per_sample=per_sample)
    stop_after = round(stop_fraction * 2 * -(-len(dataset) // batch_sizes[0]))
    got = interrupted_stream(
        factory(dataset, mode, num_workers=workers[0], batch_size=batch_sizes[0]),
        factory(dataset, mode, num_workers=workers[1], batch_size=batch_sizes[1]),
        epochs=2,
        stop_after=stop_after,
        per_sample=per_sample,
    )
    assert got == expected


def test_shard_local_settings_are_part_of_the_cursor(sources):
    dataset = sources["tar"]
    state = factory(dataset, "shard_local")().state_dict()
    other = ResumableDataLoader(
        dataset,
        batch_size=4,
        shuffle=True,
        seed=17,
        shard_shuffle=ShardShuffle(window=3, buffer_size=4),
    )
    with pytest.raises(Exception, match="window"):
        other.load_state_dict(state)


def test_cursor_from_another_shard_set_is_refused(tmp_path):
    five_by_nine = write_tar_shards(tmp_path / "a", num_shards=5, samples_per_shard=9)
    nine_by_five = write_tar_shards(tmp_path / "b", num_shards=9, samples_per_shard=5)
    first = ResumableDataLoader(Augment(TarShardDataset(five_by_nine)), batch_size=4, seed=1)
    state = run(first, 1, stop_after=2, per_sample=per_sample)[1]
    other = ResumableDataLoader(Augment(TarShardDataset(nine_by_five)), batch_size=4, seed=1)
    with pytest.raises(StateDictError, match=r"fingerprint\.dataset"):
        other.load_state_dict(state)
