"""Lengths stored beside a shard index (``resumable-loader index --length``) feed Packed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shard_factory import write_parquet_shards, write_tar_shards

from resumable_loader import DataLoader, Packed, ParquetDataset, ShardShuffle, TarShardDataset
from resumable_loader.cli import main
from resumable_loader.errors import ConfigError
from resumable_loader.packing.collate import collate_varlen
from resumable_loader.packing.lengths import sidecar_path


def token_members(index: int) -> list[tuple[str, bytes]]:
    """Sample ``index``: ``index * 7 % 40`` tokens in a .npy member, and a JSON caption."""
    buffer = io.BytesIO()
    np.save(buffer, np.arange(index * 7 % 40, dtype=np.int32) + 1000 * index)
    return [("npy", buffer.getvalue()), ("json", b'{"words": ["a", "b", "c"]}')]


def decode_tokens(sample: dict[str, Any]) -> dict[str, Any]:
    return {**sample, "npy": np.load(io.BytesIO(sample["npy"]))}


def test_lengths_written_by_the_index_command_feed_a_packed_loader(tmp_path, capsys):
    shards = write_tar_shards(
        tmp_path / "shards", num_shards=3, samples_per_shard=10, members=token_members
    )
    out = tmp_path / "train.rlindex"
    assert main(["index", *shards, "--out", str(out), "--quiet", "--length", "npy"]) == 0
    assert f"wrote {sidecar_path(out)} (30 lengths of 'npy')" in capsys.readouterr().out

    dataset = TarShardDataset(str(out), decode=decode_tokens)
    packed = Packed(dataset, 48, field="npy")
    assert packed.lengths.tolist() == [i * 7 % 40 for i in range(30)]
    loader = DataLoader(packed, batch_size=2, shuffle=True, seed=5, collate_fn=collate_varlen)
    seen = []
    for batch in loader:
        cu = batch["cu_seqlens"].tolist()
        for k, sample in enumerate(batch["sample_ids"].tolist()):
            tokens = batch["input_ids"][0, cu[k] : cu[k + 1]]
            assert len(tokens) == sample * 7 % 40 and (tokens // 1000 == sample).all()
            seen.append(sample)
    assert sorted(seen) == list(range(30))

    assert main(["index", *shards, "--out", str(out), "--quiet", "--length", "json:words"]) == 0
    assert Packed(TarShardDataset(str(out)), 48, field="npy").lengths.tolist() == [3] * 30


def test_lengths_of_another_index_are_refused(tmp_path):
    first = write_tar_shards(
        tmp_path / "a", num_shards=1, samples_per_shard=4, members=token_members
    )
    out = tmp_path / "train.rlindex"
    assert main(["index", *first, "--out", str(out), "--quiet", "--length", "npy"]) == 0
    other = write_tar_shards(
        tmp_path / "b", num_shards=2, samples_per_shard=3, members=token_members
    )
    assert main(["index", *other, "--out", str(out), "--quiet"]) == 0
    with pytest.raises(ConfigError, match="--length SPEC"):
        Packed(TarShardDataset(str(out)), 48, field="npy")


def test_a_missing_field_names_the_fields_a_sample_has(tmp_path, capsys):
    shards = write_tar_shards(
        tmp_path / "s", num_shards=1, samples_per_shard=2, members=token_members
    )
    out = str(tmp_path / "x.rlindex")
    assert main(["index", *shards, "--out", out, "--quiet", "--length", "txt"]) != 0
    error = capsys.readouterr().err
    assert "--length 'txt': sample 'sample000000' (" in error
    assert "of the shard) has no 'txt' (it has ['__key__', '__url__', 'json', 'npy'])" in error


def test_a_parquet_value_without_a_length_names_its_file_and_row_and_leaves_no_lengths(
    tmp_path, capsys
):
    """A Parquet row has no key: the error names the file and row. The lengths of another field
    written before are gone, not left for Packed to take as these."""
    paths = write_parquet_shards(tmp_path / "rows", num_shards=2, rows_per_shard=5)
    out = tmp_path / "rows.rlindex"
    assert main(["index", *paths, "--out", str(out), "--quiet", "--length", "text"]) == 0
    assert main(["index", *paths, "--out", str(out), "--quiet", "--length", "id"]) == 2
    error = capsys.readouterr().err
    assert (
        "the value of sample 0 (" in error and "part-0000.parquet, sample 0 of the shard)" in error
    )
    assert not Path(f"{out}.lengths.npz").exists()


def test_packed_tar_shards_in_a_shard_local_order_resume_exactly(tmp_path):
    shards = write_tar_shards(
        tmp_path / "shards", num_shards=4, samples_per_shard=12, members=token_members
    )
    out = tmp_path / "train.rlindex"
    assert main(["index", *shards, "--out", str(out), "--quiet", "--length", "npy"]) == 0

    def loader(**kwargs: Any) -> DataLoader:
        return DataLoader(
            Packed(TarShardDataset(str(out), decode=decode_tokens), 64, field="npy", window=8),
            shuffle=True,
            shard_shuffle=ShardShuffle(window=2, buffer_size=4),
            seed=11,
            collate_fn=collate_varlen,
            **kwargs,
        )

    def ids(batches: Any) -> list[list[int]]:
        return [batch["sample_ids"].tolist() for batch in batches]

    continuous = ids(loader(batch_size=2))
    assert sorted(i for batch in continuous for i in batch) == list(range(48))
    first = loader(batch_size=2, num_workers=2)
    head = ids(batch for _, batch in zip(range(3), first, strict=False))
    resumed = loader(batch_size=2, num_workers=0)
    resumed.load_state_dict(first.state_dict())
    assert head + ids(resumed) == continuous


def test_lengths_of_a_parquet_column(tmp_path, capsys):
    paths = write_parquet_shards(tmp_path / "rows", num_shards=2, rows_per_shard=5)
    out = tmp_path / "rows.rlindex"
    assert main(["index", *paths, "--out", str(out), "--quiet", "--length", "text"]) == 0
    dataset = ParquetDataset(str(out))
    assert Packed(dataset, 16, field="text").lengths.tolist() == [
        len(f"row {i}") for i in range(10)
    ]


def test_lengths_of_shards_rewritten_since_are_refused(tmp_path):
    """Same names, sizes and counts (tar pads to 10 KiB records), other contents: the
    fingerprint is the same, the index build is not."""

    def members(words: int):
        return lambda index: [("txt", b" ".join([b"w"] * words))]

    shards = write_tar_shards(
        tmp_path / "s", num_shards=1, samples_per_shard=4, members=members(10)
    )
    out = str(tmp_path / "x.rlindex")
    assert main(["index", *shards, "--out", out, "--quiet", "--length", "txt"]) == 0
    size = (tmp_path / "s" / "shard-0000.tar").stat().st_size
    write_tar_shards(tmp_path / "s", num_shards=1, samples_per_shard=4, members=members(100))
    assert (tmp_path / "s" / "shard-0000.tar").stat().st_size == size
    assert main(["index", *shards, "--out", out, "--quiet"]) == 0  # without --length
    with pytest.raises(ConfigError, match=r"written for an earlier build of .*x\.rlindex"):
        Packed(TarShardDataset(out), 256, field="txt")


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("npy:words", "shard) is a ndarray, no key 'words'"),
        ("json:tokens", "shard) has the keys ['words'], no key"),
    ],
)
def test_a_key_a_sample_lacks_is_named(tmp_path, capsys, spec, said):
    shards = write_tar_shards(
        tmp_path / "s", num_shards=1, samples_per_shard=2, members=token_members
    )
    out = str(tmp_path / "x.rlindex")
    assert main(["index", *shards, "--out", out, "--quiet", "--length", spec]) == 2
    error = capsys.readouterr().err
    assert (
        f"of sample 'sample000000' ({shards[0]}, sample 0 of the shard" in error and said in error
    )
