"""Content checksums of a checkpoint's files: taken while they are written, checked before a load.

A save's files (DCP's ``.distcp`` data and ``.metadata``, the RNG files) are hashed as their
bytes go to disk, by a DCP ``FileSystemWriter`` whose streams feed each write to an xxHash
(``xxh3_64``, ~25 GiB/s on one core, so it adds a few percent to a write that is bound by the
disk). The digests travel to the coordinator with DCP's own write results and end up in the
manifest; the manifest carries a digest of itself. A load re-reads every listed file (in
parallel, each rank a share) and refuses the checkpoint if one differs, before any state is
touched: a flipped byte inside a tensor, which DCP's own load would read silently, is named
with its file, offset range and both digests.
"""

from __future__ import annotations

import contextlib
import io
import json
import mmap
import os
import threading
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xxhash
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

ALGORITHM = "xxh3_64"
_THREADS = 4  # files hashed at once per rank (xxhash releases the GIL)
_THREADED_BYTES = 16 << 20  # below this, files are hashed in turn: ~1 ms, less than a pool
_METADATA = ".metadata"


def new_hasher() -> Any:
    """A fresh hasher of :data:`ALGORITHM`."""
    return xxhash.xxh3_64()


def entry(hasher: Any, size: int) -> dict[str, Any]:
    """A file's record in the manifest: its digest and its length."""
    return {ALGORITHM: hasher.hexdigest(), "bytes": size}


def of_bytes(data: bytes) -> dict[str, Any]:
    """The record of a file whose whole content is ``data``."""
    hasher = new_hasher()
    hasher.update(data)
    return entry(hasher, len(data))


def of_json(value: Any) -> str:
    """The digest of ``value`` as canonical JSON (sorted keys, no spaces): the manifest's own."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return xxhash.xxh3_64_hexdigest(text.encode())


class _HashingStream(io.RawIOBase):
    """A write-only file that hashes every byte written through it."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        super().__init__()
        self.raw, self.hasher, self.size = raw, new_hasher(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        written = self.raw.write(view)
        self.hasher.update(view[:written])
        self.size += written
        return written

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        self.raw.flush()  # DCP fsyncs through the descriptor: what is buffered must be there
        return self.raw.fileno()


class _HashingFileSystem(FileSystem):
    """DCP's local file system, with every file written recorded as (name -> digest entry)."""

    def __init__(self) -> None:
        super().__init__()
        self.digests: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Generator[io.IOBase, None, None]:
        if "w" not in mode:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with open(path, mode) as raw:
            stream = _HashingStream(raw)
            yield stream
            raw.flush()
        with self._lock:
            self.digests[Path(path).name] = entry(stream.hasher, stream.size)


class _FileDigests:
    """Rides with one rank's write results to the coordinator: that rank's file digests."""

    def __init__(self, digests: dict[str, dict[str, Any]]) -> None:
        self.digests = digests


class HashingWriter(FileSystemWriter):
    """DCP's FileSystemWriter that hashes each file as it writes it.

    After ``dcp.save`` (or the async save's completion), :attr:`files` holds, on the
    coordinator, the digest entry of every data file of every rank and of ``.metadata``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self.fs = _HashingFileSystem()
        self.files: dict[str, dict[str, Any]] = {}

    def write_data(self, plan: Any, planner: Any) -> Future[list[WriteResult]]:
        written = super().write_data(plan, planner).wait()
        mine = {n: d for n, d in self.fs.digests.items() if n.endswith(".distcp")}
        done: Future[list[WriteResult]] = Future()
        done.set_result([*written, _FileDigests(mine)])  # type: ignore[list-item]
        return done

    def finish(self, metadata: Metadata, results: list[list[Any]]) -> None:
        files: dict[str, dict[str, Any]] = {}
        plain = []
        for per_rank in results:
            for result in per_rank:
                if isinstance(result, _FileDigests):
                    files.update(result.digests)
            plain.append([r for r in per_rank if not isinstance(r, _FileDigests)])
        super().finish(metadata, plain)
        files[_METADATA] = self.fs.digests[f"{_METADATA}.tmp"]  # written, then renamed
        self.files = files


def digest_file(path: Path) -> dict[str, Any]:
    """The digest entry of the file at ``path`` (OSError if it cannot be read).

    Hashed through a read-only memory map: the page cache's pages go to the hash without a
    copy into a buffer (3x faster than ``readinto`` here; the files of a checkpoint being
    loaded are not written meanwhile, since the save that wrote them has finished)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:  # mmap refuses an empty file
            return entry(new_hasher(), 0)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            hasher = new_hasher()
            hasher.update(mapped)
            return entry(hasher, len(mapped))


def problem(directory: Path, name: str, expected: dict[str, Any]) -> str | None:
    """What is wrong with file ``name`` against its manifest entry ``expected``, or None."""
    path = directory / name
    try:
        found = digest_file(path)
    except FileNotFoundError:
        return f"{path}: missing (the manifest lists it, {expected['bytes']} bytes)"
    except OSError as error:
        return f"{path}: unreadable ({error})"
    return compare(path, found, expected)


def compare(path: Path, found: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """What differs between the file at ``path`` as read (``found``, its digest entry) and its
    manifest entry ``expected``, or None."""
    if found["bytes"] != expected["bytes"]:
        return f"{path}: {found['bytes']} bytes, the manifest says {expected['bytes']} (truncated?)"
    if found[ALGORITHM] != expected[ALGORITHM]:
        return (
            f"{path}: content checksum {ALGORITHM} {found[ALGORITHM]}, the manifest says "
            f"{expected[ALGORITHM]}: its bytes changed after the save"
        )
    return None


def check_files(
    directory: Path, files: dict[str, dict[str, Any]], names: Iterable[str]
) -> list[str]:
    """Every problem among ``names`` (each hashed in full, several files at once when they
    are large), in order."""
    names = sorted(names)

    def check(name: str) -> str | None:
        return problem(directory, name, files[name])

    if len(names) <= 1 or sum(files[name]["bytes"] for name in names) < _THREADED_BYTES:
        found = [check(name) for name in names]  # starting threads would cost more
    else:
        with ThreadPoolExecutor(max_workers=min(_THREADS, len(names))) as pool:
            found = list(pool.map(check, names))
    return [text for text in found if text is not None]


def share(names: Iterable[str], rank: int, world_size: int) -> list[str]:
    """The files rank ``rank`` verifies: every ``world_size``-th, by name, from its own index."""
    return sorted(names)[rank::world_size]
