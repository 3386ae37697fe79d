"""ShardedIndex and the shard datasets: grouping, round trips, bad input, stale shards, CLI."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shard_factory import sample_members, write_parquet_shards, write_tar, write_tar_shards

from resumable_loader import (
    ParquetDataset,
    SampleIndexError,
    ShardedIndex,
    ShardError,
    TarShardDataset,
)
from resumable_loader.cli import main
from resumable_loader.shards import expand_shards


class TestTarIndex:
    def test_round_trip_and_memory_map(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=3, samples_per_shard=5)
        index = ShardedIndex.build(paths, out=tmp_path / "i.rlindex", progress=False)
        loaded = ShardedIndex.load(tmp_path / "i.rlindex")
        assert isinstance(loaded.spans, np.memmap) and loaded.spans.dtype == np.int64
        assert loaded.spans.nbytes == 16 * 15  # 16 bytes a sample
        assert loaded.shard_sizes.tolist() == [5, 5, 5]
        assert loaded.fingerprint == index.fingerprint
        assert loaded.header["fields"] == ["bin", "cls", "json"]
        dataset = TarShardDataset(tmp_path / "i.rlindex")
        for i in range(15):
            sample = dataset[i]
            assert sample["__key__"] == f"sample{i:06d}"
            assert sample["__url__"] == paths[i // 5]
            assert [(k, sample[k]) for k in ("bin", "cls", "json")] == sample_members(i)

    @pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
    def test_long_names(self, tmp_path, fmt):
        key = "d/" + "x" * 150
        path = write_tar(
            tmp_path / "long.tar", [(f"{key}.TXT", b"a"), (f"{key}.cls", b"1")], format=fmt
        )
        sample = TarShardDataset([path])[0]
        assert sample["__key__"] == key and sample["txt"] == b"a" and sample["cls"] == b"1"

    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        st.lists(
            st.lists(
                st.sampled_from(["a", "b.c", "JPG", "x"]), min_size=1, max_size=3, unique=True
            ),
            min_size=1,
            max_size=6,
        )
    )
    def test_grouping_of_random_layouts(self, tmp_path, layout):
        entries = [
            (f"k{i}.{ext}", f"{i}{ext}".encode()) for i, exts in enumerate(layout) for ext in exts
        ]
        path = write_tar(tmp_path / f"g{abs(hash(str(layout)))}.tar", entries)
        dataset = TarShardDataset(
            ShardedIndex.build([path], out=tmp_path / "g.rlindex", progress=False)
        )
        assert len(dataset) == len(layout)
        for i, exts in enumerate(layout):
            sample = dataset[i]
            assert {k for k in sample if not k.startswith("__")} == {e.lower() for e in exts}

    def test_pickled_dataset_reads_in_a_new_process_state(self, tmp_path):
        dataset = TarShardDataset(write_tar_shards(tmp_path, num_shards=1, samples_per_shard=3))
        dataset[0]
        copy = pickle.loads(pickle.dumps(dataset))
        assert copy[2]["__key__"] == "sample000002"
        assert dataset.bytes_read > 0


class TestBadTarInput:
    def test_missing_shard(self, tmp_path):
        with pytest.raises(ShardError, match=r"nope\.tar"):
            TarShardDataset([str(tmp_path / "nope.tar")])

    def test_glob_matching_nothing(self, tmp_path):
        with pytest.raises(ShardError, match="matches no file"):
            expand_shards(str(tmp_path / "*.tar"))

    def test_truncated_tar(self, tmp_path):
        path = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=4)[0]
        os.truncate(path, 2600)
        with pytest.raises(ShardError, match=r"shard-0000.tar.*(truncated|corrupt)"):
            TarShardDataset([path])

    def test_corrupt_header(self, tmp_path):
        path = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=4)[0]
        data = bytearray(Path(path).read_bytes())
        data[2048 : 2048 + 100] = b"\xff" * 100  # the third member's header
        Path(path).write_bytes(bytes(data))
        with pytest.raises(ShardError, match=r"shard-0000.tar.*offset"):
            TarShardDataset([path])

    @pytest.mark.parametrize(
        "entries,match",
        [
            ([("a.x", b"1"), ("b.x", b"2"), ("a.y", b"3")], "reappears"),
            ([("a.x", b"1"), ("a.X", b"2")], "two 'x' members"),
            ([("a.x", b"1"), ("README", b"2")], "no extension"),
        ],
    )
    def test_members_that_do_not_group(self, tmp_path, entries, match):
        path = write_tar(tmp_path / "bad.tar", entries)
        with pytest.raises(ShardError, match=f"bad.tar.*{match}"):
            ShardedIndex.build([path], out=tmp_path / "bad.rlindex", progress=False)

    def test_skip_is_deterministic_and_recorded(self, tmp_path, caplog):
        entries = [("a.x", b"1"), ("b.x", b"2"), ("b.x", b"dup"), ("c.x", b"3"), ("a.y", b"4")]
        path = write_tar(tmp_path / "mixed.tar", entries)
        builds = [
            ShardedIndex.build(
                [path], out=tmp_path / f"{i}.rlindex", progress=False, on_error="skip"
            )
            for i in range(2)
        ]
        assert [b.num_samples for b in builds] == [2, 2]  # b (duplicate) and late a dropped
        assert builds[0].header["skipped"] == builds[1].header["skipped"]
        assert len(builds[0].header["skipped"]) == 2
        assert "skipping" in caplog.text
        assert [TarShardDataset(builds[0])[i]["__key__"] for i in range(2)] == ["a", "c"]


class TestStaleIndex:
    def test_changed_shard_is_detected(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=2, samples_per_shard=3)
        ShardedIndex.build(paths, out=tmp_path / "i.rlindex", progress=False)
        with open(paths[1], "ab") as f:
            f.write(b"\0" * 512)
        with pytest.raises(SampleIndexError, match=r"shard-0001.tar.*changed.*rebuild"):
            ShardedIndex.load(tmp_path / "i.rlindex")

    def test_implicit_index_is_rebuilt(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=3)
        assert len(TarShardDataset(paths)) == 3
        write_tar_shards(tmp_path, num_shards=1, samples_per_shard=5)  # same path, new data
        assert len(TarShardDataset(paths)) == 5

    def test_corrupt_and_missing_index_files(self, tmp_path):
        (tmp_path / "junk.rlindex").write_bytes(b"not an index")
        with pytest.raises(SampleIndexError, match="not a resumable_loader index"):
            ShardedIndex.load(tmp_path / "junk.rlindex")
        with pytest.raises(SampleIndexError, match="not found"):
            ShardedIndex.load(tmp_path / "absent.rlindex")

    def test_atomic_write_leaves_no_partial_file(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=2)
        ShardedIndex.build(paths, out=tmp_path / "i.rlindex", progress=False)
        assert sorted(p.name for p in tmp_path.iterdir() if "rlindex" in p.name) == ["i.rlindex"]


class TestParquet:
    def test_rows_and_row_group_cache(self, tmp_path):
        paths = write_parquet_shards(tmp_path, num_shards=2, rows_per_shard=10)
        dataset = ParquetDataset(paths)
        assert len(dataset) == 20 and dataset.shard_sizes.tolist() == [10, 10]
        assert dataset[13] == {"id": 13, "text": "row 13", "value": 6.5}
        dataset[12]
        assert len(dataset._cache) == 1  # rows 12 and 13 share a row group
        assert ParquetDataset(paths, columns=["id"])[3] == {"id": 3}

    def test_other_schema_is_refused(self, tmp_path):
        paths = write_parquet_shards(tmp_path, num_shards=1, rows_per_shard=4)
        odd = tmp_path / "odd.parquet"
        pq.write_table(pa.table({"id": ["x"]}), odd)
        with pytest.raises(SampleIndexError, match=r"odd\.parquet.*schema"):
            ParquetDataset([*paths, str(odd)])

    def test_damaged_file(self, tmp_path):
        bad = tmp_path / "bad.parquet"
        bad.write_bytes(b"PAR1 but not really")
        with pytest.raises(ShardError, match=r"bad\.parquet"):
            ParquetDataset([str(bad)])

    def test_wrong_dataset_class_for_the_index(self, tmp_path):
        paths = write_parquet_shards(tmp_path, num_shards=1, rows_per_shard=4)
        with pytest.raises(Exception, match="ParquetDataset"):
            TarShardDataset(ShardedIndex.build(paths, out=tmp_path / "p.rlindex", progress=False))


class TestCli:
    def test_index_and_inspect(self, tmp_path, capsys):
        write_tar_shards(tmp_path, num_shards=3, samples_per_shard=4)
        out = tmp_path / "cli.rlindex"
        assert (
            main(
                [
                    "index",
                    str(tmp_path / "shard-{0000..0002}.tar"),
                    "--out",
                    str(out),
                    "--quiet",
                    "--workers",
                    "2",
                ]
            )
            == 0
        )
        assert "indexed 12 samples in 3 tar shards" in capsys.readouterr().out
        assert main(["inspect", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "samples:      12" in printed and "bin, cls, json" in printed
        assert ShardedIndex.load(out).fingerprint in printed

    def test_errors_exit_2_with_a_message(self, tmp_path, capsys):
        assert main(["inspect", str(tmp_path / "none.rlindex")]) == 2
        assert "none.rlindex: index file not found" in capsys.readouterr().err
