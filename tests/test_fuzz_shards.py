"""Fuzzed shards: random, truncated and bit-flipped tar and Parquet files get our errors only."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shard_factory import write_parquet_shards, write_tar_shards

from resumable_loader import ParquetDataset, ResumableLoaderError, ShardedIndex, TarShardDataset

fuzz = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    tar = Path(write_tar_shards(root, num_shards=1, samples_per_shard=6)[0]).read_bytes()
    parquet = Path(write_parquet_shards(root, num_shards=1, rows_per_shard=9)[0]).read_bytes()
    return {"tar": tar, "parquet": parquet}


def damage(data: bytes, draw) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


def index_or_our_error(path: Path, tmp_path: Path, suffix: str):
    try:
        return ShardedIndex.build(
            [str(path)], out=tmp_path / f"fuzz-{suffix}.rlindex", progress=False
        )
    except ResumableLoaderError:
        return None


@fuzz
@given(st.binary(max_size=4096))
def test_random_bytes_as_tar(tmp_path, data):
    path = tmp_path / "random.tar"
    path.write_bytes(data)
    index_or_our_error(path, tmp_path, "random")


@fuzz
@given(st.data())
def test_damaged_tar_reads_back_exactly_or_fails_cleanly(tmp_path, pristine, data):
    path = tmp_path / "damaged.tar"
    path.write_bytes(damage(pristine["tar"], data.draw))
    index = index_or_our_error(path, tmp_path, "damaged")
    if index is None:
        return
    dataset = TarShardDataset(index)
    keys = []
    for i in range(len(dataset)):
        try:
            keys.append(dataset[i]["__key__"])
        except ResumableLoaderError:
            continue
    assert len(keys) == len(set(keys))  # grouping never merges or repeats samples


@fuzz
@given(st.data())
def test_damaged_parquet_fails_cleanly(tmp_path, pristine, data):
    path = tmp_path / "damaged.parquet"
    path.write_bytes(damage(pristine["parquet"], data.draw))
    try:
        dataset = ParquetDataset([str(path)])
        rows = [dataset[i] for i in range(len(dataset))]
    except ResumableLoaderError:
        return
    assert len(rows) == 9
