"""Token shard formats: each reads back exactly; Megatron files interoperate; bad input is named."""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch
from tokens_factory import (
    documents,
    offsets_of,
    write_megatron,
    write_parquet,
    write_plain,
)

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.tokens import MegatronWriter, TokenDataset, open_shard
from resumable_loader.tokens.megatron import HEADER

DOCS = documents(0, 30, vocab=60_000)


def read(path, dtype=None, column="input_ids"):
    return open_shard(path, dtype=dtype, column=column)


@pytest.mark.parametrize(
    "write",
    [
        lambda d: write_megatron(d, "m", DOCS),
        lambda d: write_megatron(d, "m", DOCS) + ".bin",
        lambda d: write_megatron(d, "m", DOCS) + ".idx",
        lambda d: write_plain(d, "p", DOCS),
        lambda d: write_plain(d, "p", DOCS, npy=False),
        lambda d: write_parquet(d, "q", DOCS),
    ],
    ids=["megatron-prefix", "megatron-bin", "megatron-idx", "npy", "raw-bin", "parquet"],
)
def test_every_format_reads_back_tokens_and_offsets(tmp_path, write, request):
    # dtype= is the raw .bin's; a Megatron .idx records uint16, a Parquet schema int32 here,
    # and a contradicting dtype= is refused (tests/test_outside_fixes.py)
    kind = request.node.callspec.id
    dtype = {"parquet": np.int32}.get(kind, None if kind.startswith("megatron") else np.uint32)
    shard = read(write(tmp_path), dtype=dtype)
    assert np.array_equal(shard.tokens, np.concatenate(DOCS))
    assert np.array_equal(shard.offsets, offsets_of(DOCS))
    assert (shard.num_documents, shard.num_tokens) == (len(DOCS), sum(map(len, DOCS)))


def test_megatron_tokens_are_memory_mapped(tmp_path):
    shard = read(write_megatron(tmp_path, "m", DOCS))
    assert isinstance(shard.tokens, np.memmap)
    assert shard.tokens.dtype == np.uint16


def test_a_dataset_keeps_one_offsets_array_and_maps_an_int64_one(tmp_path):
    one = TokenDataset(write_plain(tmp_path, "p", DOCS), 4)
    assert isinstance(one.offsets, np.memmap)  # the int64 .npy itself: not copied
    parquet = write_parquet(tmp_path, "q", DOCS, value_type=pa.uint32())
    two = TokenDataset([write_plain(tmp_path, "p", DOCS), parquet], 4)
    assert np.array_equal(
        two.offsets, np.concatenate([offsets_of(DOCS), offsets_of(DOCS)[1:] + offsets_of(DOCS)[-1]])
    )
    assert [(s.format, s.num_documents) for s in two.shards] == [("plain", 30), ("parquet", 30)]
    assert not any(hasattr(s, "offsets") for s in two.shards)  # per-shard arrays are dropped


def _megatron_core():
    """megatron-core's builder and dataset, or a skip naming why they do not import here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns that Apex/Transformer Engine are absent
            from megatron.core.datasets.indexed_dataset import (
                IndexedDataset,
                IndexedDatasetBuilder,
            )
    except ModuleNotFoundError as error:
        if error.name != "megatron":
            pytest.skip(f"megatron-core does not import beside the CPU torch: {error}")
        pytest.skip(
            "megatron-core is not installed (it installs beside the CPU torch: "
            "pip install megatron-core -c constraints.txt; 0.16.1 tested)"
        )
    except ImportError as error:
        pytest.skip(f"megatron-core does not import beside the CPU torch: {error}")
    return IndexedDatasetBuilder, IndexedDataset


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
@pytest.mark.slow
def test_files_written_by_megatron_core_read_back_identically(tmp_path, dtype):
    builder_type, _ = _megatron_core()
    builder = builder_type(str(tmp_path / "mc.bin"), dtype=dtype)
    for doc in DOCS:
        builder.add_item(torch.from_numpy(doc.astype(np.int64)))
        builder.end_document()
    builder.finalize(str(tmp_path / "mc.idx"))
    shard = read(str(tmp_path / "mc"))
    assert shard.tokens.dtype == dtype
    assert np.array_equal(shard.tokens, np.concatenate(DOCS))
    assert np.array_equal(shard.offsets, offsets_of(DOCS))
    write_megatron(tmp_path, "ours", DOCS, dtype=dtype)
    for suffix in (".bin", ".idx"):  # our writer's files are byte for byte megatron-core's
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"mc{suffix}").read_bytes()


def test_megatron_core_reads_our_files(tmp_path):
    _, dataset_type = _megatron_core()
    theirs = dataset_type(write_megatron(tmp_path, "ours", DOCS))
    assert len(theirs) == len(DOCS)
    assert all(np.array_equal(theirs[i], doc) for i, doc in enumerate(DOCS))


# -- bad input: typed errors naming the file, the field and the fix ----------------------------


def _truncate(path, keep):
    with open(path, "r+b") as f:
        f.truncate(keep)


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _bin_shorter(d):
    prefix = write_megatron(d, "m", DOCS)
    _truncate(prefix + ".bin", os.path.getsize(prefix + ".bin") - 2)
    return prefix


def _bad_magic(d):
    prefix = write_megatron(d, "m", DOCS)
    _patch(prefix + ".idx", 0, b"NOTANIDX\x00")
    return prefix


def _bad_version(d):
    prefix = write_megatron(d, "m", DOCS)
    _patch(prefix + ".idx", 9, struct.pack("<Q", 7))
    return prefix


def _float_code(d):
    prefix = write_megatron(d, "m", DOCS)
    _patch(prefix + ".idx", 17, struct.pack("<B", 7))
    return prefix


def _unknown_code(d):
    prefix = write_megatron(d, "m", DOCS)
    _patch(prefix + ".idx", 17, struct.pack("<B", 99))
    return prefix


def _idx_truncated(d):
    prefix = write_megatron(d, "m", DOCS)
    _truncate(prefix + ".idx", HEADER.size + 40)
    return prefix


def _idx_header_only(d):
    prefix = write_megatron(d, "m", DOCS)
    _truncate(prefix + ".idx", 12)
    return prefix


def _pointers_not_increasing(d):
    prefix = write_megatron(d, "m", DOCS)
    count = len(DOCS)
    _patch(prefix + ".idx", HEADER.size + 4 * count + 8 * 3, struct.pack("<q", 2))
    return prefix


def _offsets_decrease(d):
    path = write_plain(d, "p", DOCS)
    offsets = offsets_of(DOCS)
    offsets[5] = offsets[7]
    np.save(os.path.join(d, "p.offsets.npy"), offsets)
    return path


def _document_past_end(d):
    path = write_plain(d, "p", DOCS)
    offsets = offsets_of(DOCS)
    offsets[-1] += 3
    np.save(os.path.join(d, "p.offsets.npy"), offsets)
    return path


def _tokens_after_last_document(d):
    path = write_plain(d, "p", DOCS)
    np.save(os.path.join(d, "p.offsets.npy"), offsets_of(DOCS)[:-1])
    return path


def _empty(d):
    np.save(os.path.join(d, "e.npy"), np.empty(0, np.uint32))
    np.save(os.path.join(d, "e.offsets.npy"), np.zeros(1, np.int64))
    return os.path.join(d, "e.npy")


def _float_tokens(d):
    np.save(os.path.join(d, "f.npy"), np.ones(4, np.float32))
    np.save(os.path.join(d, "f.offsets.npy"), np.array([0, 4]))
    return os.path.join(d, "f.npy")


def _odd_bin(d):
    path = write_plain(d, "p", DOCS, npy=False)
    _truncate(path, os.path.getsize(path) - 1)
    return path


def _no_offsets(d):
    path = write_plain(d, "p", DOCS)
    os.unlink(os.path.join(d, "p.offsets.npy"))
    return path


def _parquet_strings(d):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"input_ids": ["a", "b"]}), os.path.join(d, "s.parquet"))
    return os.path.join(d, "s.parquet")


def _parquet_other_column(d):
    return write_parquet(d, "q", DOCS, column="tokens")


def _not_a_shard(d):
    (d / "x.txt").write_text("hello")
    return str(d / "x.txt")


@pytest.mark.parametrize(
    "make, names",
    [
        (_bin_shorter, ["m.idx", ".bin is shorter than its .idx says", "copy the pair again"]),
        (_bad_magic, ["m.idx", "field 'magic'", "IndexedDatasetBuilder"]),
        (_bad_version, ["m.idx", "field 'version' is 7", "rewrite"]),
        (_float_code, ["m.idx", "field 'dtype' is float32", "uint16"]),
        (_unknown_code, ["m.idx", "field 'dtype' has code 99", "rewrite"]),
        (_idx_truncated, ["m.idx", "'sequence_count'", "truncated"]),
        (_idx_header_only, ["m.idx", "header is 12 bytes", "truncated"]),
        (_pointers_not_increasing, ["m.idx", "'sequence_pointers'", "sequence 3"]),
        (_offsets_decrease, ["p.offsets.npy", "field 'offsets'", "not increasing at document"]),
        (_document_past_end, ["p.offsets.npy", "a document longer than the file", "rewrite"]),
        (_tokens_after_last_document, ["p.offsets.npy", "tokens after the last document"]),
        (_empty, ["e.offsets.npy", "the shard is empty", "drop it"]),
        (_float_tokens, ["f.npy", "field 'dtype' is float32", "uint16"]),
        (_odd_bin, ["p.bin", "not a whole number of uint32 tokens", "dtype"]),
        (_no_offsets, ["p.npy", "p.offsets.npy", "documents + 1"]),
        (_parquet_strings, ["s.parquet", "field 'input_ids' is string", "list<int32>"]),
        (_parquet_other_column, ["q.parquet", "no column 'input_ids'", "column="]),
        (_not_a_shard, ["x.txt", "not a token shard", ".offsets.npy"]),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_bad_shard_is_a_shard_error_naming_file_field_and_fix(tmp_path, make, names):
    path = make(tmp_path)
    with pytest.raises(ShardError) as caught:
        TokenDataset(path, 4, dtype=np.uint32 if str(path).endswith(".bin") else None)
    for name in names:
        assert name in str(caught.value)


def test_raw_bin_needs_its_dtype(tmp_path):
    with pytest.raises(ConfigError, match=r"p\.bin: a raw \.bin has no header.*dtype=np.uint16"):
        TokenDataset(write_plain(tmp_path, "p", DOCS, npy=False), 4)


def test_shards_of_different_dtypes_are_refused(tmp_path):
    first = write_megatron(tmp_path, "a", DOCS, dtype=np.uint16)
    second = write_plain(tmp_path, "b", DOCS, dtype=np.uint32)
    with pytest.raises(ShardError, match=r"b\.npy: field 'dtype' is uint32, but .*a\.bin holds"):
        TokenDataset([first, second], 4)


def test_dtype_argument_that_contradicts_the_npy_header(tmp_path):
    with pytest.raises(ShardError, match=r"p\.npy: field 'dtype' is uint32 .* dtype=uint16"):
        TokenDataset(write_plain(tmp_path, "p", DOCS), 4, dtype=np.uint16)


def test_dtype_argument_that_contradicts_the_parquet_schema(tmp_path):
    path = write_parquet(tmp_path, "q", DOCS)  # list<int32>
    with pytest.raises(ShardError, match=r"q\.parquet: field 'dtype' is int32 .* dtype=uint16"):
        TokenDataset(path, 4, dtype=np.uint16)
    assert TokenDataset(path, 4, dtype=np.int32).dtype == np.int32


def test_seq_len_longer_than_the_stream(tmp_path):
    total = sum(map(len, DOCS))
    with pytest.raises(ConfigError, match=rf"seq_len={total} needs {total + 1} tokens .* {total}"):
        TokenDataset(write_megatron(tmp_path, "m", DOCS), total)
    assert len(TokenDataset(write_megatron(tmp_path, "m", DOCS), total - 1)) == 1


def test_a_shard_named_twice(tmp_path):
    prefix = write_megatron(tmp_path, "m", DOCS)
    with pytest.raises(ConfigError, match="named twice"):
        TokenDataset([prefix + ".bin", prefix + ".idx"], 4)


@pytest.mark.parametrize(
    ("tokens", "lengths", "match"),
    [
        ([1, 70_000], [2], r"token ids span \[1, 70000\], beyond uint16's \[0, 65535\]"),
        ([65_535, -1], [2], r"span \[-1, 65535\]"),
        ([1.7, 2.9], [2], "tokens must be integers, got float64"),
        ([1, 2, 3], [2, 2], "lengths add up to 4 tokens, but 3 were given"),
        ([1, 2], [3, -1], "lengths must be integers >= 0"),
    ],
)
def test_the_writer_refuses_tokens_a_cast_would_change(tmp_path, tokens, lengths, match):
    """A cast to uint16 wraps 70000 into 4464 and -1 into 65535: refused, and nothing written."""
    writer = MegatronWriter(tmp_path / "t", dtype=np.uint16)
    with pytest.raises(ShardError, match=match):
        writer.add_documents(np.array(tokens), np.array(lengths))
    writer.abort()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("path", "dtype", "match"),
    [
        ("{tmp}/r.bin", "bogus", r"dtype='bogus' is not a numpy dtype; pass np.uint16"),
        ("s3://bucket/web-00000.bin", None, "token shards are read from local files"),
    ],
)
def test_a_dtype_numpy_lacks_or_a_url_is_a_config_error(tmp_path, path, dtype, match):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "r.bin")
    with pytest.raises(ConfigError, match=match):
        TokenDataset(path.format(tmp=tmp_path), 8, dtype=dtype)
