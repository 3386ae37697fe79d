"""What a newcomer passes as shards: a directory, the other format, an index built implicitly."""

from __future__ import annotations

import io

import pytest
from shard_factory import write_parquet_shards, write_tar_shards

from resumable_loader import ConfigError, ParquetDataset, TarShardDataset


def test_a_directory_is_refused_with_a_glob_of_its_files(tmp_path):
    write_tar_shards(tmp_path, num_shards=3, samples_per_shard=2)
    (tmp_path / "notes.txt").write_text("not a shard")
    with pytest.raises(ConfigError) as error:
        TarShardDataset(tmp_path)
    assert str(error.value) == (
        f"{tmp_path}: a directory, not a shard; pass the shards in it as a glob, e.g. "
        f"'{tmp_path}/*.tar' or '{tmp_path}/*.txt'"
    )


@pytest.mark.parametrize(
    ("reader", "writer", "other"),
    [(TarShardDataset, "parquet", "ParquetDataset"), (ParquetDataset, "tar", "TarShardDataset")],
)
def test_the_other_format_names_the_shard_not_a_hidden_index(tmp_path, reader, writer, other):
    if writer == "parquet":
        first = write_parquet_shards(tmp_path, num_shards=2, rows_per_shard=3)[0]
    else:
        first = write_tar_shards(tmp_path, num_shards=2, samples_per_shard=3)[0]
    with pytest.raises(ConfigError) as error:
        reader(str(tmp_path / f"*.{writer}"))
    assert str(error.value) == (
        f"{reader.__name__} reads {reader.format} shards, but {first} is a {writer} shard; "
        f"use {other}"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_an_implicit_index_build_shows_progress_on_a_terminal_only(tmp_path, monkeypatch, terminal):
    write_tar_shards(tmp_path, num_shards=3, samples_per_shard=2)
    stderr = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    assert len(TarShardDataset(str(tmp_path / "*.tar"))) == 6
    shown = f"indexing [{'#' * 30}] 3/3 shards\n"
    assert stderr.getvalue().endswith(shown) if terminal else stderr.getvalue() == ""
