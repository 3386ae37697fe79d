"""The index file: magic, a msgpack header, then 64-byte aligned raw arrays, memory-mapped on read.

Layout: ``RLINDEX\\0``, the header's length (uint64 little-endian), the msgpack header (which
records each array's offset, dtype and shape), padding to 64 bytes, the arrays. One file, so
one atomic rename publishes it; raw arrays, so a read maps them instead of copying, and every
worker process shares the same pages of the page cache.
"""

from __future__ import annotations

import mmap
import os
import shlex
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import xxhash

from resumable_loader.errors import SampleIndexError
from resumable_loader.index.atomic import atomic_write

MAGIC = b"RLINDEX\x00"
SUFFIX = ".rlindex"  # what the CLI writes and the datasets load without looking inside
# Version 1: tar spans (int64 start, length) per sample, or Parquet row groups per file;
#   "fields" held the tar extensions or the Parquet schema text.
# Version 2: "fields" holds extensions or column names, "schema" the Parquet schema text,
#   "on_error" the policy the index was built with; stamps may be text (remote ETags).
# Version 3: tar "records" (a row per sample: shard, span, key place, each member's payload
#   offset and size) and "checksums" (CRC32C per member) replace "spans"; "magic" says whether
#   every sample's first header has the ustar magic. An older file is rebuilt from its shard
#   list (ShardedIndex.load(..., rebuild=True), for_shards) or refused naming the command.
# Version 4: the header holds "digests": the xxh3_64 of the header itself (its msgpack without
#   "digests" and a partial copy's "partial") and of each array's bytes. The header's is
#   checked at every read, the arrays' on request (:func:`check_arrays`). Version 3 files,
#   which have none, are still read (unchecked), so no dataset is rescanned for them.
INDEX_VERSION = 4
READABLE_VERSIONS = (3, 4)
_UNSEALED = ("digests", "partial")  # header entries the header's digest does not cover
_ALIGN = 64
_PREFIX = len(MAGIC) + 8
_REBUILD = "(re)build it with: resumable-loader index SHARDS... --out PATH"


class IndexVersionError(SampleIndexError):
    """An index file of another format version; ``shards`` and ``on_error`` (from its header,
    None if unreadable) are what a rebuild of it needs.

    ``IndexVersionError(message)`` (no header) is the error rebuilt from its text, as torch's
    DataLoader re-raises a worker's error (``type(error)(text)``); its fields are None.
    """

    def __init__(self, path: Path | str, header: dict[str, Any] | None = None) -> None:
        if header is None:
            self.shards: list[str] | None = None
            self.on_error: str | None = None
            super().__init__(str(path))
            return
        try:
            self.shards = [entry["url"] for entry in header["shards"]]
            self.on_error = header["on_error"]
        except (KeyError, TypeError):
            self.shards = self.on_error = None
        command = _REBUILD
        if self.shards:
            shown = " ".join(shlex.quote(url) for url in self.shards[:3])
            more = " ..." if len(self.shards) > 3 else ""
            skip = " --on-error skip" if self.on_error == "skip" else ""
            command = (
                f"rebuild it with: resumable-loader index {shown}{more}{skip} --out "
                f"{shlex.quote(str(path))} (or ShardedIndex.load(path, rebuild=True))"
            )
        super().__init__(
            f"{path}: index format version {header.get('version')!r}, this release reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}; {command}"
        )


def write_index(path: str | os.PathLike, header: dict[str, Any], arrays: dict[str, Any]) -> None:
    """Write ``header`` (msgpack-able) and ``arrays`` to ``path`` atomically.

    A reader sees the previous file or the complete new one, never a partial one.

    Raises:
        SampleIndexError: the file cannot be written (the message says where and why).
    """
    layout, offset = {}, 0
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    for name, array in arrays.items():
        layout[name] = {"offset": offset, "dtype": array.dtype.str, "shape": list(array.shape)}
        offset += _aligned(array.nbytes)
    sealed = {k: v for k, v in header.items() if k not in _UNSEALED}
    sealed.update(version=INDEX_VERSION, arrays=layout)
    digests = {name: xxhash.xxh3_64_hexdigest(array) for name, array in arrays.items()}
    digests["header"] = xxhash.xxh3_64_hexdigest(msgpack.packb(sealed))
    head = msgpack.packb({**sealed, "digests": digests})
    data_start = _aligned(_PREFIX + len(head))
    try:
        with atomic_write(path) as f:
            f.write(MAGIC + len(head).to_bytes(8, "little") + head)
            for name, array in arrays.items():
                f.seek(data_start + layout[name]["offset"])
                f.write(array.tobytes())
            f.truncate(data_start + offset)
    except OSError as error:
        raise SampleIndexError(
            f"{path}: cannot write the index ({error}); choose another place (--out, cache_dir)"
        ) from None


def is_index_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an index: its name ends in ``.rlindex``, or it is a local file
    that starts with the index magic (an index written under another name through the API).

    A ``.rlindex`` name counts even if the file is missing, so loading it reports that.
    """
    path = os.fspath(path)
    if path.endswith(SUFFIX):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:  # missing, a directory, a URL or pattern: not an index file
        return False


def read_index(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and memory-mapped (read-only) arrays of an index file.

    Raises:
        SampleIndexError: a missing, foreign, truncated or corrupt file, or another version.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(_PREFIX)
            if len(prefix) < _PREFIX or prefix[: len(MAGIC)] != MAGIC:
                raise SampleIndexError(f"{path}: not a resumable_loader index; {_REBUILD}")
            head_length = int.from_bytes(prefix[len(MAGIC) :], "little")
            header = msgpack.unpackb(f.read(head_length)) if head_length < size else None
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    except FileNotFoundError:
        raise SampleIndexError(f"{path}: index file not found; {_REBUILD}") from None
    except IsADirectoryError:
        raise SampleIndexError(
            f"{path}: is a directory, not an index file; name the .rlindex file in it"
        ) from None
    except (ValueError, msgpack.UnpackException) as error:
        raise SampleIndexError(f"{path}: corrupt index header ({error}); {_REBUILD}") from None
    if not isinstance(header, dict):
        raise SampleIndexError(f"{path}: corrupt or truncated index header; {_REBUILD}")
    check_header(path, header)
    data_start = _aligned(_PREFIX + head_length)
    arrays = {}
    try:
        for name, spec in header["arrays"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            count = int(np.prod(shape))
            arrays[name] = np.frombuffer(
                mapped if count else b"", dtype, count, data_start + spec["offset"] if count else 0
            ).reshape(shape)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise SampleIndexError(
            f"{path}: corrupt or truncated index ({error}); {_REBUILD}"
        ) from None
    return header, arrays


def check_header(path: str | os.PathLike, header: dict[str, Any]) -> None:
    """Refuse a header of another version, or a version-4 one whose digest does not match.

    Raises:
        IndexVersionError: a version this release does not read.
        SampleIndexError: the header changed since it was written (a damaged file).
    """
    if header.get("version") not in READABLE_VERSIONS:
        raise IndexVersionError(path, header)
    if header["version"] < 4:
        return
    digests = header.get("digests")
    recorded = digests.get("header") if isinstance(digests, dict) else None
    sealed = msgpack.packb({k: v for k, v in header.items() if k not in _UNSEALED})
    if recorded != xxhash.xxh3_64_hexdigest(sealed):
        raise SampleIndexError(
            f"{path}: damaged index: its header's xxh3_64 is "
            f"{xxhash.xxh3_64_hexdigest(sealed)}, {recorded} when written; {_REBUILD}"
        )


def check_arrays(
    path: str | os.PathLike, header: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Refuse arrays whose bytes changed since they were written (version 4; reads all of
    them, so the caller decides when it pays).

    Raises:
        SampleIndexError: naming the first array that differs.
    """
    digests = header.get("digests") or {}
    for name, array in arrays.items():
        if name not in digests:
            continue
        found = xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array))
        if found != digests[name]:
            raise SampleIndexError(
                f"{path}: damaged index: its {name!r} array's xxh3_64 is {found}, "
                f"{digests[name]} when written; {_REBUILD}"
            )


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN
