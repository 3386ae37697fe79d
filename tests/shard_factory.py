"""Small tar and Parquet shards written into a test's temp dir (no network, no fixtures files)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from pathlib import Path


def sample_members(global_index: int) -> list[tuple[str, bytes]]:
    """The members of sample ``global_index``: a payload, a class label, a JSON blob."""
    return [
        ("bin", bytes((global_index * 7 + i) % 256 for i in range(32 + global_index % 5))),
        ("cls", str(global_index % 10).encode()),
        ("json", f'{{"index": {global_index}}}'.encode()),
    ]


def write_tar(path: Path, entries: Iterable[tuple[str, bytes]], *, format=tarfile.USTAR_FORMAT):
    """Write (member name, payload) pairs as a tar file."""
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
    format=tarfile.USTAR_FORMAT,
    key_prefix: str = "sample",
) -> list[str]:
    """``num_shards`` WebDataset shards of ``samples_per_shard`` samples (sample_members)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        entries = []
        for i in range(samples_per_shard):
            index = shard * samples_per_shard + i
            for ext, payload in sample_members(index):
                entries.append((f"{key_prefix}{index:06d}.{ext}", payload))
        paths.append(write_tar(directory / f"shard-{shard:04d}.tar", entries, format=format))
    return paths


def write_parquet_shards(
    directory: Path, *, num_shards: int, rows_per_shard: int, row_group_size: int = 4
) -> list[str]:
    """``num_shards`` Parquet files of ``rows_per_shard`` rows (id, text, value)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        ids = list(range(shard * rows_per_shard, (shard + 1) * rows_per_shard))
        table = pa.table(
            {
                "id": ids,
                "text": [f"row {i}" for i in ids],
                "value": [i * 0.5 for i in ids],
            }
        )
        path = directory / f"part-{shard:04d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(str(path))
    return paths
