"""TarShardDataset: WebDataset's samples by id, decoding, bad ids, pickling, fork, URLs."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from shard_factory import sample_members, write_parquet_shards, write_tar, write_tar_shards
from webdataset.tariterators import group_by_keys, tar_file_expander

from resumable_loader import ResumableDataLoader, ShardShuffle
from resumable_loader.errors import ConfigError, SampleIndexError, ShardError
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.sources import _indexed
from resumable_loader.sources._blocks import BlockCache
from resumable_loader.sources.webdataset import TarShardDataset


def webdataset_samples(paths: list[str]) -> list[dict]:
    """The samples webdataset's own tar reader yields for ``paths``."""
    samples = []
    for path in paths:
        with open(path, "rb") as stream:
            samples += group_by_keys(tar_file_expander([{"url": path, "stream": stream}]))
    return samples


@pytest.fixture
def shards(tmp_path):
    return write_tar_shards(tmp_path, num_shards=3, samples_per_shard=4)


class TestSamples:
    @pytest.mark.slow
    def test_every_sample_is_what_was_written_and_what_webdataset_reads(self, shards):
        dataset = TarShardDataset(shards)
        assert len(dataset) == 12 and dataset.shard_sizes.tolist() == [4, 4, 4]
        assert dataset.shard_sizes.dtype == np.int64 and dataset.fingerprint
        for i in range(12):
            sample = dataset[i]
            assert sample["__key__"] == f"sample{i:06d}" and sample["__url__"] == shards[i // 4]
            assert [(k, sample[k]) for k in ("bin", "cls", "json")] == sample_members(i)
        assert [dataset[i] for i in range(12)] == webdataset_samples(shards)

    def test_ids_behave_like_a_lists(self, shards):
        dataset = TarShardDataset(shards)
        assert dataset[-1] == dataset[11] and dataset[np.int64(3)] == dataset[3]
        for bad in (12, -13):
            with pytest.raises(IndexError, match=f"sample id {bad} out of range for 12"):
                dataset[bad]
        for bad in (1.0, True, "1"):
            with pytest.raises(TypeError):
                dataset[bad]

    def test_one_read_per_sample_counted_in_bytes_read(self, shards):
        dataset = TarShardDataset(shards)
        dataset[5]
        length = dataset.index.spans[5][1]
        # three headers, the padded bin and cls data, then the json data: nothing more
        assert dataset.bytes_read == length == 3 * 512 + 512 + 512 + len(b'{"index": 5}')
        dataset[5]
        assert dataset.bytes_read == 2 * length

    def test_from_an_index_object_or_file(self, shards, tmp_path):
        index = ShardedIndex.build(shards, out=tmp_path / "x.rlindex", progress=False)
        assert TarShardDataset(index)[7] == TarShardDataset(tmp_path / "x.rlindex")[7]
        assert TarShardDataset(str(tmp_path / "shard-*.tar")).fingerprint == index.fingerprint

    def test_an_index_file_is_recognised_by_content_whatever_its_name(self, shards, tmp_path):
        index = ShardedIndex.build(shards, out=tmp_path / "train.index", progress=False)
        dataset = TarShardDataset(tmp_path / "train.index")
        assert dataset.index.path == index.path and dataset[7] == TarShardDataset(shards)[7]
        (tmp_path / "notes.index").write_bytes(b"RLINDEX but no")  # not the 8-byte magic
        with pytest.raises(ConfigError, match=r"all \.tar or all \.parquet files, got \['index'\]"):
            TarShardDataset(tmp_path / "notes.index")

    def test_a_parquet_index_is_refused(self, tmp_path):
        paths = write_parquet_shards(tmp_path, num_shards=1, rows_per_shard=2)
        with pytest.raises(ConfigError, match="is a parquet shard; use ParquetDataset"):
            TarShardDataset(paths)

    def test_remote_shards_through_fsspec(self, tmp_path, shards):
        root = f"memory:///tars-{uuid.uuid4().hex}"
        filesystem = fsspec.filesystem("memory")
        for path in shards:
            filesystem.put(path, f"{root}/{os.path.basename(path)}")
        try:
            dataset = TarShardDataset(f"{root}/shard-{{0000..0002}}.tar", cache_dir=tmp_path / "c")
            assert dataset.index.path.parent == tmp_path / "c"
            local = TarShardDataset(shards)
            assert dataset.fingerprint == local.fingerprint  # same names, sizes and counts
            for i in (0, 6, 11):
                assert {**dataset[i], "__url__": None} == {**local[i], "__url__": None}
            assert dataset[6]["__url__"] == f"{root}/shard-0001.tar"
        finally:
            filesystem.rm(root, recursive=True)


class TestDecode:
    @pytest.fixture
    def image_shard(self, tmp_path):
        image = pytest.importorskip("PIL.Image")
        pixels = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
        png = io.BytesIO()
        image.fromarray(pixels).save(png, format="PNG")
        entries = [("img.png", png.getvalue()), ("img.cls", b"7"), ("img.json", b'{"a": 1}')]
        return write_tar(tmp_path / "img.tar", entries), pixels

    def test_spec_string_uses_webdatasets_image_handler(self, image_shard):
        path, pixels = image_shard
        sample = TarShardDataset([path], decode="rgb8")[0]
        np.testing.assert_array_equal(sample["png"], pixels)
        assert sample["cls"] == 7 and sample["json"] == {"a": 1}  # webdataset's basic handlers

    def test_list_of_specs_and_handlers(self, image_shard):
        path, pixels = image_shard

        def upper_json(extension, data):
            return data.upper() if extension == ".json" else None

        sample = TarShardDataset([path], decode=["torchrgb8", upper_json])[0]
        assert torch.equal(sample["png"], torch.from_numpy(pixels).permute(2, 0, 1))
        assert sample["json"] == b'{"A": 1}'

    def test_any_callable_on_the_sample(self, shards):
        sample = TarShardDataset(shards, decode=lambda s: {**s, "n": len(s)})[0]
        assert sample["n"] == 5

    def test_a_decode_failure_names_shard_key_and_extension(self, tmp_path):
        from webdataset.autodecode import DecodingError

        entries = [("a.cls", b"1"), ("a.png", b"not a png")]
        path = write_tar(tmp_path / "bad.tar", entries)
        dataset = TarShardDataset([path], decode="rgb8")
        with pytest.raises(ShardError) as caught:
            dataset[0]
        assert str(caught.value).startswith(
            f"{path}: cannot decode the 'png' member of sample 'a' (offset 0): "
        )
        assert "fix or remove the member" in str(caught.value)
        assert isinstance(caught.value.__cause__, DecodingError)  # webdataset's, message empty

    def test_errors_of_a_callable_decoder_are_its_own(self, shards):
        def broken(sample):
            raise KeyError("mine")

        with pytest.raises(KeyError, match="mine"):
            TarShardDataset(shards, decode=broken)[0]

    @pytest.mark.parametrize("decode", ["rgb9", [3]])
    def test_bad_decode_is_a_config_error(self, shards, decode):
        with pytest.raises(ConfigError, match="decode="):
            TarShardDataset(shards, decode=decode)


@pytest.fixture
def remote_shards(tmp_path):
    """Four shards of 50 samples (3 KiB each) on fsspec's memory filesystem, and their index."""
    paths = write_tar_shards(tmp_path / "local", num_shards=4, samples_per_shard=50)
    root = f"memory:///readahead-{uuid.uuid4().hex}"
    filesystem = fsspec.filesystem("memory")
    for path in paths:
        filesystem.put(path, f"{root}/{os.path.basename(path)}")
    yield ShardedIndex.for_shards(f"{root}/shard-*.tar", cache_dir=tmp_path / "cache"), paths
    filesystem.rm(root, recursive=True)


def epoch(dataset, shard_shuffle) -> list[dict]:
    loader = ResumableDataLoader(
        dataset, batch_size=8, shuffle=True, seed=3, shard_shuffle=shard_shuffle, collate_fn=list
    )
    return [sample for batch in loader for sample in batch]


class TestReadAhead:
    def test_remote_shard_local_epoch_reads_each_block_once(self, remote_shards):
        index, local_paths = remote_shards
        shard_bytes = sum(os.path.getsize(p) for p in local_paths)
        dataset = TarShardDataset(index, read_ahead=16 * 1024, prefetch=False)
        samples = epoch(dataset, ShardShuffle(window=2, buffer_size=16))
        local = TarShardDataset(local_paths)
        assert [s["__key__"] for s in samples] == [
            s["__key__"] for s in epoch(local, ShardShuffle(2, 16))
        ]
        assert all(s["bin"] == local[int(s["__key__"][6:])]["bin"] for s in samples)
        # each 16 KiB block once: about shard bytes / 16 KiB requests, not one per sample
        assert dataset.bytes_read <= shard_bytes
        assert dataset.read_requests <= -(-shard_bytes // (16 * 1024)) + 4  # 200 samples

    def test_remote_default_is_1_mib_blocks_local_default_a_read_per_sample(self, remote_shards):
        index, local_paths = remote_shards
        remote = TarShardDataset(index, prefetch=False)  # URLs prefetch by default
        epoch(remote, ShardShuffle(window=2, buffer_size=16))
        assert remote.read_requests == 4  # a 150 KiB shard is one block
        local = TarShardDataset(local_paths)
        epoch(local, ShardShuffle(window=2, buffer_size=16))
        assert local.read_requests == 200 and local.bytes_read == int(local.index.spans[:, 1].sum())

    def test_under_a_global_shuffle_read_ahead_multiplies_the_bytes_read(self, remote_shards):
        index, _ = remote_shards
        delivered = int(index.spans[:, 1].sum())
        ahead = TarShardDataset(index, read_ahead=16 * 1024, cache_bytes=32 * 1024, prefetch=False)
        epoch(ahead, None)
        assert ahead.bytes_read > 3 * delivered  # a 16 KiB block for most 3 KiB samples
        direct = TarShardDataset(index, read_ahead=0, prefetch=False)
        epoch(direct, None)
        assert (direct.read_requests, direct.bytes_read) == (200, delivered)

    def test_pickling_and_close_drop_the_blocks(self, remote_shards):
        index, _ = remote_shards
        dataset = TarShardDataset(index, prefetch=False)
        dataset[0]
        assert dataset._blocks is not None
        assert pickle.loads(pickle.dumps(dataset))._blocks is None
        dataset.close()
        assert dataset._blocks is None and dataset[1]["__key__"] == "sample000001"

    @pytest.mark.parametrize(("name", "bad"), [("read_ahead", -1), ("cache_bytes", 2.0)])
    def test_bad_sizes(self, shards, name, bad):
        with pytest.raises(ConfigError, match=f"{name} must be an int >= 0"):
            TarShardDataset(shards, **{name: bad})


class TestBlockCache:
    DATA = bytes(range(256)) * 4  # a 1 KiB "shard"

    def cache(self, capacity=10**6):
        fetches = []

        def fetch(offset, count):
            fetches.append((offset, count))
            return self.DATA[offset : offset + count]

        return BlockCache(100, capacity), fetches, fetch

    def test_spans_across_blocks_and_runs_of_missing_blocks(self):
        cache, fetches, fetch = self.cache()
        assert cache.read(0, 150, 20, fetch) == self.DATA[150:170]
        assert cache.read(0, 120, 400, fetch) == self.DATA[120:520]  # block 1 is cached
        assert fetches == [(100, 100), (200, 400)]  # blocks 2-5 in one fetch
        assert cache.read(0, 990, 100, fetch) == self.DATA[990:]  # short at the end
        assert cache.read(1, 150, 20, fetch) == self.DATA[150:170]  # another shard's block
        assert fetches[2:] == [(900, 200), (100, 100)]

    def test_lru_bounded_by_bytes(self):
        cache, fetches, fetch = self.cache(capacity=250)
        for start in (0, 100, 0, 200, 100, 0):
            cache.read(0, start, 10, fetch)
        # blocks 0, 1, then 2 evicts 1 (0 was used since), so 1 and 0 are fetched again
        assert [offset for offset, _ in fetches] == [0, 100, 200, 100, 0]
        assert list(cache._blocks) == [(0, 1), (0, 0)] and cache._blocks.total == 200


class TestProcesses:
    def test_pickle_is_small_and_reopens_files(self, tmp_path):
        small = TarShardDataset(write_tar_shards(tmp_path / "s", num_shards=1, samples_per_shard=2))
        big = TarShardDataset(write_tar_shards(tmp_path / "b", num_shards=1, samples_per_shard=400))
        big[0]
        assert abs(len(pickle.dumps(big)) - len(pickle.dumps(small))) < 64
        copy = pickle.loads(pickle.dumps(big))
        assert len(copy._files) == 0 and copy[399] == big[399]

    def test_forked_workers_read_the_same_samples(self, shards):
        dataset = TarShardDataset(shards)
        dataset[0]  # the parent holds an open file the children must not share
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=2,
            multiprocessing_context="fork",
            collate_fn=lambda sample: sample["__key__"],
        )
        assert list(loader) == [f"sample{i:06d}" for i in range(12)]

    def test_open_files_are_bounded(self, shards, monkeypatch):
        monkeypatch.setattr(_indexed, "MAX_OPEN_SHARDS", 2)
        dataset = TarShardDataset(shards)
        for i in (0, 4, 8, 0):
            dataset[i]
        assert list(dataset._files) == [2, 0]
        dataset.close()
        assert len(dataset._files) == 0 and dataset[8]["__key__"] == "sample000008"


class TestChangedShards:
    def test_a_shard_cut_after_indexing(self, shards, tmp_path):
        index = ShardedIndex.build(shards, out=tmp_path / "i.rlindex", progress=False)
        os.truncate(shards[1], 3000)
        with pytest.raises(SampleIndexError, match=r"shard-0001\.tar: changed"):
            TarShardDataset(tmp_path / "i.rlindex")
        dataset = TarShardDataset(index)  # an index loaded earlier no longer matches
        with pytest.raises(ShardError, match=r"shard-0001\.tar: changed .* when this process"):
            dataset[5]

    def test_a_shard_rewritten_before_a_process_opens_it_is_refused_by_the_fast_check(self, shards):
        # the same size, other samples: read with the old offsets, the default check cut an
        # old key and a new payload (its magic in place); each process stats a shard it opens
        dataset = TarShardDataset(shards)
        assert dataset[0]["__key__"] == "sample000000"
        stat = os.stat(shards[1])
        data = Path(shards[1]).read_bytes().replace(b"sample", b"SAMPLE")
        Path(shards[1]).write_bytes(data)
        os.utime(shards[1], (stat.st_atime + 5, stat.st_mtime + 5))
        with pytest.raises(ShardError, match=r"shard-0001\.tar: changed .*rebuild the index"):
            dataset[5]

    def test_a_shard_rewritten_after_indexing(self, shards, tmp_path):
        index = ShardedIndex.build(shards, out=tmp_path / "i", progress=False)
        dataset = TarShardDataset(index, check="full")  # the fast check sees a tar header
        dataset[0]  # open (mapped) before the rewrite: its open-time stat saw it unchanged
        with tarfile.open(shards[0], "w") as tar:
            tar.addfile(tarfile.TarInfo("x" * 600), io.BytesIO(b""))
        with pytest.raises(ShardError, match=r"shard-0000\.tar: .*offset 0.*rebuild"):
            dataset[0]

    def test_a_shard_deleted_after_indexing(self, shards):
        dataset = TarShardDataset(shards)
        os.remove(shards[2])
        with pytest.raises(ShardError, match=r"shard-0002\.tar: cannot open the shard"):
            dataset[9]


def rewrite_header(
    path: str,
    offset: int,
    *,
    name: str | None = None,
    size: int | None = None,
    flip: int | None = None,
    checksum: bool = True,
) -> None:
    """Edit the tar header at ``offset`` in place, keeping the shard's size and mtime (so the
    index still matches it by stat): a new name or size (with a valid checksum unless
    ``checksum`` is False), or one flipped bit (``flip``: the bit's number in the header)."""
    stat = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        block = bytearray(f.read(512))
        if name is not None:
            block[:100] = name.encode().ljust(100, b"\0")
        if size is not None:
            block[124:136] = b"%011o\0" % size
        if checksum:
            block[148:156] = b"%06o\0 " % tarfile.calc_chksums(bytes(block))[0]
        if flip is not None:
            block[flip // 8] ^= 1 << flip % 8
        f.seek(offset)
        f.write(block)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


class TestHeaderDamageAfterIndexing:
    """Damage a stat cannot see (same size and mtime): with ``check="full"`` each member's
    header is checked in the read of its sample. Sample 1 of shard 0 spans [3072, 5644): three
    headers at 3072, 4096 and 5120 (bin, cls, json), each followed by its data (a block; 12
    bytes for the json)."""

    @pytest.fixture(params=[0, 4096], ids=["map", "read-ahead"])
    def dataset(self, request, shards):
        return TarShardDataset(shards, read_ahead=request.param, check="full")

    @pytest.mark.parametrize("header", [3072, 4096, 5120])
    @pytest.mark.parametrize("byte", [11, 13])  # the key's last digit, the extension's first
    def test_a_flipped_bit_in_a_name_fails_the_checksum(self, dataset, shards, header, byte):
        rewrite_header(shards[0], header, flip=byte * 8, checksum=False)
        with pytest.raises(
            ShardError,
            match=rf"shard-0000\.tar: the sample at offset 3072 is damaged: corrupt tar header at "
            rf"offset {header} \(bad checksum: it records \d+, its bytes sum to \d+\); .*rebuild "
            "the index",
        ):
            dataset[1]
        assert dataset[0]["__key__"] == "sample000000" and dataset[2]["__key__"] == "sample000002"

    def test_an_epoch_raises_instead_of_yielding_a_renamed_key(self, shards):
        dataset = TarShardDataset(shards, check="full")
        loader = ResumableDataLoader(dataset, batch_size=4, collate_fn=list)
        rewrite_header(shards[0], 3072, flip=11 * 8, checksum=False)  # sample000001 -> ...0
        with pytest.raises(
            ShardError, match=r"shard-0000\.tar: .* corrupt tar header at offset 3072"
        ):
            [sample["__key__"] for batch in loader for sample in batch]

    @pytest.mark.parametrize(
        ("header", "name", "found"),
        [
            (5120, "sample000002.json", r"'sample000001' .*'sample000002\.json' at offset 5120"),
            (3072, "sample000000.bin", r"'sample000000' .*'sample000001\.cls' at offset 4096"),
        ],
    )
    def test_a_valid_header_of_another_key_is_refused(self, dataset, shards, header, name, found):
        rewrite_header(shards[0], header, name=name)
        with pytest.raises(
            ShardError,
            match=rf"shard-0000\.tar: the sample at offset 3072 should hold one key: expected "
            rf"{found}; .*rebuild the index",
        ):
            dataset[1]

    @pytest.mark.parametrize(
        ("name", "found"),
        [
            (
                "sample000001.txt",
                r"has member 'sample000001\.txt' at offset 4096: extension 'txt' is not among "
                r"the indexed \['bin', 'cls', 'json'\]",
            ),
            (
                "sample000001.json",
                r"has two 'json' members, at offsets 4096 and 5120 \('sample000001\.json'\)",
            ),
        ],
    )
    def test_a_valid_header_with_another_extension_is_refused(self, dataset, shards, name, found):
        rewrite_header(shards[0], 4096, name=name)
        with pytest.raises(
            ShardError,
            match=rf"shard-0000\.tar: the sample at offset 3072 {found}; .*rebuild the index",
        ):
            dataset[1]

    @pytest.mark.parametrize(
        ("size", "found"),
        [
            (1, r"should end at offset 5644, as indexed; its members end at 5633"),
            (
                600,
                r"is damaged: truncated: member 'sample000001\.json' at offset 5120 needs 6232 "
                r"bytes, the data has 5644",
            ),
        ],
    )
    def test_a_valid_header_with_another_size_is_refused(self, dataset, shards, size, found):
        rewrite_header(shards[0], 5120, size=size)  # the json member, last of the sample
        with pytest.raises(
            ShardError,
            match=rf"shard-0000\.tar: the sample at offset 3072 {found}.*rebuild the index",
        ):
            dataset[1]

    def test_a_sample_member_turned_into_a_directory_is_refused(self, dataset, shards):
        stat = os.stat(shards[0])
        with open(shards[0], "r+b") as f:  # type flag '5' on the first member, checksum valid
            f.seek(3072)
            block = bytearray(f.read(512))
            block[156:157] = b"5"
            block[148:156] = b"%06o\0 " % tarfile.calc_chksums(bytes(block))[0]
            f.seek(3072)
            f.write(block)
        os.utime(shards[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
        with pytest.raises(
            ShardError,
            match=r"shard-0000\.tar: the sample at offset 3072 starts with member "
            r"'sample000001\.cls' at offset 4096; .*rebuild the index",
        ):
            dataset[1]
