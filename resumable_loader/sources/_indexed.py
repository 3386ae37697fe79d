"""What the tar and Parquet datasets share: an index, ids to shards, per-process file handles."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from resumable_loader._checks import check_int
from resumable_loader._lru import LRU
from resumable_loader.errors import ConfigError, SampleIndexError, ShardError
from resumable_loader.index.file import is_index_file
from resumable_loader.index.paths import is_url, stat_shard
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.storage.client import check_storage_options

_READERS = {"tar": "TarShardDataset", "parquet": "ParquetDataset"}
# Shards kept open per process; a global shuffle touches every shard, and thousands of open
# files per worker would hit the descriptor limit.
MAX_OPEN_SHARDS = 64
# Forks that led to this process: a dataset whose handles were opened at another count holds
# its parent's. A counter, not os.getpid(), which is a system call on every read.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_count_fork)


class IndexedDataset(Dataset):
    """A map-style dataset over a :class:`ShardedIndex` of one format.

    ``shard_sizes`` and ``fingerprint`` are what the loader reads to build a shard-local order
    and to fingerprint its cursor. Pickling sends the index file's path and no open file;
    files are opened lazily per process (again after a fork or unpickling), at most
    ``MAX_OPEN_SHARDS`` at a time. Threads of one process should not share an instance once
    more shards than that are read: closing the least recent file may race with a read of it.
    ``storage_options`` (endpoint, credentials, retry knobs) apply to the index's requests
    (build, fetch, check of a cached copy, upload) as to the reads of remote shards.
    """

    format = ""

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike] | ShardedIndex,
        *,
        cache_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
        index_url: str | None = None,
        index_rows: str = "all",
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if storage_options:  # a typo is refused now, not after the index was built with it
            check_storage_options(_first_url(shards), storage_options)
        implicit = False  # the index is our own hidden file, not one the user named
        given = isinstance(shards, ShardedIndex) or (
            isinstance(shards, (str, os.PathLike)) and is_index_file(shards)
        )
        if given and index_url is not None:
            raise ConfigError(
                f"index_url={index_url!r} says where the index of shards is kept, but the "
                "dataset was given an index; pass the shards with index_url, or the index alone"
            )
        if isinstance(shards, ShardedIndex):
            index = shards
        elif given:
            index = ShardedIndex.load(shards, storage_options=storage_options)
        else:
            index = ShardedIndex.for_shards(
                shards,
                cache_dir=cache_dir,
                on_error=on_error,
                index_url=index_url,
                index_rows=index_rows,
                storage_options=storage_options,
            )
            implicit = True
        if index.format != self.format:
            what = f"{index.shard_urls[0]} is a" if implicit else f"{index.path} indexes"
            raise ConfigError(
                f"{type(self).__name__} reads {self.format} shards, but {what} "
                f"{index.format} shard{'' if implicit else 's'}; use {_READERS[index.format]}"
            )
        self.index = index
        # the storage client's options (endpoint, credentials, retry knobs) of the index's
        # requests above and of the reads of remote shards
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.shard_sizes: np.ndarray = index.shard_sizes
        self.fingerprint: str = index.fingerprint
        self._files = _open_files()
        # Handles a subclass reads without _file (a local shard's memory map): this process's,
        # dropped with _files; one evicted from _files is closed, and read through _file again.
        self._mapped: dict[int, Any] = {}
        self._forks = _forks

    def __len__(self) -> int:
        return self.index.num_samples

    def _locate(self, sample_id: int) -> tuple[int, int]:
        """(shard, local index) of an id; negative ids count from the end, like a list's."""
        if isinstance(sample_id, bool) or not isinstance(sample_id, (int, np.integer)):
            raise TypeError(f"sample ids are ints, got {sample_id!r}")
        position = int(sample_id) + (len(self) if sample_id < 0 else 0)
        if not 0 <= position < len(self):
            raise IndexError(f"sample id {sample_id} out of range for {len(self)} samples")
        return self.index.locate(position)

    def _file(self, shard: int) -> Any:
        """This process's handle on ``shard``, opened on first use."""
        if self._forks != _forks:  # forked: never share file offsets with the parent
            self._files, self._forks, self._mapped = _open_files(), _forks, {}
        handle = self._files.get(shard)
        if handle is not None:
            return handle
        url = self.index.shard_urls[shard]
        try:
            handle = self._open(shard, url)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ShardError(
                f"{url}: cannot open the shard ({error}); it moved or was deleted since it "
                "was indexed: restore it or rebuild the index"
            ) from None
        if not is_url(url):  # one stat a shard a process: rewritten since the index was loaded?
            try:
                self.index.check_shard(shard, stat_shard(url))
            except SampleIndexError as error:
                raise ShardError(f"{error} (found when this process opened it)") from None
        self._files.put(shard, handle)
        return handle

    def _open(self, shard: int, url: str) -> Any:
        """A new handle on ``shard`` (at ``url``)."""
        raise NotImplementedError(f"{type(self).__name__} must define _open")

    def close(self) -> None:
        """Close the files this process opened; the next read opens them again."""
        files, self._files, self._mapped = self._files, _open_files(), {}
        if self._forks == _forks:  # a forked copy leaves the parent's files alone
            for handle in files.pop_all():
                _close(handle)

    def __del__(self) -> None:
        if "_files" in self.__dict__:  # not when __init__ failed before opening anything
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": _open_files(), "_mapped": {}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.index!r})"


def _first_url(shards: Any) -> str:
    """The first shard (or pattern) ``shards`` names, unexpanded: its scheme and bucket say
    which client reads them."""
    if isinstance(shards, ShardedIndex):
        return str(shards.shard_urls[0]) if shards.num_shards else ""
    if isinstance(shards, (str, os.PathLike)):
        return os.fspath(shards)
    return os.fspath(next(iter(shards), ""))


def check_bytes(name: str, value: int) -> int:
    """``value`` if it is a byte count (an int >= 0), else a ConfigError naming ``name``."""
    return check_int(name, value)


def _open_files() -> LRU[int, Any]:
    """This process's open shard handles, at most MAX_OPEN_SHARDS; the least recent closed."""
    return LRU(MAX_OPEN_SHARDS, cost=_one, evicted=_close)


def _one(_: Any) -> int:
    return 1


def _close(handle: Any) -> None:
    if isinstance(handle, int):
        os.close(handle)
    elif hasattr(handle, "close"):
        handle.close()
