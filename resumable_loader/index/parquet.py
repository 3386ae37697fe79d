"""Indexing Parquet files: a sample is a row; the index keeps each file's row-group sizes."""

from __future__ import annotations

import dataclasses

from resumable_loader.errors import ShardError
from resumable_loader.index.paths import StorageOptions, open_shard


@dataclasses.dataclass
class ParquetScan:
    """What indexing one Parquet file found (from its footer only)."""

    row_groups: list[int]  # rows per row group
    columns: list[str]
    schema: str  # the Arrow schema as text, to detect files that do not match
    skipped: list[str]  # with on_error="skip": why the file counts no rows


def scan_parquet(
    path: str, *, on_error: str = "raise", storage_options: StorageOptions = None
) -> ParquetScan:
    """Row-group sizes and schema of one Parquet file (reads only its footer).

    Args:
        path: a local path or fsspec URL.
        on_error: "raise" a :class:`ShardError` for an unreadable file, or "skip" it (the
            scan then has no row groups and says why).
        storage_options: a remote file's endpoint, credentials and retry knobs.
    """
    import pyarrow.parquet as pq

    try:
        with open_shard(path, storage_options) as f:
            metadata = pq.ParquetFile(f).metadata
            schema = metadata.schema.to_arrow_schema()
            groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        message = f"not a readable Parquet file ({error}); re-create it"
        if on_error != "skip":
            raise ShardError(f"{path}: {message}") from None
        return ParquetScan([], [], "", [message])
    text = schema.to_string(show_schema_metadata=False, show_field_metadata=False)
    return ParquetScan(groups, list(schema.names), text, [])
