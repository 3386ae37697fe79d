"""Remote tar shards: reads planned ahead from the loader's schedule, through the node cache.

Mixed into :class:`~resumable_loader.sources.webdataset.TarShardDataset`: its ``_read`` hands
a span to :meth:`RemoteReads._remote_read` when prefetching is on (by default for shards
behind a URL), and the loader's lookahead calls :meth:`RemoteReads.plan_reads` before each
batch (:class:`~resumable_loader.loader.lookahead.Prefetching`). The reader and its threads
belong to one process: made on first use, made again after a fork, never pickled. Without
prefetching (``prefetch=False``) the dataset's synchronous reads of a URL go through
:meth:`RemoteReads._range` too: one storage client, whichever path reads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resumable_loader.errors import ConfigError, StorageError
from resumable_loader.index.paths import is_url
from resumable_loader.storage.client import client_for
from resumable_loader.storage.reader import Prefetch, ShardReader, node_cache_root
from resumable_loader.storage.stats import StatsFile, StorageStats

DEFAULT_BLOCK = 1 * 2**20
_COUNTS = threading.Lock()


class RemoteReads:
    """Prefetching reads of a dataset's shards (see the module docstring).

    The class using it has ``index``, ``read_ahead`` (the block size, None for the default),
    ``cache_bytes`` (the node cache's bound) and the counters ``bytes_read`` and
    ``read_requests``, which count the prefetching requests too.
    """

    index: Any
    read_ahead: int | None
    cache_bytes: int
    bytes_read: int
    read_requests: int

    def _init_remote(self, prefetch: Prefetch | bool | None) -> None:
        # first: a dataset whose arguments are refused below is still closed by __del__
        self._storage: tuple[int, ShardReader] | None = None
        if prefetch is None:
            prefetch = any(is_url(url) for url in self.index.shard_urls)
        if not isinstance(prefetch, (bool, Prefetch)):
            raise ConfigError(f"prefetch must be a Prefetch, True, False or None, got {prefetch!r}")
        self.prefetch: Prefetch | None = Prefetch() if prefetch is True else (prefetch or None)
        self._storage_token = uuid.uuid4().hex  # names this dataset's counters on the node
        tiered = self.prefetch is not None and self.prefetch.disk_dir is not None
        if tiered and not self.cache_bytes:
            raise ConfigError(
                f"Prefetch(disk_dir={self.prefetch.disk_dir!r}) keeps what the node cache's "
                "first tier evicts, but cache_bytes=0 keeps no blocks (exact spans only); give "
                "cache_bytes > 0, or leave the disk tier out"
            )

    @property
    def prefetching(self) -> bool:
        """Whether reads go through the planned, cached path."""
        return self.prefetch is not None

    def plan_reads(self, schedule: Any) -> None:
        """Fetch ahead what the node's schedule will read (the loader calls this)."""
        reader = self._reader()
        if reader is not None:
            reader.plan(schedule)

    def storage_stats(self) -> StorageStats:
        """What reading from storage cost so far, summed over the processes that read for this
        dataset object (the loader's workers included)."""
        reader = self._reader(create=False)
        if reader is not None:
            return reader.stats_file.total()
        if self.prefetch is None:
            return StorageStats()
        return StatsFile(self._cache_root() / "stats", self._storage_token).total()

    def _remote_read(self, shard: int, start: int, length: int) -> bytes:
        reader = self._reader()
        assert reader is not None
        with self._naming_sample(shard, start):
            return reader.read(shard, start, length)

    @contextlib.contextmanager
    def _naming_sample(self, shard: int, start: int) -> Iterator[None]:
        """Set on a StorageError raised inside the sample whose span of ``shard`` begins at
        ``start``: the sample that needed the bytes (the request may be a block's, at
        another offset), which the error's message then names."""
        try:
            yield
        except StorageError as error:
            error.sample = self._sample_at(shard, start)
            raise

    def _reader(self, *, create: bool = True) -> ShardReader | None:
        if self.prefetch is None:
            return None
        held = self._storage
        if held is not None and held[0] == os.getpid():
            return held[1]
        if not create:
            return None
        reader = ShardReader(
            self.index,
            self._range,
            block_size=self._block_size(),
            cache_bytes=self.cache_bytes,
            options=self.prefetch,
            token=self._storage_token,
        )
        self._storage = (os.getpid(), reader)
        return reader

    def _range(self, shard: int, start: int, length: int) -> bytes:
        """One range request for ``length`` bytes of ``shard`` at ``start`` (clipped to the
        indexed size); safe to call from several threads. A URL is read through the storage
        client of the dataset's ``storage_options``: its endpoint and credentials, retries
        under the deadline (jittered from the client's own generator, never the global
        ``random``), StorageError naming the URL and range, and a backend safe after a fork."""
        length = self._clipped(shard, start, length)
        url = self.index.shard_urls[shard]
        if is_url(url):
            client = client_for(url, getattr(self, "storage_options", None))
            data = client.read_range(url, start, length, etag=self.index.shard_etag(shard))
        else:
            fd = os.open(url, os.O_RDONLY)
            try:
                data = os.pread(fd, length, start)
            finally:
                os.close(fd)
        with _COUNTS:  # the dataset's own counters of what this process asked of storage
            self.bytes_read += len(data)
            self.read_requests += 1
        return data

    def _clipped(self, shard: int, start: int, length: int) -> int:
        """``length`` cut to what the shard's indexed size has at ``start`` (>= 0)."""
        return max(0, min(length, self.index.header["shards"][shard]["bytes"] - start))

    def _block_size(self) -> int:
        """The node cache's block: ``read_ahead``, else :data:`DEFAULT_BLOCK`."""
        return self.read_ahead or DEFAULT_BLOCK

    def _cache_root(self) -> Path:
        return node_cache_root(self.index, self.prefetch, self._block_size())

    def _sample_at(self, shard: int, start: int) -> int:
        """The global id of the sample of ``shard`` whose span begins at or before ``start``."""
        offsets = self.index.shard_offsets
        first, stop = int(offsets[shard]), int(offsets[shard + 1])
        self.index.ensure_shards([shard])
        starts = self.index.spans[first:stop, 0]
        return first + max(int(starts.searchsorted(start, side="right")) - 1, 0)

    def close(self) -> None:
        held, self._storage = self._storage, None
        if held is not None and held[0] == os.getpid():
            held[1].close()
        super().close()  # type: ignore[misc]

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_storage": None}  # type: ignore[misc]
