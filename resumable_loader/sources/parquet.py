"""Parquet files as a map-style dataset: a row per sample, read by row group through an LRU cache.

Why a cache bounded by bytes, not by groups: the shard-local shuffle (``ShardShuffle(window=k,
buffer_size=B)``) interleaves k files and holds B ids, so the rows in flight span about k
groups plus those of the ids that linger in the buffer. A cache of a couple of groups evicted
a group before its last row was read, and each row re-read and re-decoded its group (34x-400x
group reads an epoch). Bounded by decoded bytes, the cache keeps what the window needs, so a
shard-local epoch decodes each row group about once per process while those groups fit.
A global shuffle draws each row from any group of any file: unless all the decoded data fit
in the cache, it decodes about one group per row (use ``shard_shuffle`` for Parquet).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from resumable_loader._lru import LRU
from resumable_loader.errors import RESTORE_OR_REINDEX, ConfigError, ShardError
from resumable_loader.index.paths import is_url
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.sources._indexed import IndexedDataset, check_bytes
from resumable_loader.storage.client import client_for
from resumable_loader.storage.stream import RemoteFile

# Decoded row groups kept per process (bytes of Arrow buffers), least recently used out first.
ROW_GROUP_CACHE_BYTES = 256 * 2**20
# Bytes per ranged read of a file behind a URL (the next 3 requested ahead while one is read):
# pyarrow reads a row group's column chunks front to back, a footer or a group at random.
READ_CHUNK = 2**20


class ParquetDataset(IndexedDataset):
    """Rows of Parquet files by global id, as dicts of column values.

    Args:
        shards: paths, globs, brace patterns, fsspec URLs, an index file (named
            ``*.rlindex``, or any name: an index is recognised by content) or a
            :class:`ShardedIndex` (all files of one schema).
        columns: the columns to read (default: all).
        cache_dir: where to keep the index of remote files (local ones: beside the files).
        index_url: remote files only: where their index is kept in storage (default beside
            the first file); see :class:`~resumable_loader.sources.TarShardDataset`.
        on_error: "raise" or "skip" unreadable files (and files of another schema) when the
            index is built; see :meth:`ShardedIndex.build`.
        storage_options: files behind a URL: the endpoint, credentials and retry knobs of
            :func:`~resumable_loader.storage.client_for` (default: the environment's). The
            index and every read (the footer, each column chunk) go through that client.
        cache_bytes: decoded row groups kept per process, in bytes (default
            ``ROW_GROUP_CACHE_BYTES``, 256 MiB); the most recent group is kept even if larger.
            A shard-local epoch decodes each group about once if this holds about
            2 * ``window`` + 6 * ``buffer_size`` / (rows per group) groups (measured; the
            previous group of each open file lingers in the buffer); a little less thrashes.
    """

    format = "parquet"

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike] | ShardedIndex,
        *,
        columns: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
        cache_bytes: int = ROW_GROUP_CACHE_BYTES,
        index_url: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.cache_bytes = check_bytes("cache_bytes", cache_bytes)
        self._cache = self._new_cache()
        super().__init__(
            shards,
            cache_dir=cache_dir,
            on_error=on_error,
            index_url=index_url,
            storage_options=storage_options,
        )
        if isinstance(columns, str):  # its characters would be taken as column names
            raise ConfigError(f"columns={columns!r}: give a list of names, e.g. [{columns!r}]")
        if columns is not None and not list(columns):
            raise ConfigError(
                f"columns=[] selects none of {self.index.path}'s columns; name some, or pass "
                "columns=None for all of them"
            )
        unknown = sorted(set(columns or ()) - set(self.index.fields))
        if unknown:
            raise ConfigError(
                f"columns {unknown} are not in {self.index.path}'s schema; pick from "
                f"{self.index.fields}"
            )
        self.columns = list(columns) if columns is not None else None
        self._group_starts = [np.cumsum([0, *groups]).tolist() for groups in self.index.row_groups]

    def __getitem__(self, sample_id: int) -> dict[str, Any]:
        shard, group, row = self._place(sample_id)
        return self._rows(shard, group, self._row_group(shard, group).slice(row, 1))[0]

    def __getitems__(self, sample_ids: list[int]) -> list[dict[str, Any]]:
        """The rows of ``sample_ids``, in order: each row group they fall in read (or found
        in the cache) once and its rows converted together, in (shard, group) order."""
        places = [self._place(sample_id) for sample_id in sample_ids]
        groups: dict[tuple[int, int], list[int]] = {}
        for k, (shard, group, _) in enumerate(places):
            groups.setdefault((shard, group), []).append(k)
        rows: list[Any] = [None] * len(places)
        for (shard, group), batch in sorted(groups.items()):
            table = self._row_group(shard, group).take([places[k][2] for k in batch])
            for k, values in zip(batch, self._rows(shard, group, table), strict=True):
                rows[k] = values
        return rows

    def _place(self, sample_id: int) -> tuple[int, int, int]:
        """(shard, row group, row in the group) of a sample id."""
        shard, row = self._locate(sample_id)
        starts = self._group_starts[shard]
        group = bisect.bisect_right(starts, row) - 1
        return shard, group, row - starts[group]

    def _row_group(self, shard: int, group: int) -> Any:
        key = (shard, group)
        table = self._cache.get(key)
        if table is None:
            try:
                table = self._file(shard).read_row_group(group, columns=self.columns)
            except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
                raise self._damaged(shard, group, error) from None
            indexed = self.index.row_groups[shard][group]
            if table.num_rows != indexed:
                raise self._damaged(shard, group, f"{table.num_rows} rows, indexed {indexed}")
            self._cache.put(key, table)
        return table

    def _rows(self, shard: int, group: int, table: Any) -> list[dict[str, Any]]:
        """``table``'s rows as dicts; a value that does not convert (a damaged string's bytes
        are not UTF-8) is a ShardError naming the file and row group."""
        try:
            return table.to_pylist()
        except ValueError as error:  # UnicodeDecodeError among them
            raise self._damaged(shard, group, error) from None

    def _damaged(self, shard: int, group: int, error: Exception | str) -> ShardError:
        return ShardError(
            f"{self.index.shard_urls[shard]}: cannot read row group {group} ({error}); "
            f"the file is damaged or changed since it was indexed: {RESTORE_OR_REINDEX}"
        )

    def _new_cache(self) -> LRU[tuple[int, int], Any]:
        """Decoded row groups by (shard, group), bounded by their bytes; the latest one stays."""
        return LRU(self.cache_bytes, cost=_table_bytes, keep=1)

    def _open(self, shard: int, url: str) -> Any:
        import pyarrow.parquet as pq

        if is_url(url):  # pyarrow reads at its offsets, each read a request of our client
            size = int(self.index.header["shards"][shard]["bytes"])
            client = client_for(url, self.storage_options)
            etag = self.index.shard_etag(shard)
            source = RemoteFile(client, url, size, chunk=READ_CHUNK, etag=etag)
        else:
            source = url
        # a file written with page checksums (write_page_checksum=True) has each page checked
        # as it is read: pyarrow checks them only when asked
        return pq.ParquetFile(source, page_checksum_verification=True)

    def close(self) -> None:
        self._cache.pop_all()
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_cache": self._new_cache()}

    def __repr__(self) -> str:
        return (
            f"ParquetDataset({self.index!r}, columns={self.columns!r}, "
            f"cache_bytes={self.cache_bytes})"
        )


def _table_bytes(table: Any) -> int:
    return table.nbytes
