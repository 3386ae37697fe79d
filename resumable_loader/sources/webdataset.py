"""WebDataset tar shards as a map-style dataset: a positioned read per sample, or read-ahead."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.index.paths import is_url
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.index.tar import read_sample
from resumable_loader.sources._blocks import BlockCache
from resumable_loader.sources._indexed import IndexedDataset, check_bytes

Decode = str | Sequence[Any] | Callable[[dict[str, Any]], dict[str, Any]] | None
# Read-ahead block for fsspec URLs (one range request a block, not a sample), and the bytes of
# blocks kept per process. Local files read a sample per os.pread by default: from the page
# cache pread measured faster than blocks, from disk blocks won for one process but not
# reliably with workers, and under a global shuffle blocks multiply the bytes read
# (docs/shards.md, "Read locality").
READ_AHEAD = 1 * 2**20
READ_AHEAD_CACHE_BYTES = 256 * 2**20


class TarShardDataset(IndexedDataset):
    """Samples of WebDataset tar shards by global id, as WebDataset's dicts.

    Each sample is ``{"__key__": key, "__url__": shard, ext: bytes, ...}``, parsed from its
    byte span. Without read-ahead (local files, by default) the span is one positioned read
    (``os.pread``); with it (fsspec URLs, by default) the span comes from aligned blocks of
    ``read_ahead`` bytes, each fetched with one range read and kept in a per-process LRU of
    ``cache_bytes`` (see :mod:`resumable_loader.sources._blocks`). ``bytes_read`` and
    ``read_requests`` count what this process asked of storage, read-ahead included.

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
        read_ahead: block size in bytes, 0 for a read per sample, or None (default):
            ``READ_AHEAD`` (1 MiB) for fsspec URLs, 0 for local files. It pays with the
            shard-local shuffle; under a global shuffle it multiplies the bytes read by about
            block / sample size, so pass 0 there.
        cache_bytes: bytes of read-ahead blocks kept per process (default
            ``READ_AHEAD_CACHE_BYTES``, 256 MiB): about 2 * ``window`` blocks plus 4 times the
            bytes of the samples in the shuffle buffer, or blocks are fetched again.
    """

    format = "tar"

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike] | ShardedIndex,
        *,
        decode: Decode = None,
        cache_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
        read_ahead: int | None = None,
        cache_bytes: int = READ_AHEAD_CACHE_BYTES,
    ) -> None:
        if read_ahead is not None:
            check_bytes("read_ahead", read_ahead)
        self.read_ahead, self.cache_bytes = read_ahead, check_bytes("cache_bytes", cache_bytes)
        super().__init__(shards, cache_dir=cache_dir, on_error=on_error)
        self.decode = _decoder(decode)
        self._extensions = frozenset(self.index.fields)  # what a sample's members may be named
        self.bytes_read = self.read_requests = 0
        self._blocks: BlockCache | None = None

    def __getitem__(self, sample_id: int) -> dict[str, Any]:
        shard, local = self._locate(sample_id)
        start, length = self.index.spans[int(self.index.shard_offsets[shard]) + local].tolist()
        url = self.index.shard_urls[shard]
        data = self._read(shard, start, length)
        if len(data) < length:
            raise ShardError(
                f"{url}: {length} bytes expected at offset {start}, {len(data)} read; the shard "
                "is shorter than when it was indexed: rebuild the index"
            )
        sample = {"__url__": url}
        sample.update(read_sample(data, path=url, start=start, extensions=self._extensions))
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
        """The span's bytes (fewer if the shard is shorter), through read-ahead if it is on."""
        block = self.read_ahead
        if block is None:
            block = READ_AHEAD if is_url(self.index.shard_urls[shard]) else 0
        if not block:
            return self._fetch(shard, start, length)
        if self._blocks is None:
            self._blocks = BlockCache(block, self.cache_bytes)
        return self._blocks.read(shard, start, length, lambda at, n: self._fetch(shard, at, n))

    def _fetch(self, shard: int, start: int, length: int) -> bytes:
        """One storage request: ``length`` bytes at ``start`` (clipped to the indexed size)."""
        length = max(0, min(length, self.index.header["shards"][shard]["bytes"] - start))
        handle = self._file(shard)
        if isinstance(handle, int):
            data = os.pread(handle, length, start)
        else:
            filesystem, path = handle
            data = filesystem.cat_file(path, start=start, end=start + length)
        self.bytes_read += len(data)
        self.read_requests += 1
        return data

    def _open(self, url: str) -> Any:
        if not is_url(url):
            return os.open(url, os.O_RDONLY)
        import fsspec

        return fsspec.core.url_to_fs(url)

    def close(self) -> None:
        self._blocks = None
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_blocks": None}

    def __repr__(self) -> str:
        return (
            f"TarShardDataset({self.index!r}, decode={self.decode!r}, "
            f"read_ahead={self.read_ahead!r}, cache_bytes={self.cache_bytes})"
        )


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
