"""A remote index held in part: its header at once, each shard's rows when the order opens it.

A shard-local order (``ShardShuffle``) reads a few shards at a time, so a node needs the shard
list and the records of the shards it opens, not every sample's record: at 10^9 samples in
10^5 shards, 10 MiB of header and ~430 KiB a shard opened, against 41 GiB for the whole index.

The local copy is an ordinary index file (so it is memory-mapped and shared by the node's
processes like a whole one) whose arrays are a hole of the right size (a sparse file: no disk
or memory until written), followed by one flag byte per shard. Its header is the remote one
with a ``"partial"`` entry: the remote URL, where the remote arrays start, where the flags are.
A process that needs a shard's rows and finds its flag 0 fetches them (one ranged read per
array, shards fetched concurrently), writes them in place and sets the flag; processes racing
on a shard write the same bytes, so no lock is needed. The flags live in the same file, so the
atomic replace of a stale copy replaces them too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from resumable_loader.errors import SampleIndexError, ShardError
from resumable_loader.index import file
from resumable_loader.index.atomic import atomic_write
from resumable_loader.index.paths import StorageOptions, fork_safe
from resumable_loader.storage.client import ObjectChanged, client_for

logger = logging.getLogger("resumable_loader")
ROWS = ("all", "on_demand")  # what ``index_rows`` may be
_REPLACED = (
    "{url}: the index was replaced in storage since this node fetched its header, so its rows "
    "no longer fit the shard list held here; restart the job (a new run fetches the new index)"
)
_FETCHES_IN_FLIGHT = 8  # shards whose rows are fetched at once


def partial_path(path: Path) -> Path:
    """Where the partial copy of the index kept whole at ``path`` lives (another file, so the
    two never stand in for each other)."""
    return path.with_name(path.name.removesuffix(file.SUFFIX) + ".partial" + file.SUFFIX)


def fetch_partial(url: str, path: Path, storage_options: StorageOptions = None) -> bool:
    """Write at ``path`` a partial copy of the index at ``url``: its header (two ranged reads),
    the arrays left as a hole, every shard's flag 0. False if there is no index at ``url`` or
    it cannot be read (logged: the caller fetches it whole or builds it)."""
    try:
        header, remote_start, etag = fetch_header(url, storage_options)
    except (ShardError, SampleIndexError) as error:
        if not isinstance(error.__cause__, FileNotFoundError):
            logger.warning("cannot read the header of the index %s (%s)", url, error)
        return False
    arrays_end = max(
        (spec["offset"] + _array_bytes(spec) for spec in header["arrays"].values()), default=0
    )
    flags_at = file._aligned(arrays_end)
    header["partial"] = {
        "url": url,
        "remote_start": remote_start,
        "flags_at": flags_at,
        "etag": etag,
    }
    head = msgpack.packb(header)
    start = file._aligned(file._PREFIX + len(head))
    # never over a copy another process (a rank of the node) published meanwhile: it maps
    # that one and writes the rows it fetches into it
    with atomic_write(path, replace=False) as f:
        f.write(file.MAGIC + len(head).to_bytes(8, "little") + head)
        f.truncate(start + flags_at + len(header["shards"]))  # a hole: zeros, no disk used
    return True


def fetch_header(
    url: str, storage_options: StorageOptions = None
) -> tuple[dict[str, Any], int, str | None]:
    """The header of the index file at ``url``, where its arrays start, and the ETag of the
    object read (None where the store has none): two ranged reads (the fixed prefix, then the
    header), the shard list without the samples' records (about 105 B a shard, against 44 B
    a sample for the records). Both reads, and every later read of its rows, are conditional
    on that ETag: rows of an index republished since would not fit the shard list held.

    Raises:
        SampleIndexError: not an index file, another format version, or replaced meanwhile.
    """
    client = client_for(url, fork_safe(storage_options))
    version = client.stat(url).version
    etag = version if isinstance(version, str) else None
    try:
        prefix = client.read_range(url, 0, file._PREFIX, etag=etag)
        if prefix[: len(file.MAGIC)] != file.MAGIC:
            raise SampleIndexError(f"{url}: not a resumable_loader index")
        length = int.from_bytes(prefix[len(file.MAGIC) :], "little")
        header = msgpack.unpackb(client.read_range(url, file._PREFIX, length, etag=etag))
    except ObjectChanged:
        raise SampleIndexError(_REPLACED.format(url=url)) from None
    file.check_header(url, header)
    return header, file._aligned(file._PREFIX + length), etag


class ShardRows:
    """The shards of a partial index whose rows are in its local file; fetches the others.

    Args:
        path: the local file.
        header: its header (with the ``"partial"`` entry).
        storage_options: the remote index's endpoint, credentials and retry knobs.
    """

    def __init__(
        self, path: Path, header: dict[str, Any], storage_options: StorageOptions = None
    ) -> None:
        partial = header["partial"]
        self.path, self.header, self.url = path, header, partial["url"]
        self.storage_options = storage_options
        with open(path, "rb") as f:
            head_length = int.from_bytes(f.read(file._PREFIX)[len(file.MAGIC) :], "little")
        self._local_start = file._aligned(file._PREFIX + head_length)
        self._remote_start = partial["remote_start"]
        self._flags_at = self._local_start + partial["flags_at"]
        # a shared read-only map: it sees the flags any process of the node writes
        shards = len(header["shards"])
        self.flags = np.memmap(path, np.uint8, "r", offset=self._flags_at, shape=(shards,))
        counts = np.array([s["samples"] for s in header["shards"]], np.int64)
        self._first = np.concatenate([[0], np.cumsum(counts)])

    def missing(self, shards: np.ndarray) -> np.ndarray:
        """Those of ``shards`` (ints) whose rows are not here yet, each once."""
        shards = np.unique(shards)
        return shards[self.flags[shards] == 0]

    def ensure(self, shards: np.ndarray) -> None:
        """Fetch the rows of those of ``shards`` not here yet (concurrently), write them in
        place and flag them."""
        missing = self.missing(shards).tolist()
        if not missing:
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            if len(missing) == 1:
                self._fetch(fd, missing[0])
            else:
                with ThreadPoolExecutor(min(len(missing), _FETCHES_IN_FLIGHT)) as pool:
                    list(pool.map(lambda shard: self._fetch(fd, shard), missing))
        finally:
            os.close(fd)

    def _fetch(self, fd: int, shard: int) -> None:
        first, rows = int(self._first[shard]), int(self._first[shard + 1] - self._first[shard])
        places = []
        for spec in self.header["arrays"].values():
            row_bytes = _array_bytes(spec) // max(spec["shape"][0], 1)
            places.append((spec["offset"] + first * row_bytes, rows * row_bytes))
        ranges = [(self._remote_start + at, length) for at, length in places]
        etag = self.header["partial"].get("etag")  # none in a copy made before it was kept
        try:
            parts = _client(self.url, self.storage_options).read_ranges(self.url, ranges, etag=etag)
        except ObjectChanged:
            # this copy can never fetch its rows again: the next run fetches the new header
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            raise SampleIndexError(_REPLACED.format(url=self.url)) from None
        for (at, length), data in zip(places, parts, strict=True):
            if len(data) != length:
                raise SampleIndexError(
                    f"{self.url}: {len(data)} bytes of the index where {length} were expected "
                    "(the index is shorter than its header says); rebuild it"
                )
            os.pwrite(fd, data, self._local_start + at)
        os.pwrite(fd, b"\x01", self._flags_at + shard)  # after the rows: a flag means they are in


def _array_bytes(spec: dict[str, Any]) -> int:
    return np.dtype(spec["dtype"]).itemsize * int(np.prod(spec["shape"], dtype=np.int64))


def _client(url: str, storage_options: StorageOptions) -> Any:
    """The client for index reads: the data loader's worker processes use their own default
    client (obstore for s3://, started in the worker); the main process keeps to fsspec, since
    obstore's runtime would not survive the fork of the workers it starts later."""
    from torch.utils.data import get_worker_info

    in_worker = get_worker_info() is not None
    return client_for(url, storage_options if in_worker else fork_safe(storage_options))


class RecordsOnDemand:
    """An index's ``records`` for reads by sample id (``records[i]``, ``records[ids]``) that
    fetch the rows of a partial index's shards before they are read."""

    def __init__(self, index: Any) -> None:
        self._index, self._records = index, index.records

    def __getitem__(self, key: Any) -> np.ndarray:
        self._index.ensure_rows(key)
        return self._records[key]


def records_of(index: Any) -> Any:
    """What a dataset reads records through: the memory-mapped ``records`` of a whole index,
    a :class:`RecordsOnDemand` of a partial one."""
    return index.records if index.partial is None else RecordsOnDemand(index)
