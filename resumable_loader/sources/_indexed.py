"""What the tar and Parquet datasets share: an index, ids to shards, per-process file handles."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.index import ShardedIndex

_READERS = {"tar": "TarShardDataset", "parquet": "ParquetDataset"}


class IndexedDataset(Dataset):
    """A map-style dataset over a :class:`ShardedIndex` of one format.

    ``shard_sizes`` and ``fingerprint`` are what the loader reads to build a shard-local order
    and to fingerprint its cursor. Open files are per process (re-opened after fork or pickle).
    """

    format = ""

    def __init__(
        self,
        shards: str | Sequence[str] | ShardedIndex | os.PathLike,
        *,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(shards, ShardedIndex):
            index = shards
        elif isinstance(shards, (str, os.PathLike)) and str(shards).endswith(".rlindex"):
            index = ShardedIndex.load(shards)
        else:
            index = ShardedIndex.for_shards(shards, cache_dir=cache_dir)
        if index.format != self.format:
            raise ConfigError(
                f"{type(self).__name__} reads {self.format} shards, but the index holds "
                f"{index.format} shards; use {_READERS[index.format]}"
            )
        self.index = index
        self.shard_sizes: np.ndarray = index.shard_sizes
        self.fingerprint: str = index.fingerprint
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.index.num_samples

    def _locate(self, sample_id: int) -> tuple[int, int]:
        if isinstance(sample_id, bool) or not isinstance(sample_id, (int, np.integer)):
            raise TypeError(f"sample ids are ints, got {sample_id!r}")
        if sample_id < 0:
            sample_id += len(self)
        if not 0 <= sample_id < len(self):
            raise IndexError(f"sample id {sample_id} out of range for {len(self)} samples")
        return self.index.locate(int(sample_id))

    def _file(self, shard: int) -> Any:
        if self._pid != os.getpid():  # forked: never share file offsets with the parent
            self._files, self._pid = {}, os.getpid()
        handle = self._files.get(shard)
        if handle is None:
            url = self.index.shard_urls[shard]
            try:
                handle = self._files[shard] = self._open(url)
            except OSError as error:
                raise ShardError(
                    f"{url}: cannot open the shard ({error}); it moved or was deleted since it "
                    "was indexed: restore it or rebuild the index"
                ) from None
        return handle

    def _open(self, url: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Close the files this process opened; the next read opens them again."""
        files, self._files = self._files, {}
        if self._pid != os.getpid():
            return  # a forked copy: the parent owns these
        for handle in files.values():
            if isinstance(handle, int):
                os.close(handle)
            else:
                handle.close()

    def __del__(self) -> None:
        if "_files" in self.__dict__:  # not when __init__ failed before opening anything
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.index!r})"
