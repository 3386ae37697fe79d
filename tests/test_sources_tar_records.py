"""Tar reads by index record: no header parsing, the fast and full checks, batched reads."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from shard_factory import write_parquet_shards, write_tar, write_tar_shards
from webdataset.tariterators import group_by_keys, tar_file_expander

from resumable_loader import ResumableDataLoader, cli
from resumable_loader.errors import SampleIndexError, ShardError
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.index.tar import TarScan, records
from resumable_loader.sources.verify_data import verify_data
from resumable_loader.sources.webdataset import TarShardDataset


@pytest.fixture
def shards(tmp_path):
    return write_tar_shards(tmp_path, num_shards=3, samples_per_shard=4)


def overwrite(path: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` in place, keeping the file's size and mtime (so the index
    still matches it by stat)."""
    stat = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


class TestRecords:
    @pytest.mark.parametrize(
        "fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=str
    )
    def test_keys_of_long_and_prefixed_names_are_webdatasets(self, tmp_path, fmt):
        """A ustar prefix splits a long path (the key is then parsed from the header); GNU
        long names and pax paths hold it whole (taken from the span without parsing)."""
        directory = "d" * 90 + "/" + "e" * 60
        entries = [(f"{directory}/k{i}.{ext}", b"x" * (i + 3)) for i in range(3) for ext in "ab"]
        entries.append(("plain.a", b"p"))
        path = write_tar(tmp_path / "s.tar", entries, format=fmt)
        dataset = TarShardDataset([path])
        with open(path, "rb") as stream:
            expected = list(group_by_keys(tar_file_expander([{"url": path, "stream": stream}])))
        assert [dataset[i] for i in range(len(dataset))] == expected
        key_lengths = dataset.index.records[:, 4].tolist()
        split = fmt == tarfile.USTAR_FORMAT
        assert key_lengths == [0 if split else len(directory) + 3] * 3 + [len("plain")]

    def test_absent_members_are_absent(self, tmp_path):
        path = write_tar(tmp_path / "s.tar", [("a.x", b"1"), ("a.y", b"22"), ("b.y", b"333")])
        dataset = TarShardDataset([path])
        assert [dataset[0]["x"], dataset[0]["y"]] == [b"1", b"22"]
        assert "x" not in dataset[1] and dataset[1]["y"] == b"333"
        assert dataset.index.checksums[1, 0] == 0  # no member, no checksum

    def test_headers_without_the_ustar_magic_are_read_unchecked_by_it(self, tmp_path):
        """Old (v7) tar writers leave the magic out: the index says so and the fast check then
        looks at the length alone."""
        path = write_tar(tmp_path / "s.tar", [("a.x", b"1"), ("b.x", b"22")])
        data = bytearray(Path(path).read_bytes())
        for header in (0, 1024):
            data[header + 257 : header + 265] = bytes(8)  # no magic, no version: v7
            data[header + 148 : header + 156] = (
                b"%06o\0 " % tarfile.calc_chksums(bytes(data[header : header + 512]))[0]
            )
        Path(path).write_bytes(bytes(data))
        dataset = TarShardDataset([path])
        assert dataset.index.header["magic"] is False
        assert [dataset[0]["x"], dataset[1]["x"]] == [b"1", b"22"]

    def test_records_are_int64_past_4_gib(self):
        def scan(start: int) -> TarScan:
            spans = np.array([[start, 1536]])
            members = np.array([[0, 0, 512, 1000]])
            return TarScan(
                spans, np.array([[0, 1]]), members, np.array([7], np.uint32), ["x"], [], True
            )

        small, large = records([scan(0)], ["x"]), records([scan(2**32)], ["x"])
        assert small["records"].dtype == np.uint32 and large["records"].dtype == np.int64
        assert large["records"].tolist() == [[0, 2**32, 1536, 0, 1, 512, 1000]]
        assert large["checksums"].tolist() == [[7]]


class TestFastCheck:
    def test_a_span_without_its_tar_header_is_refused(self, shards):
        dataset = TarShardDataset(shards)
        overwrite(shards[0], 3072, bytes(512))  # sample 1's first header, zeroed
        with pytest.raises(
            ShardError, match=r"shard-0000\.tar: the sample at offset 3072 .*rebuild"
        ):
            dataset[1]
        assert dataset[0]["__key__"] == "sample000000"

    def test_a_changed_payload_passes_the_fast_check_and_fails_the_full_one(self, shards):
        dataset = TarShardDataset(shards)  # indexed here
        overwrite(shards[0], 3072 + 512, b"\xff")  # sample 1's first payload byte
        assert dataset[1]["bin"][:1] == b"\xff"
        with pytest.raises(
            ShardError,
            match=r"shard-0000\.tar: the sample at offset 3072 has a 'bin' member whose CRC32C "
            r"is 0x[0-9a-f]{8}, 0x[0-9a-f]{8} when indexed .*restore it from a good copy, "
            r"or rebuild the index if it was changed on purpose",
        ):
            TarShardDataset(shards, check="full")[1]

    def test_bad_check_is_a_config_error(self, shards):
        from resumable_loader.errors import ConfigError

        with pytest.raises(ConfigError, match=r"check must be one of \('fast', 'full'\), got 'x'"):
            TarShardDataset(shards, check="x")


# key x1 reappears after x2: the index skips x1 with on_error="skip"
BAD_GROUPING = [("x1.jpg", b"J1"), ("x2.jpg", b"J2"), ("x1.cls", b"1")]


class TestVerifyData:
    def test_lists_every_bad_sample_and_goes_on(self, shards, capsys):
        TarShardDataset(shards)  # the index, taken while the shards are good
        assert verify_data(shards).passed
        overwrite(shards[0], 3072 + 512, b"\xff")
        overwrite(shards[2], 512, b"\xff")
        report = verify_data(shards)
        assert report.samples == 12 and len(report.problems) == 2
        assert "shard-0000.tar: the sample at offset 3072" in report.problems[0]
        assert "shard-0002.tar: the sample at offset 0" in report.problems[1]
        assert cli.main(["verify-data", *shards]) == 1
        out = capsys.readouterr().out
        assert "2 of 12 samples failed" in out and "offset 3072" in out

    def test_a_clean_shard_set_passes(self, shards, capsys):
        TarShardDataset(shards)
        assert cli.main(["verify-data", *shards]) == 0
        assert "12 samples" in capsys.readouterr().out

    def test_shards_without_a_current_index_are_refused_not_indexed(self, shards, capsys):
        """An index built from damaged bytes matches them: verify-data never builds one."""
        folder = Path(shards[0]).parent
        before = sorted(os.listdir(folder))
        overwrite(shards[1], 512, b"\xff")  # damaged before any index was taken
        with pytest.raises(SampleIndexError, match=r"no index of these shards at .*known good"):
            verify_data(shards)
        assert sorted(os.listdir(folder)) == before  # and none was left behind
        TarShardDataset(shards)
        os.utime(shards[2], (1, 1))  # a copy with another mtime: the index no longer holds
        assert cli.main(["verify-data", *shards]) == 2
        assert "shard-0002.tar: changed since it was indexed" in capsys.readouterr().err

    def test_copies_are_checked_against_the_originals_index(self, shards, tmp_path, capsys):
        """A copied index still names the originals (and says which files it checked); --index
        checks the copies themselves against the index the originals were taken with."""
        original = TarShardDataset(shards).index.path
        copies = tmp_path / "copy"
        copies.mkdir()
        for shard in shards:  # a plain copy: new mtimes
            (copies / Path(shard).name).write_bytes(Path(shard).read_bytes())
        copied = [str(copies / Path(shard).name) for shard in shards]
        overwrite(copied[1], 512, b"\xff")  # the copy's sample 4 damaged on the way
        folder = Path(shards[0]).parent
        assert cli.main(["verify-data", str(original)]) == 0  # the originals: good
        assert f"of 3 shards in {folder}: OK" in capsys.readouterr().out
        assert cli.main(["verify-data", *reversed(copied), "--index", str(original)]) == 1
        out = capsys.readouterr().out
        assert "1 of 12 samples failed" in out and f"of 3 shards in {copies}:" in out
        assert "copy/shard-0001.tar: the sample at offset 0" in out
        with pytest.raises(SampleIndexError, match=r"indexes 3 shards, but 1 copies were given"):
            verify_data(copied[:1], index=original)
        renamed = copies / "part-2.tar"  # one copy renamed: not paired by position instead
        os.rename(copied[2], renamed)
        with pytest.raises(SampleIndexError, match=r"copies \['part-2.tar'\] match no shard name"):
            verify_data([*copied[:2], str(renamed)], index=original)
        os.rename(renamed, copied[2])
        os.truncate(copied[2], 1024)
        with pytest.raises(SampleIndexError, match=r"shard-0002.tar: 1024 bytes, but .*had"):
            verify_data(copied, index=original)

    def test_an_index_that_skipped_damaged_samples_is_used(self, tmp_path):
        """An index built with on_error='skip' is the one beside the shards: checked against."""
        shards = [str(tmp_path / "good.tar"), str(tmp_path / "bad.tar")]
        for path, members in zip(shards, ([("k0.cls", b"0")], BAD_GROUPING), strict=True):
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        TarShardDataset(shards, on_error="skip")
        report = verify_data(shards)
        assert report.passed and report.samples == 3  # k0, x1, x2: the reappearing x1.cls out
        with pytest.raises(SampleIndexError, match=r"left out 1 damaged sample.*--on-error skip"):
            ShardedIndex.for_shards(shards, build=False)  # "raise" refuses it, saying why

    def test_a_missing_shard_is_named_as_missing(self, shards, capsys):
        TarShardDataset(shards)
        assert cli.main(["verify-data", shards[0], f"{shards[0]}.gone"]) == 2
        assert "shard-0000.tar.gone: shard not found" in capsys.readouterr().err

    def test_parquet_without_an_index_is_refused_and_leaves_none(self, tmp_path, capsys):
        """Parquet shards are checked too (tests/test_sources_parquet.py), against the index
        taken while they were good: none here, and none is built."""
        paths = write_parquet_shards(tmp_path, num_shards=1, rows_per_shard=4)
        assert cli.main(["verify-data", *paths]) == 2
        assert "no index of these shards" in capsys.readouterr().err
        assert os.listdir(tmp_path) == ["part-0000.parquet"]


class TestBatchedReads:
    def test_a_batch_is_its_samples_read_in_shard_and_offset_order(self, shards, monkeypatch):
        dataset = TarShardDataset(shards)
        ids = [11, 0, -1, 5, 4, 3, 0]
        reads = []
        read = dataset._read
        monkeypatch.setattr(dataset, "_read", lambda *span: reads.append(span) or read(*span))
        assert dataset.__getitems__(ids) == [dataset[i] for i in ids]
        batch_reads = reads[: len(ids)]
        assert batch_reads == sorted(batch_reads) and len(batch_reads) == len(ids)

    def test_a_batch_read_outside_the_loader_decodes_each_sample(self, shards):
        dataset = TarShardDataset(shards, decode=lambda sample: sample["__key__"])
        assert dataset.__getitems__([3, 1]) == ["sample000003", "sample000001"]

    @pytest.mark.parametrize("bad", [12, -13, 1.0, True])
    def test_a_bad_id_in_a_batch_is_the_same_error_as_alone(self, shards, bad):
        dataset = TarShardDataset(shards)
        with pytest.raises((IndexError, TypeError)) as alone:
            dataset[bad]
        with pytest.raises(alone.type, match=str(alone.value).replace("(", r"\(")[:40]):
            dataset.__getitems__([0, bad])

    @pytest.mark.parametrize("workers", [0, 2])
    def test_streams_equal_with_and_without_getitems_augmentations_included(self, shards, workers):
        def stream(dataset_type: type) -> list:
            dataset = dataset_type(shards, decode=augment)
            loader = ResumableDataLoader(
                dataset, batch_size=5, shuffle=True, seed=3, num_workers=workers, collate_fn=list
            )
            return [(s["__key__"], s["draws"]) for batch in loader for s in batch]

        batched = stream(TarShardDataset)
        assert batched == stream(OneAtATime) and len({d for _, d in batched}) == 12


def augment(sample: dict) -> dict:
    """A decode that draws from the three global generators, as augmentations do."""
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    return {**sample, "draws": draws}


class OneAtATime(TarShardDataset):
    """The same dataset read a sample at a time (no batched read)."""

    __getitems__ = None
