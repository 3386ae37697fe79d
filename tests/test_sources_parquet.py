"""ParquetDataset: rows by id, the row-group cache, columns, bad files, pickling, URLs."""

from __future__ import annotations

import os
import pickle
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_factory import parquet_rows, write_parquet_shards, write_tar_shards

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.index import ShardedIndex
from resumable_loader.sources.parquet import ParquetDataset


def row(i: int) -> dict:
    return {key: values[0] for key, values in parquet_rows([i]).items()}


@pytest.fixture
def parts(tmp_path):
    return write_parquet_shards(tmp_path, num_shards=2, rows_per_shard=10, row_group_size=4)


class TestRows:
    def test_every_row_is_what_was_written(self, parts):
        dataset = ParquetDataset(parts)
        assert len(dataset) == 20 and dataset.shard_sizes.tolist() == [10, 10]
        assert dataset.shard_sizes.dtype == np.int64 and dataset.fingerprint
        assert [dataset[i] for i in range(20)] == [row(i) for i in range(20)]

    def test_ids_behave_like_a_lists(self, parts):
        dataset = ParquetDataset(parts)
        assert dataset[-1] == row(19) and dataset[np.int32(3)] == row(3)
        with pytest.raises(IndexError, match="sample id 20 out of range for 20"):
            dataset[20]
        with pytest.raises(TypeError):
            dataset[1.5]

    def test_columns(self, parts):
        assert ParquetDataset(parts, columns=["value", "id"])[3] == {"value": 1.5, "id": 3}
        with pytest.raises(ConfigError, match=r"columns \['nope'\] are not in .*'id', 'text'"):
            ParquetDataset(parts, columns=["id", "nope"])

    def test_a_tar_index_is_refused(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=2)
        with pytest.raises(ConfigError, match="indexes tar shards; use TarShardDataset"):
            ParquetDataset(paths)

    def test_remote_files_through_fsspec(self, parts, tmp_path):
        root = f"memory:///parquet-{uuid.uuid4().hex}"
        filesystem = fsspec.filesystem("memory")
        for path in parts:
            filesystem.put(path, f"{root}/{os.path.basename(path)}")
        try:
            dataset = ParquetDataset(f"{root}/part-*.parquet", cache_dir=tmp_path / "cache")
            assert [dataset[i] for i in (0, 13, 19)] == [row(0), row(13), row(19)]
            dataset.close()
        finally:
            filesystem.rm(root, recursive=True)


class TestRowGroupCache:
    def test_neighbouring_rows_share_one_read(self, parts, monkeypatch):
        dataset = ParquetDataset(parts)
        reads = []
        read_row_group = pq.ParquetFile.read_row_group

        def counting(self, group, **kwargs):
            reads.append(group)
            return read_row_group(self, group, **kwargs)

        monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
        for i in (4, 5, 6, 7, 0, 5, 1, 9):  # groups 1, 1, 1, 1, 0, 1, 0, then 2
            dataset[i]
        assert reads == [1, 0, 2]
        assert list(dataset._cache) == [(0, 0), (0, 2)]  # two groups kept, least recent out

    def test_pickle_drops_cache_and_files(self, parts):
        dataset = ParquetDataset(parts)
        dataset[0]
        copy = pickle.loads(pickle.dumps(dataset))
        assert copy._cache == {} and copy._files == {}
        assert copy[15] == row(15) and copy.fingerprint == dataset.fingerprint


class TestBadFiles:
    def test_other_schema_is_refused(self, parts, tmp_path):
        pq.write_table(pa.table({"id": ["x"]}), tmp_path / "odd.parquet")
        with pytest.raises(ShardError, match=r"odd\.parquet: its schema differs"):
            ParquetDataset([*parts, str(tmp_path / "odd.parquet")])

    def test_damaged_file(self, tmp_path):
        (tmp_path / "bad.parquet").write_bytes(b"PAR1 but not really")
        with pytest.raises(ShardError, match=r"bad\.parquet: not a readable Parquet file"):
            ParquetDataset([str(tmp_path / "bad.parquet")])

    def test_skip_leaves_the_bad_file_out_deterministically(self, parts, tmp_path):
        (tmp_path / "bad.parquet").write_bytes(b"PAR1 but not really")
        shards = [parts[0], str(tmp_path / "bad.parquet"), parts[1]]
        dataset = ParquetDataset(shards, on_error="skip")
        assert dataset.shard_sizes.tolist() == [10, 0, 10] and dataset[10] == row(10)
        assert ParquetDataset(shards, on_error="skip").fingerprint == dataset.fingerprint

    def test_file_replaced_after_indexing(self, parts, tmp_path):
        dataset = ParquetDataset(ShardedIndex.build(parts, out=tmp_path / "i", progress=False))
        with open(parts[1], "r+b") as f:
            f.seek(-8, os.SEEK_END)
            f.write(b"garbage!")  # the footer's length and magic
        with pytest.raises(ShardError, match=r"part-0001\.parquet: cannot open the shard"):
            dataset[12]
