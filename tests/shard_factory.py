"""Small tar and Parquet shards written into a test's temp dir (no network, no fixture files)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

Members = Callable[[int], list[tuple[str, bytes]]]


def sample_members(global_index: int) -> list[tuple[str, bytes]]:
    """The (extension, payload) members of sample ``global_index``: bytes, a label, JSON."""
    return [
        ("bin", bytes((global_index * 7 + i) % 256 for i in range(32 + global_index % 5))),
        ("cls", str(global_index % 10).encode()),
        ("json", f'{{"index": {global_index}}}'.encode()),
    ]


def write_tar(
    path: Path, entries: Iterable[tuple[str, bytes]], *, format: int = tarfile.USTAR_FORMAT
) -> str:
    """Write (member name, payload) pairs as a tar file, in order; returns its path."""
    with tarfile.open(path, "w", format=format) as tar:
        for name, payload in entries:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return str(path)


def write_tar_shards(
    directory: Path,
    *,
    num_shards: int,
    samples_per_shard: int,
    format: int = tarfile.USTAR_FORMAT,
    key_prefix: str = "sample",
    members: Members = sample_members,
) -> list[str]:
    """``num_shards`` WebDataset shards ``shard-NNNN.tar`` of ``samples_per_shard`` samples.

    Sample ``i`` (global) has key ``f"{key_prefix}{i:06d}"`` and the members ``members(i)``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        entries = [
            (f"{key_prefix}{index:06d}.{extension}", payload)
            for index in range(shard * samples_per_shard, (shard + 1) * samples_per_shard)
            for extension, payload in members(index)
        ]
        paths.append(write_tar(directory / f"shard-{shard:04d}.tar", entries, format=format))
    return paths


def parquet_rows(ids: Iterable[int]) -> dict[str, list]:
    """The columns of rows ``ids``: id, text, value."""
    ids = list(ids)
    return {"id": ids, "text": [f"row {i}" for i in ids], "value": [i * 0.5 for i in ids]}


def write_parquet_shards(
    directory: Path, *, num_shards: int, rows_per_shard: int, row_group_size: int = 4
) -> list[str]:
    """``num_shards`` Parquet files ``part-NNNN.parquet`` of ``rows_per_shard`` rows
    (:func:`parquet_rows` of consecutive global ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        rows = parquet_rows(range(shard * rows_per_shard, (shard + 1) * rows_per_shard))
        path = directory / f"part-{shard:04d}.parquet"
        pq.write_table(pa.table(rows), path, row_group_size=row_group_size)
        paths.append(str(path))
    return paths
