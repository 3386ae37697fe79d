"""Indexing Parquet files: a sample is a row; the index keeps each file's row-group sizes."""

from __future__ import annotations

import dataclasses

from resumable_loader.errors import ShardError
from resumable_loader.tar_index import open_shard


@dataclasses.dataclass
class ParquetScan:
    """What indexing one Parquet file found."""

    row_groups: list[int]  # rows per row group
    schema: str  # the Arrow schema, as text, to detect files that do not match


def scan_parquet(path: str) -> ParquetScan:
    """Row-group sizes and schema of one Parquet file (reads only its footer)."""
    import pyarrow.parquet as pq

    try:
        with open_shard(path) as f:
            metadata = pq.ParquetFile(f).metadata
            schema = metadata.schema.to_arrow_schema()
            groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ShardError(f"{path}: not a readable Parquet file ({error}); re-create it") from None
    return ParquetScan(groups, schema.to_string(show_schema_metadata=False))
