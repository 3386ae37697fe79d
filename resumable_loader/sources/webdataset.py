"""WebDataset tar shards as a map-style dataset: one read of a sample's span, cut by its record."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from resumable_loader.errors import RESTORE_OR_REINDEX, ConfigError, ShardError
from resumable_loader.index.partial import records_of
from resumable_loader.index.paths import is_url
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.index.tar import (
    KEY_AT,
    KEY_LENGTH,
    LENGTH,
    MAGIC,
    MAGIC_AT,
    RECORD,
    SHARD,
    START,
    check_sample,
    read_sample,
)
from resumable_loader.loader.keyed_fetch import install_batch_sample_key
from resumable_loader.sources._blocks import BlockCache
from resumable_loader.sources._indexed import IndexedDataset, check_bytes
from resumable_loader.sources._remote import RemoteReads
from resumable_loader.storage.reader import Prefetch

Decode = str | Sequence[Any] | Callable[[dict[str, Any]], dict[str, Any]] | None
# Read-ahead block for fsspec URLs (one range request a block, not a sample), and the bytes of
# blocks kept per process. Local files read a sample per slice of a memory map by default: from
# the page cache a read per sample measured faster than blocks, from disk blocks won for one
# process but not reliably with workers, and under a global shuffle blocks multiply the bytes read
# (docs/shards.md, "Read locality").
CHECKS = ("fast", "full")
RECORD_SPAN = LENGTH + 1  # a record's first columns: shard, start, length
READ_AHEAD = 1 * 2**20
READ_AHEAD_CACHE_BYTES = 256 * 2**20


class TarShardDataset(RemoteReads, IndexedDataset):
    """Samples of WebDataset tar shards by global id, as WebDataset's dicts.

    Each sample is ``{"__key__": key, "__url__": shard, ext: bytes, ...}``, cut from its byte
    span at the member offsets the index records (no tar header is parsed on the read path).
    Without read-ahead (local files, by default) the span is one slice of the shard's memory
    map; with it (fsspec URLs, by default) the span comes from aligned blocks of
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
        index_url: remote shards only: where their index is kept in storage (default beside
            the first shard): fetched from there instead of scanning the shards, written there
            when built (``resumable-loader index --index-url`` publishes one); see
            :meth:`ShardedIndex.for_shards`.
        index_rows: remote shards only: "all" (default) fetches the whole index; "on_demand"
            fetches its header (the shard list) and each shard's records when a read first
            needs them, for shard-local orders (``ShardShuffle``) over many shards; see
            :meth:`ShardedIndex.for_shards`.
        on_error: "raise" or "skip" unreadable samples when the index is built; see
            :meth:`ShardedIndex.build`.
        read_ahead: block size in bytes, 0 for a read per sample, or None (default):
            ``READ_AHEAD`` (1 MiB) for fsspec URLs, 0 for local files. It pays with the
            shard-local shuffle; under a global shuffle it multiplies the bytes read by about
            block / sample size, so pass 0 there.
        cache_bytes: bytes of read-ahead blocks kept per process (default
            ``READ_AHEAD_CACHE_BYTES``, 256 MiB): about 2 * ``window`` blocks plus 4 times the
            bytes of the samples in the shuffle buffer, or blocks are fetched again. With
            ``prefetch``, the bound of the node cache shared by the node's processes.
        prefetch: a :class:`~resumable_loader.storage.reader.Prefetch`, True (its defaults),
            False, or None (default: on for URLs): fetch ahead what the loader's order will
            read, through a node cache of ``read_ahead``-byte blocks (docs/remote.md).
        storage_options: for the prefetching reads' storage client: the retry knobs
            (``deadline``, ``request_timeout``, ...), ``client`` and the backend's own options
            (endpoint, credentials); see :func:`resumable_loader.storage.client_for`.
        check: "fast" (default): each read checks its span's length and the ustar magic at its
            first header (under a microsecond); "full" also parses the span's tar headers and
            checks every member against its CRC32C recorded at index time (as
            ``resumable-loader verify-data`` does).
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
        check: str = "fast",
        prefetch: Prefetch | bool | None = None,
        storage_options: dict[str, Any] | None = None,
        index_url: str | None = None,
        index_rows: str = "all",
    ) -> None:
        if check not in CHECKS:
            raise ConfigError(f"check must be one of {CHECKS}, got {check!r}")
        self.check = check
        if read_ahead is not None:
            check_bytes("read_ahead", read_ahead)
        self.read_ahead, self.cache_bytes = read_ahead, check_bytes("cache_bytes", cache_bytes)
        super().__init__(
            shards,
            cache_dir=cache_dir,
            on_error=on_error,
            index_url=index_url,
            index_rows=index_rows,
            storage_options=storage_options,
        )
        self._init_remote(prefetch)
        self.decode = _decoder(decode)
        self._extensions = frozenset(self.index.fields)  # what a sample's members may be named
        self._fields = tuple(self.index.fields)  # the records' member columns, in order
        self._columns = tuple(  # each extension's payload offset and size columns
            (field, RECORD + 2 * i, RECORD + 2 * i + 1) for i, field in enumerate(self._fields)
        )
        self._records, self._urls = records_of(self.index), self.index.shard_urls
        self._magic = MAGIC if self.index.header.get("magic") else b""  # b"": no check
        self.bytes_read = self.read_requests = 0
        self._blocks: BlockCache | None = None

    def __getitem__(self, sample_id: int) -> dict[str, Any]:
        try:  # one row of the shared, memory-mapped records; a bad id fails in here
            record = self._records[sample_id].tolist()
            shard, start, length = record[:3]
            url = self._urls[shard]
        except (IndexError, TypeError, ValueError):
            self._locate(sample_id)  # raises the error that names the id and the fix
            raise
        sample = self._cut(url, self._read(shard, start, length), record, sample_id)
        return self._decode(sample, start) if self.decode else sample

    def __getitems__(self, sample_ids: list[int]) -> list[dict[str, Any]]:
        """The samples of ``sample_ids``, their spans read in (shard, offset) order.

        Each sample is decoded under its own key (:func:`install_batch_sample_key`), so a batch
        read here equals the same samples read one ``dataset[i]`` at a time, augmentations in
        ``decode`` included.
        """
        try:  # numpy would take a bool in the list as 0 or 1: refused as dataset[True] is
            records = None if bool in map(type, sample_ids) else self._records[sample_ids]
        except (IndexError, TypeError, ValueError):
            records = None
        if records is None or records.ndim != 2:
            return [self[i] for i in sample_ids]  # raises the per-id error
        order = np.lexsort((records[:, START], records[:, SHARD])).tolist()
        rows = records.tolist()
        spans = [rows[i][:RECORD_SPAN] for i in order]  # [shard, start, length]
        samples: list[Any] = [None] * len(rows)
        urls, decode = self._urls, self.decode
        for i, (shard, start, _), data in zip(order, spans, self._read_many(spans), strict=True):
            sample = self._cut(urls[shard], data, rows[i], sample_ids[i])
            if decode:  # in read order: each sample's own key makes the order irrelevant
                install_batch_sample_key(i)
                sample = self._decode(sample, start)
            samples[i] = sample
        return samples

    def _cut(self, url: str, data: bytes, record: list[int], sample_id: int) -> dict[str, Any]:
        """The sample in its span's ``data``, cut at the offsets its ``record`` holds.

        The fast check (under a microsecond) refuses a span read short or without the ustar
        magic at its first header; ``check="full"`` also compares the members with the span's
        parsed headers and each payload with its CRC32C (:func:`check_sample`).
        """
        if len(data) != record[LENGTH] or not data.startswith(self._magic, MAGIC_AT):
            raise _damaged(data, url, record[START], record[LENGTH], self._extensions)
        key_at, key_length = record[KEY_AT], record[KEY_LENGTH]
        if key_length:
            key = data[key_at : key_at + key_length].decode("utf-8", "surrogateescape")
        else:  # the key is split in its header (a ustar prefix): parse it
            key = read_sample(data, path=url, start=record[START], extensions=self._extensions)
            key = key["__key__"]
        sample: dict[str, Any] = {"__url__": url, "__key__": key}
        for extension, at_column, size_column in self._columns:
            at = record[at_column]
            if at:
                sample[extension] = data[at : at + record[size_column]]
        if self.check == "full":
            checksums = self.index.checksums[sample_id].tolist()
            start = record[START]
            check_sample(sample, data, checksums, path=url, start=start, fields=self._fields)
        return sample

    def _read_many(self, spans: Sequence[Sequence[int]]) -> list[bytes]:
        """The bytes of each (shard, start, length) span, in order: one ``_read`` each."""
        return [self._read(shard, start, length) for shard, start, length in spans]

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
        """The span's bytes (fewer if the shard is shorter): one slice of the shard's memory
        map where it is a local file read a span at a time (mapped by its first read here), so
        a read costs no more than the slice; else prefetched, read ahead or fetched."""
        mapped = self._mapped.get(shard)
        if mapped is None or mapped.closed:  # closed: evicted from the open files
            return self._read_through(shard, start, length)
        data = mapped[start : start + length]  # a record's span: inside the indexed size
        self.bytes_read += len(data)
        self.read_requests += 1
        return data

    def _read_through(self, shard: int, start: int, length: int) -> bytes:
        """``_read`` of a shard not memory-mapped for span reads in this process (yet)."""
        if self.prefetch is not None:
            return self._remote_read(shard, start, length)
        remote = is_url(self._urls[shard])
        block = self.read_ahead
        if block is None:
            block = READ_AHEAD if remote else 0
        with self._naming_sample(shard, start):
            if not block:
                data = self._fetch(shard, start, length)
                if not remote:
                    self._mapped[shard] = self._file(shard)
                return data
            if self._blocks is None:
                self._blocks = BlockCache(block, self.cache_bytes)
            return self._blocks.read(shard, start, length, lambda at, n: self._fetch(shard, at, n))

    def _fetch(self, shard: int, start: int, length: int) -> bytes:
        """One storage request: ``length`` bytes at ``start`` (clipped to the indexed size).

        A URL's goes through the storage client, as the prefetcher's requests do
        (:meth:`RemoteReads._range`: ``storage_options``, retries under the deadline, typed
        errors); a local file's is a slice of its memory map.
        """
        if is_url(self._urls[shard]):
            return self._range(shard, start, length)
        length = self._clipped(shard, start, length)
        data = self._file(shard)[start : start + length]
        self.bytes_read += len(data)
        self.read_requests += 1
        return data

    def _open(self, shard: int, url: str) -> mmap.mmap:
        """A local shard's memory map (a slice of it measured 2.3x faster than os.pread); a
        URL is never opened here: :meth:`_fetch` reads it through the storage client."""
        with open(url, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self) -> None:
        self._blocks = None
        super().close()

    def __getstate__(self) -> dict[str, Any]:  # the records are mapped again from the index
        return {**super().__getstate__(), "_blocks": None, "_records": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._records = records_of(self.index)

    def __repr__(self) -> str:
        return (
            f"TarShardDataset({self.index!r}, decode={self.decode!r}, "
            f"read_ahead={self.read_ahead!r}, cache_bytes={self.cache_bytes}, check={self.check!r})"
        )


def _damaged(
    data: bytes, path: str, start: int, length: int, extensions: frozenset[str]
) -> ShardError:
    """The error for a span that fails the fast check: what parsing its headers finds wrong,
    else the length or the missing magic."""
    if len(data) < length:
        return ShardError(
            f"{path}: {length} bytes expected at offset {start}, {len(data)} read; the shard "
            f"is shorter than when it was indexed: {RESTORE_OR_REINDEX}"
        )
    read_sample(data, path=path, start=start, extensions=extensions)  # raises if it can
    return ShardError(
        f"{path}: no tar header (ustar magic) at offset {start}, where the index has a sample; "
        f"the shard changed since it was indexed: {RESTORE_OR_REINDEX}"
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
