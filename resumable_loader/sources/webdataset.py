"""WebDataset tar shards as a map-style dataset: one positioned read per sample."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from resumable_loader.index import ShardedIndex
from resumable_loader.shards import is_url
from resumable_loader.sources._indexed import IndexedDataset
from resumable_loader.tar_index import open_shard, parse_span, split_key


class TarShardDataset(IndexedDataset):
    """Samples of WebDataset tar shards by global id, as WebDataset's dicts.

    Each sample is ``{"__key__": key, "__url__": shard, ext: bytes, ...}``, read with one
    positioned read of its byte span. ``decode`` reuses webdataset's own decoders: a handler
    spec string such as ``"rgb8"``, ``"torchrgb"`` or ``"pil"`` (webdataset's image handler),
    or any callable taking and returning the sample dict (e.g. ``webdataset.autodecode.Decoder``).

    Args:
        shards: paths, globs, brace patterns, fsspec URLs, an ``.rlindex`` file or a
            :class:`ShardedIndex`.
        decode: optional decoding, as above.
        cache_dir: where to keep the index of remote shards (local ones: beside the shards).
    """

    format = "tar"

    def __init__(
        self,
        shards: str | Sequence[str] | ShardedIndex | os.PathLike,
        *,
        decode: str | Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(shards, cache_dir=cache_dir)
        self._spans = np.asarray(self.index.spans)  # a plain view of the map: cheaper indexing
        self.decode = _decoder(decode)
        self.bytes_read = 0

    def __getitem__(self, sample_id: int) -> dict[str, Any]:
        shard, local = self._locate(sample_id)
        start, length = (int(v) for v in self._spans[self.index.shard_offsets[shard] + local])
        url = self.index.shard_urls[shard]
        data = self._read(shard, start, length)
        self.bytes_read += len(data)
        sample: dict[str, Any] = {"__url__": url}
        for name, payload in parse_span(data, path=url, start=start):
            parts = split_key(name)
            if parts is not None:
                sample["__key__"], extension = parts
                sample[extension] = payload
        return self.decode(sample) if self.decode else sample

    def _read(self, shard: int, start: int, length: int) -> bytes:
        handle = self._file(shard)
        if isinstance(handle, int):
            return os.pread(handle, length, start)
        handle.seek(start)
        return handle.read(length)

    def _open(self, url: str) -> Any:
        return open_shard(url) if is_url(url) else os.open(url, os.O_RDONLY)


def _decoder(decode: Any) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    if decode is None or callable(decode):
        return decode
    from webdataset import autodecode

    return autodecode.Decoder([autodecode.imagehandler(decode)])
