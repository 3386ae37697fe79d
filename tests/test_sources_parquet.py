"""ParquetDataset: rows by id, the row-group cache, columns, bad files, pickling, URLs."""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_factory import parquet_rows, write_parquet_shards, write_tar_shards

from resumable_loader import ResumableDataLoader, ShardShuffle
from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.index.sharded import ShardedIndex
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
        # none: dataset[i] gave {} and a batched read failed with a zip() ValueError
        with pytest.raises(ConfigError, match=r"columns=\[\] selects none .* columns=None"):
            ParquetDataset(parts, columns=[])
        with pytest.raises(ConfigError, match=r"columns='id': give a list of names, e.g. \['id'\]"):
            ParquetDataset(parts, columns="id")  # not the columns 'i' and 'd'

    def test_a_tar_index_is_refused(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=2)
        with pytest.raises(ConfigError, match="is a tar shard; use TarShardDataset"):
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


@pytest.fixture
def group_reads(monkeypatch):
    """(id of the ParquetFile, row group) of every row-group read from now on."""
    reads = []
    read_row_group = pq.ParquetFile.read_row_group

    def counting(self, group, **kwargs):
        reads.append((id(self), group))
        return read_row_group(self, group, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    return reads


class TestRowGroupCache:
    def test_lru_bounded_by_decoded_bytes(self, parts, group_reads):
        four_rows = ParquetDataset(parts)._row_group(0, 0).nbytes
        dataset = ParquetDataset(parts, cache_bytes=2 * four_rows)
        group_reads.clear()
        for i in (4, 5, 6, 7, 0, 5, 1, 9):  # groups 1, 1, 1, 1, 0, 1, 0, then 2 (two rows)
            dataset[i]
        assert [group for _, group in group_reads] == [1, 0, 2]
        assert list(dataset._cache) == [(0, 0), (0, 2)]  # group 1 was the least recent
        assert dataset._cache.total == sum(t.nbytes for t in dataset._cache.values())
        assert dataset._cache.total <= dataset.cache_bytes

    def test_the_latest_group_is_kept_even_past_the_bound(self, parts, group_reads):
        dataset = ParquetDataset(parts, cache_bytes=0)
        for i in (0, 1, 4, 5):
            dataset[i]
        assert len(group_reads) == 2 and list(dataset._cache) == [(0, 1)]

    @pytest.mark.parametrize("bad", [-1, 1.5, True])
    def test_bad_cache_bytes(self, parts, bad):
        with pytest.raises(ConfigError, match="cache_bytes must be an int >= 0"):
            ParquetDataset(parts, cache_bytes=bad)

    @pytest.mark.parametrize(
        "shard_shuffle", [ShardShuffle(window=4, buffer_size=64), ShardShuffle(8, 128)]
    )
    def test_a_shard_local_epoch_decodes_each_group_once(
        self, tmp_path, group_reads, shard_shuffle
    ):
        paths = write_parquet_shards(tmp_path, num_shards=8, rows_per_shard=200, row_group_size=20)
        dataset = ParquetDataset(paths)
        loader = ResumableDataLoader(
            dataset, batch_size=8, shuffle=True, seed=0, shard_shuffle=shard_shuffle
        )
        assert sorted(i for batch in loader for i in batch["id"].tolist()) == list(range(1600))
        assert len(set(group_reads)) == len(group_reads) == 80  # each group decoded once

    def test_a_bound_of_a_few_groups_past_the_window_suffices(self, tmp_path, group_reads):
        paths = write_parquet_shards(tmp_path, num_shards=8, rows_per_shard=200, row_group_size=20)
        group_bytes = ParquetDataset(paths)._row_group(0, 0).nbytes
        dataset = ParquetDataset(paths, cache_bytes=24 * group_bytes)
        group_reads.clear()
        loader = ResumableDataLoader(
            dataset, batch_size=8, shuffle=True, seed=0, shard_shuffle=ShardShuffle(4, 64)
        )
        assert sum(len(batch["id"]) for batch in loader) == 1600
        assert len(group_reads) <= 1.05 * 80  # 34x-260x with a cache of two groups

    def test_pickle_drops_cache_and_files(self, parts):
        dataset = ParquetDataset(parts)
        dataset[0]
        copy = pickle.loads(pickle.dumps(dataset))
        assert len(copy._cache) == 0 and len(copy._files) == 0
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


def _flip_in_place(path: str, offset: int) -> None:
    """Flip a byte at ``offset`` keeping the file's size and mtime (no stat can see it)."""
    info = os.stat(path)
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0xFF
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


class TestDamageAfterIndexing:
    """Damage that keeps a file's size and mtime: found where Parquet can find it."""

    def rows_file(self, tmp_path, **options) -> tuple[str, int]:
        """A file of 100 string rows, and the offset of row 41's first byte."""
        path = str(tmp_path / "rows.parquet")
        texts = [f"row-{i:04d}" for i in range(100)]
        pq.write_table(
            pa.table({"text": texts}), path, compression="none", use_dictionary=False, **options
        )
        return path, Path(path).read_bytes().index(b"row-0041")

    def test_a_page_with_a_checksum_fails_its_read_and_verify_data(self, tmp_path, capsys):
        from resumable_loader.cli import main

        path, at = self.rows_file(tmp_path, write_page_checksum=True)
        dataset = ParquetDataset([path])
        _flip_in_place(path, at + 5)
        with pytest.raises(ShardError, match=r"rows\.parquet: cannot read row group 0 \(.*CRC"):
            ParquetDataset([path])[41]
        assert main(["verify-data", path]) == 1
        printed = capsys.readouterr().out
        assert "CRC checksum verification failed" in printed
        assert "checked 100 samples" in printed and "100 of 100 samples failed" in printed
        assert len(dataset) == 100

    def test_a_string_that_is_no_longer_utf8_is_a_shard_error(self, tmp_path):
        path, at = self.rows_file(tmp_path)
        ParquetDataset([path])  # indexed while sound
        _flip_in_place(path, at + 1)  # "r" -> 0x8d: not UTF-8
        for read in (lambda d: d[41], lambda d: d.__getitems__([3, 41])):
            with pytest.raises(ShardError, match=r"rows\.parquet: cannot read row group 0 .*utf-8"):
                read(ParquetDataset([path]))

    def test_verify_data_passes_sound_files(self, parts, capsys):
        from resumable_loader.cli import main

        ParquetDataset(parts)  # indexed while sound: verify-data checks against that
        assert main(["verify-data", *parts]) == 0
        assert "checked 20 samples" in capsys.readouterr().out
