"""ShardedIndex: build/load round trips, grouping as WebDataset does, bad input, stale shards."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shard_factory import write_parquet_shards, write_tar, write_tar_shards
from webdataset.tariterators import group_by_keys, tar_file_expander

from resumable_loader import TarShardDataset, cli
from resumable_loader.errors import ConfigError, SampleIndexError, ShardError
from resumable_loader.index import file as index_file
from resumable_loader.index.sharded import ShardedIndex, default_index_path
from resumable_loader.index.tar import scan_tar

examples = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def build(paths, tmp_path: Path, name: str = "i.rlindex", **options) -> ShardedIndex:
    return ShardedIndex.build(paths, out=tmp_path / name, progress=False, **options)


def is_memory_mapped(array: np.ndarray) -> bool:
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return base is not None


def keys_and_extensions(index: ShardedIndex) -> list[tuple[str, list[str]]]:
    """Every sample's key and extensions, read back through the index's spans."""
    from resumable_loader.index.tar import read_sample

    out = []
    for (start, length), shard in zip(
        index.spans, np.repeat(np.arange(index.num_shards), index.shard_sizes), strict=True
    ):
        with open(index.shard_urls[shard], "rb") as f:
            f.seek(start)
            sample = read_sample(f.read(length), path="", start=start, extensions=index.fields)
        out.append((sample.pop("__key__"), sorted(sample)))
    return out


def webdataset_grouping(path: str) -> list[tuple[str, list[str]]]:
    """What webdataset itself makes of a tar file."""
    with open(path, "rb") as stream:
        samples = list(group_by_keys(tar_file_expander([{"url": path, "stream": stream}])))
    return [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in samples]


class TestBuildAndLoad:
    def test_round_trip_is_memory_mapped_at_4_bytes_a_record_column(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=3, samples_per_shard=5)
        built = build(paths, tmp_path)
        loaded = ShardedIndex.load(tmp_path / "i.rlindex")
        assert is_memory_mapped(loaded.records) and not loaded.records.flags.writeable
        # shard, start, length, key offset, key length, (offset, size) x 3 extensions
        assert loaded.records.dtype == np.uint32 and loaded.records.nbytes == 4 * 11 * 15
        assert loaded.checksums.dtype == np.uint32 and loaded.checksums.shape == (15, 3)
        np.testing.assert_array_equal(loaded.records, built.records)
        np.testing.assert_array_equal(loaded.spans, built.records[:, 1:3])
        assert loaded.shard_sizes.dtype == np.int64 and loaded.shard_sizes.tolist() == [5, 5, 5]
        assert (loaded.num_samples, loaded.num_shards, loaded.format) == (15, 3, "tar")
        assert loaded.shard_urls == paths and loaded.fields == ["bin", "cls", "json"]
        assert loaded.fingerprint == built.fingerprint and len(loaded.fingerprint) == 24

    @pytest.mark.parametrize(("sample_id", "where"), [(0, (0, 0)), (4, (0, 4)), (5, (1, 0))])
    def test_locate(self, tmp_path, sample_id, where):
        index = build(write_tar_shards(tmp_path, num_shards=3, samples_per_shard=5), tmp_path)
        assert index.locate(sample_id) == where
        with pytest.raises(IndexError, match="15"):
            index.locate(15)

    def test_parallel_build_equals_serial_build_and_shows_progress(self, tmp_path, capfd):
        paths = write_tar_shards(tmp_path, num_shards=4, samples_per_shard=3)
        serial = build(paths, tmp_path, "serial.rlindex", workers=1)
        assert capfd.readouterr().err == ""
        parallel = ShardedIndex.build(paths, out=tmp_path / "parallel.rlindex", workers=2)
        progress = capfd.readouterr().err
        assert progress.startswith("\rindexing [") and progress.endswith("] 4/4 shards\n")
        np.testing.assert_array_equal(serial.spans, parallel.spans)
        assert serial.fingerprint == parallel.fingerprint

    def test_a_failed_parallel_build_reports_the_first_bad_shard_in_order(self, tmp_path, capfd):
        # the first bad shard takes long to scan (damage at its end), the second fails at once
        slow = write_tar_shards(tmp_path / "slow", num_shards=1, samples_per_shard=3000)[0]
        os.truncate(slow, 3000 * 3 * 1024 - 100)  # inside the last member (3 of 1 KiB a sample)
        fast = write_tar(tmp_path / "fast.tar", [("README", b"no extension")])
        good = write_tar(tmp_path / "good.tar", [("a.x", b"1")])
        for _ in range(3):
            with pytest.raises(ShardError, match=r"slow/shard-0000\.tar: truncated"):
                ShardedIndex.build([good, slow, fast], out=tmp_path / "x.rlindex", workers=2)
            progress = capfd.readouterr().err
            assert progress.endswith("] 1/3 shards\n")  # the line is ended

    def test_pickles_as_its_path(self, tmp_path):
        small = build(write_tar_shards(tmp_path / "s", num_shards=1, samples_per_shard=2), tmp_path)
        large = build(
            write_tar_shards(tmp_path / "l", num_shards=2, samples_per_shard=300),
            tmp_path,
            "l.rlindex",
        )
        assert (
            len(pickle.dumps(large)) < 300
            and len(pickle.dumps(large)) - len(pickle.dumps(small)) < 20
        )
        copy = pickle.loads(pickle.dumps(large))
        assert is_memory_mapped(copy.spans) and copy.fingerprint == large.fingerprint

    def test_unpickling_a_rebuilt_index_is_refused(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=2)
        data = pickle.dumps(build(paths, tmp_path))
        build(write_tar_shards(tmp_path, num_shards=1, samples_per_shard=3), tmp_path)
        with pytest.raises(SampleIndexError, match="rebuilt"):
            pickle.loads(data)

    def test_fingerprint_survives_a_move_but_not_a_change(self, tmp_path):
        paths = write_tar_shards(tmp_path / "a", num_shards=2, samples_per_shard=3)
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        moved = [p.replace("/a/", "/b/") for p in paths]
        assert build(paths, tmp_path).fingerprint == build(moved, tmp_path, "b.rlindex").fingerprint
        write_tar_shards(tmp_path / "b", num_shards=2, samples_per_shard=4)
        assert build(paths, tmp_path).fingerprint != build(moved, tmp_path, "b.rlindex").fingerprint

    def test_default_path_is_beside_the_first_shard_or_in_the_cache_dir(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=2, samples_per_shard=1)
        beside = default_index_path(paths)
        assert beside.parent == tmp_path and beside.name.startswith(".shard-0000.tar.")
        assert default_index_path(paths, tmp_path / "cache").parent == tmp_path / "cache"
        assert default_index_path(paths[:1]) != beside  # the hash covers the whole list
        index = ShardedIndex.for_shards(paths)
        assert index.path == beside and ShardedIndex.for_shards(paths).path == beside

    def test_mixed_or_unknown_formats_are_refused(self, tmp_path):
        tars = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=1)
        parquets = write_parquet_shards(tmp_path, num_shards=1, rows_per_shard=1)
        with pytest.raises(ConfigError, match=r"all \.tar or all \.parquet"):
            build([*tars, *parquets], tmp_path)
        packed = tmp_path / "shard.tar.gz"
        packed.write_bytes(b"x")
        with pytest.raises(ConfigError, match=r"shard\.tar\.gz: a compressed tar.*decompress"):
            build([str(packed)], tmp_path)
        with pytest.raises(ConfigError, match="on_error"):
            build(tars, tmp_path, on_error="ignore")
        with pytest.raises(ConfigError, match="workers"):
            build(tars, tmp_path, workers=0)


class TestCommandLine:
    def test_index_out_must_end_in_rlindex(self, tmp_path, capsys):
        paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=2)
        assert cli.main(["index", *paths, "--out", str(tmp_path / "train.index"), "--quiet"]) == 2
        assert capsys.readouterr().err == (
            f"resumable-loader index: error: --out {tmp_path}/train.index: index files end in "
            f".rlindex, the name the datasets load as an index and no shard has; use --out "
            f"{tmp_path}/train.rlindex\n"
        )
        assert not (tmp_path / "train.index").exists()
        assert cli.main(["index", *paths, "--out", str(tmp_path / "train.rlindex"), "--quiet"]) == 0
        assert TarShardDataset(str(tmp_path / "train.rlindex")).index.num_samples == 2

    def test_inspect_of_a_directory_is_an_error_not_a_traceback(self, tmp_path, capsys):
        assert cli.main(["inspect", str(tmp_path)]) == 2
        assert "is a directory, not an index file" in capsys.readouterr().err

    @pytest.mark.parametrize("command", ["inspect", "verify-data"])
    def test_a_negative_show_is_refused(self, tmp_path, capsys, command):
        paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=2)
        build(paths, tmp_path)
        with pytest.raises(SystemExit) as exited:
            cli.main([command, str(tmp_path / "i.rlindex"), "--show", "-1"])
        assert exited.value.code == 2
        assert "argument --show: '-1' is not a count" in capsys.readouterr().err


class TestTarGrouping:
    @pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
    def test_long_names(self, tmp_path, fmt):
        # USTAR splits a path under 256 characters into prefix/name; GNU and pax go beyond
        key = "dir/" * 20 + "k" if fmt == tarfile.USTAR_FORMAT else "d/" + "é" * 150
        entries = [(f"{key}.TXT", b"a"), (f"{key}.cls", b"1"), ("next.cls", b"2")]
        path = write_tar(tmp_path / "long.tar", entries, format=fmt)
        index = build([path], tmp_path)
        assert keys_and_extensions(index) == [(key, ["cls", "txt"]), ("next", ["cls"])]
        assert keys_and_extensions(index) == webdataset_grouping(path)

    @examples
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["k", "dir/k", "a.b/k", "x" * 120]),
                st.lists(st.sampled_from(["a", "b.c", "JPG", "tar.gz"]), min_size=1, max_size=3),
            ),
            min_size=1,
            max_size=6,
        ),
        st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    )
    def test_random_layouts_group_as_webdataset_groups_them(self, tmp_path, layout, fmt):
        entries = [
            (f"{stem}{i}.{extension}", bytes([i]) * i)
            for i, (stem, extensions) in enumerate(layout)
            for extension in dict.fromkeys(extensions)
        ]
        path = write_tar(tmp_path / "layout.tar", entries, format=fmt)
        assert keys_and_extensions(build([path], tmp_path)) == webdataset_grouping(path)

    @pytest.mark.parametrize(
        ("names", "expected"),
        [
            (["dir/.hidden.jpg", "dir/.hidden.TXT"], [("dir/", ["hidden.jpg", "hidden.txt"])]),
            (["dir/sub/.jpg", "k.jpg"], [("dir/sub/", ["jpg"]), ("k", ["jpg"])]),
            (["d/.a.jpg", "d/.b.txt"], [("d/", ["a.jpg", "b.txt"])]),  # one key: "d/"
        ],
    )
    def test_dot_files_group_as_webdataset_groups_them(self, tmp_path, names, expected):
        # base_plus_ext: with no key between the last "/" and the first dot, the key is the
        # directory path itself and the whole basename past the dot the extension
        path = write_tar(tmp_path / "dots.tar", [(name, b"x") for name in names])
        assert keys_and_extensions(build([path], tmp_path)) == expected
        assert webdataset_grouping(path) == expected

    def test_metadata_and_non_regular_members_are_not_samples(self, tmp_path):
        path = tmp_path / "meta.tar"
        with tarfile.open(path, "w") as tar:
            tar.addfile(tarfile.TarInfo("__index__"))
            directory = tarfile.TarInfo("a")
            directory.type = tarfile.DIRTYPE
            tar.addfile(directory)
            for name in ("a/x.txt", "a/x.cls"):
                tar.addfile(tarfile.TarInfo(name))
        index = build([str(path)], tmp_path)
        assert keys_and_extensions(index) == [("a/x", ["cls", "txt"])]
        assert keys_and_extensions(index) == webdataset_grouping(str(path))


class TestBadTarInput:
    def test_missing_shard(self, tmp_path):
        with pytest.raises(ShardError, match=r"nope\.tar: shard not found"):
            build([str(tmp_path / "nope.tar")], tmp_path)

    @pytest.mark.parametrize("size", [100, 512, 1000, 2600, 6144])
    def test_truncated_tar_names_file_and_offset(self, tmp_path, size):
        path = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=4)[0]
        os.truncate(path, size)
        with pytest.raises(ShardError, match=r"shard-0000\.tar: .*truncated.*offset \d+"):
            build([path], tmp_path)

    def test_corrupt_header_names_its_offset(self, tmp_path):
        path = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=4)[0]
        data = bytearray(Path(path).read_bytes())
        data[2048 : 2048 + 100] = b"\xff" * 100  # the third member's header
        Path(path).write_bytes(bytes(data))
        with pytest.raises(ShardError, match=r"shard-0000\.tar: corrupt tar header at offset 2048"):
            build([path], tmp_path)

    def test_a_blank_checksum_is_damage_whatever_the_bytes_sum_to(self, tmp_path):
        # checksums are compared modulo 65521 (zlib.adler32's byte sum): a blank field reads
        # as -1, which a header summing to 65520 would match; fields walk() ignores (the link
        # name, GNU's time fields) are filled to reach that sum
        path = write_tar(tmp_path / "blank.tar", [("a.x", b"1")], format=tarfile.GNU_FORMAT)
        data = bytearray(Path(path).read_bytes())
        data[148:156] = b"\0" * 8
        free = [*range(157, 257), *range(345, 512)]
        for i in free:
            data[i] = 0
        need = 65520 - (sum(data[:512]) - sum(data[148:156]) + 256)
        for i in free:
            data[i], need = min(need, 255), need - min(need, 255)
        assert need == 0 and (sum(data[:512]) - sum(data[148:156]) + 256) % 65521 == 65520
        Path(path).write_bytes(bytes(data))
        with pytest.raises(ShardError, match=r"corrupt tar header at offset 0 \(bad checksum: it"):
            build([path], tmp_path)

    @pytest.mark.parametrize(
        ("entries", "match"),
        [
            ([("a.x", b"1"), ("b.x", b"2"), ("a.y", b"3")], r"key 'a' reappears at offset 2048"),
            ([("a.x", b"1"), ("a.X", b"2")], r"sample 'a' has two 'x' members \(offset 1024\)"),
            ([("a.x", b"1"), ("README", b"2")], r"member 'README' at offset 1024 has no ext"),
        ],
    )
    def test_members_that_do_not_group(self, tmp_path, entries, match):
        path = write_tar(tmp_path / "bad.tar", entries)
        with pytest.raises(ShardError, match=rf"bad\.tar: {match}"):
            build([path], tmp_path)

    def test_skip_is_deterministic_recorded_and_logged(self, tmp_path, caplog):
        entries = [("a.x", b"1"), ("b.x", b"2"), ("b.x", b"dup"), ("c.x", b"3"), ("a.y", b"4")]
        path = write_tar(tmp_path / "mixed.tar", entries)
        with caplog.at_level(logging.WARNING, logger="resumable_loader"):
            first = build([path], tmp_path, "1.rlindex", on_error="skip", workers=2)
        second = build([path], tmp_path, "2.rlindex", on_error="skip")
        assert [key for key, _ in keys_and_extensions(first)] == ["a", "c"]
        assert first.skipped == second.skipped and len(first.skipped) == 2
        assert "'b' has two 'x' members" in first.skipped[0]
        assert "'a' reappears" in first.skipped[1]
        assert all(line in caplog.text for line in first.skipped)
        assert first.fingerprint == second.fingerprint
        assert first.header["on_error"] == "skip"

    def test_skips_are_logged_once_at_every_load_not_per_worker(self, tmp_path, caplog):
        path = write_tar(tmp_path / "dup.tar", [("a.x", b"1"), ("a.x", b"2"), ("b.x", b"3")])
        built = build([path], tmp_path, on_error="skip")
        (line,) = built.skipped
        for load in (
            lambda: ShardedIndex.load(tmp_path / "i.rlindex"),
            lambda: ShardedIndex.for_shards([path], on_error="skip"),  # built, then reloaded
            lambda: ShardedIndex.for_shards([path], on_error="skip"),
        ):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="resumable_loader"):
                index = load()
            (record,) = caplog.records
            assert record.name == "resumable_loader" and record.getMessage() == (
                f"{index.path} leaves out (built with on_error='skip'; the same in every run "
                f"and resume):\n  {line}"
            )
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="resumable_loader"):
            pickle.loads(pickle.dumps(built))  # what a spawned worker does: no log
            build(write_tar_shards(tmp_path, num_shards=1, samples_per_shard=1), tmp_path, "c")
        assert caplog.records == []  # nor does an index that skipped nothing

    def test_a_long_skip_list_is_logged_in_part(self, tmp_path, caplog):
        entries = [item for i in range(30) for item in [(f"k{i}.x", b"1"), (f"k{i}.x", b"2")]]
        path = write_tar(tmp_path / "dups.tar", entries)
        with caplog.at_level(logging.WARNING, logger="resumable_loader"):
            index = build([path], tmp_path, on_error="skip")
        assert len(index.skipped) == 30 and caplog.text.count("two 'x' members") == 20
        assert f"... and 10 more (resumable-loader inspect {index.path} --show 30" in caplog.text

    def test_skip_after_damage_drops_the_rest_and_names_the_cut_sample(self, tmp_path):
        path = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=4)[0]
        os.truncate(path, 7 * 1024 + 100)  # inside sample 2's second member
        index = build([path], tmp_path, on_error="skip")
        assert index.num_samples == 2
        assert "truncated" in index.skipped[0]
        assert "sample 'sample000002' at offset 6144 dropped" in index.skipped[1]

    def test_scan_without_end_marker_is_truncation(self, tmp_path):
        path = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=2)[0]
        os.truncate(path, 6 * 1024)  # exactly after a member: only the end marker is missing
        with pytest.raises(ShardError, match="without the end-of-archive marker"):
            scan_tar(path)


class TestParquetIndex:
    def test_row_groups_and_columns(self, tmp_path):
        paths = write_parquet_shards(tmp_path, num_shards=2, rows_per_shard=10, row_group_size=4)
        index = build(paths, tmp_path)
        assert index.format == "parquet" and index.spans is None
        assert index.row_groups == [[4, 4, 2], [4, 4, 2]]
        assert index.shard_sizes.tolist() == [10, 10] and index.fields == ["id", "text", "value"]
        assert "id: int64" in index.header["schema"]

    def test_other_schema_is_a_shard_error_naming_the_file(self, tmp_path):
        paths = write_parquet_shards(tmp_path, num_shards=1, rows_per_shard=4)
        pq.write_table(pa.table({"id": ["x"]}), tmp_path / "odd.parquet")
        with pytest.raises(ShardError, match=r"odd\.parquet: its schema differs.*part-0000"):
            build([*paths, str(tmp_path / "odd.parquet")], tmp_path)

    def test_skip_keeps_unreadable_and_foreign_files_at_zero_rows(self, tmp_path):
        paths = write_parquet_shards(tmp_path, num_shards=1, rows_per_shard=4)
        pq.write_table(pa.table({"id": ["x"]}), tmp_path / "odd.parquet")
        (tmp_path / "bad.parquet").write_bytes(b"PAR1 but not really")
        shards = [str(tmp_path / "bad.parquet"), *paths, str(tmp_path / "odd.parquet")]
        index = build(shards, tmp_path, on_error="skip")
        assert index.shard_sizes.tolist() == [0, 4, 0] and index.num_shards == 3
        assert [line.split(":")[0] for line in index.skipped] == [shards[0], shards[2]]


class TestStaleAndDamagedIndex:
    def test_changed_size_or_mtime_is_detected(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=2, samples_per_shard=3)
        build(paths, tmp_path)
        os.utime(paths[1], (1, 1))
        with pytest.raises(SampleIndexError, match=r"shard-0001\.tar: changed.*mtime.*rebuild"):
            ShardedIndex.load(tmp_path / "i.rlindex")
        assert ShardedIndex.load(tmp_path / "i.rlindex", verify=False).num_samples == 6

    def test_rebuild_when_asked(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=2, samples_per_shard=3)
        old = build(paths, tmp_path)
        write_tar_shards(tmp_path, num_shards=2, samples_per_shard=4)
        new = ShardedIndex.load(tmp_path / "i.rlindex", rebuild=True)
        assert new.num_samples == 8 and new.fingerprint != old.fingerprint
        assert ShardedIndex.load(tmp_path / "i.rlindex").num_samples == 8

    def test_implicit_index_is_rebuilt_and_on_error_respected(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=3)
        assert ShardedIndex.for_shards(paths).num_samples == 3
        write_tar_shards(tmp_path, num_shards=1, samples_per_shard=5)
        assert ShardedIndex.for_shards(paths).num_samples == 5
        bad = write_tar(tmp_path / "dup.tar", [("a.x", b"1"), ("a.x", b"2"), ("b.x", b"3")])
        assert ShardedIndex.for_shards([bad], on_error="skip").num_samples == 1
        with pytest.raises(ShardError, match="two 'x' members"):
            ShardedIndex.for_shards([bad])  # the skipping index is not reused to raise-mode

    @pytest.mark.parametrize(
        ("damage", "match"),
        [
            (lambda data: b"not an index", "not a resumable_loader index"),
            (lambda data: data[:30], "corrupt"),
            (lambda data: data[: len(data) - 64], "corrupt or truncated"),
            (lambda data: data.replace(b"\xa7version\x04", b"\xa7version\x01"), "version 1"),
        ],
    )
    def test_damaged_index_file(self, tmp_path, damage, match):
        build(write_tar_shards(tmp_path, num_shards=1, samples_per_shard=4), tmp_path)
        path = tmp_path / "i.rlindex"
        path.write_bytes(damage(path.read_bytes()))
        with pytest.raises(SampleIndexError, match=rf"i\.rlindex: .*{match}.*build it with"):
            ShardedIndex.load(path)

    def test_an_older_version_is_refused_naming_the_rebuild_command_which_works(
        self, tmp_path, capsys
    ):
        paths = write_tar_shards(tmp_path, num_shards=2, samples_per_shard=3)
        path = tmp_path / "i.rlindex"
        fingerprint = build(paths, tmp_path).fingerprint
        path.write_bytes(path.read_bytes().replace(b"\xa7version\x04", b"\xa7version\x02"))
        with pytest.raises(SampleIndexError) as refused:
            ShardedIndex.load(path)
        command = f"resumable-loader index {paths[0]} {paths[1]} --out {path}"
        assert f"version 2, this release reads 3 and 4; rebuild it with: {command}" in str(
            refused.value
        )
        assert cli.main([*command.split()[1:], "--quiet"]) == 0
        capsys.readouterr()
        assert ShardedIndex.load(path).fingerprint == fingerprint

    def test_an_older_version_is_upgraded_when_asked(self, tmp_path):
        paths = write_tar_shards(tmp_path, num_shards=2, samples_per_shard=3)
        path = tmp_path / "i.rlindex"
        built = build(paths, tmp_path, on_error="skip")
        path.write_bytes(path.read_bytes().replace(b"\xa7version\x04", b"\xa7version\x02"))
        upgraded = ShardedIndex.load(path, rebuild=True)
        assert upgraded.header["version"] == 4 and upgraded.header["on_error"] == "skip"
        assert upgraded.fingerprint == built.fingerprint  # saved cursors still load
        np.testing.assert_array_equal(upgraded.records, built.records)
        assert ShardedIndex.load(path).header["version"] == 4  # rewritten in place

    def test_missing_index_file(self, tmp_path):
        with pytest.raises(SampleIndexError, match=r"absent\.rlindex: index file not found"):
            ShardedIndex.load(tmp_path / "absent.rlindex")

    def test_failed_write_leaves_the_old_index_and_no_partial_file(self, tmp_path, monkeypatch):
        paths = write_tar_shards(tmp_path, num_shards=1, samples_per_shard=2)
        old = build(paths, tmp_path)
        write_tar_shards(tmp_path, num_shards=1, samples_per_shard=3)

        real_atomic_write = index_file.atomic_write

        @contextlib.contextmanager
        def fail_midway(path):
            with real_atomic_write(path) as f:
                f.write(b"RLINDEX\0partial")
                raise OSError("disk full")

        monkeypatch.setattr(index_file, "atomic_write", fail_midway)
        with pytest.raises(SampleIndexError, match=r"i\.rlindex: cannot write.*disk full"):
            build(paths, tmp_path)
        monkeypatch.undo()
        assert sorted(p.name for p in tmp_path.iterdir() if "rlindex" in p.name) == ["i.rlindex"]
        reloaded = ShardedIndex.load(tmp_path / "i.rlindex", verify=False)
        assert reloaded.fingerprint == old.fingerprint


class TestIndexDigests:
    """Version 4: the header's digest is checked at every read, the arrays' at a load (up to
    CHECKED_AT_LOAD bytes) and by verify-data; any flipped bit is refused or harmless."""

    def test_every_flipped_bit_is_refused_or_reads_the_same_samples(self, tmp_path):
        paths = write_tar_shards(tmp_path / "s", num_shards=2, samples_per_shard=3)
        good = build(paths, tmp_path)
        expected = [TarShardDataset(good)[i] for i in range(good.num_samples)]
        data = (tmp_path / "i.rlindex").read_bytes()
        refused = harmless = 0
        for offset in range(len(data)):
            for bit in (0, 5):
                damaged = bytearray(data)
                damaged[offset] ^= 1 << bit
                (tmp_path / "d.rlindex").write_bytes(damaged)
                try:
                    dataset = TarShardDataset(tmp_path / "d.rlindex")
                except SampleIndexError:
                    refused += 1
                    continue
                assert [dataset[i] for i in range(len(dataset))] == expected, offset
                harmless += 1  # alignment padding
        assert refused > 0.8 * 2 * len(data) and harmless < 64 * 2 * 3

    def test_arrays_above_the_load_limit_are_checked_by_verify_data(self, tmp_path, monkeypatch):
        from resumable_loader.index import sharded
        from resumable_loader.sources.verify_data import verify_data

        paths = write_tar_shards(tmp_path / "s", num_shards=1, samples_per_shard=4)
        index = build(paths, tmp_path)
        data = bytearray((tmp_path / "i.rlindex").read_bytes())
        start = index_file._aligned(index_file._PREFIX + int.from_bytes(data[8:16], "little"))
        data[start + index.header["arrays"]["checksums"]["offset"]] ^= 1  # a member's CRC32C
        (tmp_path / "i.rlindex").write_bytes(data)
        with pytest.raises(SampleIndexError, match=r"damaged index: its 'checksums' array"):
            ShardedIndex.load(tmp_path / "i.rlindex")
        monkeypatch.setattr(sharded, "CHECKED_AT_LOAD", 0)
        assert ShardedIndex.load(tmp_path / "i.rlindex").fingerprint == index.fingerprint
        with pytest.raises(SampleIndexError, match=r"damaged index: its 'checksums' array"):
            verify_data(tmp_path / "i.rlindex")

    def test_a_version_3_file_without_digests_is_still_read(self, tmp_path):
        import msgpack

        paths = write_tar_shards(tmp_path / "s", num_shards=2, samples_per_shard=3)
        index = build(paths, tmp_path)
        header, arrays = index_file.read_index(tmp_path / "i.rlindex")
        del header["digests"]
        header["version"] = 3
        head = msgpack.packb(header)
        start = index_file._aligned(index_file._PREFIX + len(head))
        with open(tmp_path / "v3.rlindex", "wb") as f:
            f.write(index_file.MAGIC + len(head).to_bytes(8, "little") + head)
            for name, array in arrays.items():
                f.seek(start + header["arrays"][name]["offset"])
                f.write(array.tobytes())
        old = ShardedIndex.load(tmp_path / "v3.rlindex")
        assert old.header["version"] == 3 and old.fingerprint == index.fingerprint
        np.testing.assert_array_equal(old.records, index.records)
