"""Map-style datasets over sharded data, random access by global sample id."""

from __future__ import annotations

from resumable_loader.sources.parquet import ParquetDataset
from resumable_loader.sources.webdataset import TarShardDataset

__all__ = ["ParquetDataset", "TarShardDataset"]
