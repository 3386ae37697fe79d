"""WebDataset tar shards as a map-style dataset: one positioned read per sample."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.index import ShardedIndex
from resumable_loader.shards import is_url
from resumable_loader.sources._indexed import IndexedDataset
from resumable_loader.tar_index import read_sample

Decode = str | Sequence[Any] | Callable[[dict[str, Any]], dict[str, Any]] | None


class TarShardDataset(IndexedDataset):
    """Samples of WebDataset tar shards by global id, as WebDataset's dicts.

    Each sample is ``{"__key__": key, "__url__": shard, ext: bytes, ...}``, read with one
    positioned read of its byte span (``os.pread`` for local files, an fsspec range read for
    URLs). ``bytes_read`` counts the bytes this process read, headers included.

    Args:
        shards: paths, globs, brace patterns, fsspec URLs, an index file (named
            ``*.rlindex``, or any name: an index is recognised by content) or a
            :class:`ShardedIndex`.
        decode: None for raw bytes; else decoding by webdataset's own decoders, given as
            ``webdataset.decode`` takes them: a handler spec string (``"rgb8"``,
            ``"torchrgb"``, ``"pil"``, ...: webdataset's ``imagehandler``) or a list of such
            strings and handler functions ``(extension, data)``, wrapped in
            ``webdataset.autodecode.Decoder`` (whose default handlers also decode ``cls``,
            ``json``, ``txt``, ...); or any callable taking and returning the sample dict, such
            as a ``Decoder`` you built.
        cache_dir: where to keep the index of remote shards (local ones: beside the shards).
        on_error: "raise" or "skip" unreadable samples when the index is built; see
            :meth:`ShardedIndex.build`.
    """

    format = "tar"

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike] | ShardedIndex,
        *,
        decode: Decode = None,
        cache_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
    ) -> None:
        super().__init__(shards, cache_dir=cache_dir, on_error=on_error)
        self.decode = _decoder(decode)
        self.bytes_read = 0

    def __getitem__(self, sample_id: int) -> dict[str, Any]:
        shard, local = self._locate(sample_id)
        start, length = (int(v) for v in self.index.spans[self.index.shard_offsets[shard] + local])
        url = self.index.shard_urls[shard]
        data = self._read(shard, start, length)
        self.bytes_read += len(data)
        if len(data) < length:
            raise ShardError(
                f"{url}: {length} bytes expected at offset {start}, {len(data)} read; the shard "
                "is shorter than when it was indexed: rebuild the index"
            )
        sample = {"__url__": url, **read_sample(data, path=url, start=start)}
        return self._decode(sample, start) if self.decode else sample

    def _decode(self, sample: dict[str, Any], start: int) -> dict[str, Any]:
        """``self.decode(sample)``, with webdataset's DecodingError (whose message is empty)
        turned into a ShardError naming the shard, the sample and the member."""
        try:
            return self.decode(sample)
        except Exception as error:
            from webdataset.autodecode import DecodingError  # loaded if it decoded anything

            if not isinstance(error, DecodingError):
                raise
            cause = error.__cause__
            raise ShardError(
                f"{sample['__url__']}: cannot decode the {error.k!r} member of sample "
                f"{sample['__key__']!r} (offset {start}): {type(cause).__name__}: {cause}; "
                "fix or remove the member, or pass a decode= that handles it"
            ) from error

    def _read(self, shard: int, start: int, length: int) -> bytes:
        handle = self._file(shard)
        if isinstance(handle, int):
            return os.pread(handle, length, start)
        filesystem, path = handle
        return filesystem.cat_file(path, start=start, end=start + length)

    def _open(self, url: str) -> Any:
        if not is_url(url):
            return os.open(url, os.O_RDONLY)
        import fsspec

        return fsspec.core.url_to_fs(url)

    def __repr__(self) -> str:
        return f"TarShardDataset({self.index!r}, decode={self.decode!r})"


def _decoder(decode: Decode) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """``decode`` as one callable on the sample dict, built the way ``webdataset.decode`` does."""
    if decode is None or callable(decode):
        return decode
    from webdataset import autodecode

    specs = [decode] if isinstance(decode, str) else list(decode)
    try:
        handlers = [autodecode.imagehandler(s) if isinstance(s, str) else s for s in specs]
    except ValueError as error:  # webdataset's "Unknown imagespec"
        raise ConfigError(
            f"decode={decode!r}: {error}; use one of {sorted(autodecode.imagespecs)}"
        ) from None
    if not all(callable(handler) for handler in handlers):
        raise ConfigError(f"decode={decode!r}: handlers must be spec strings or callables")
    return autodecode.Decoder(handlers)
