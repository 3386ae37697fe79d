"""The node cache: shard blocks as files in one folder, shared by every process of a node.

Why files: the workers and ranks of a node are separate processes. A block is written to a
unique temp name and ``os.rename``d to ``<shard>-<block>.blk``, which is atomic, so a reader
sees a whole block or none; no process ever holds a lock or a shared-memory name. A process
killed while writing leaves only its temp file, which the next cache opened on the folder
removes (its writer's pid is gone, or the file is older than ``TEMP_SECONDS``); nothing a crash
leaves behind can make another process wait.

Eviction without coordination: every process tracks the folder's size (by listing it when its
own writes may have filled it) and, past ``capacity``, removes the blocks whose next use is
furthest in the future (Belady's MIN: the reader knows the schedule and supplies ``next_use``),
or with ``eviction="lru"`` the least recently read ones (a read touches the file's mtime). A
block removed while another process reads it stays readable by that process (POSIX unlink); a
process that finds a block gone fetches it again, which costs bytes, never correctness.
Each block's state on the node (never fetched, held, evicted) is one byte of a shared
:class:`~resumable_loader.storage.block_states.BlockStates`, so that a reader missing a block
can tell "evicted" (fetch it now) from "not fetched yet" (its owner may be slow: wait); and a
process fetching a block leaves an empty ``<shard>-<block>.fetching`` until it is published (or
the fetch failed), so a reader of a block evicted and being fetched again waits for it instead
of fetching it too. A marker older than the reader's wait is ignored (its writer may have died).

Two tiers: a cache may ``spill`` into a second one (a folder on a local disk with its own
bound, ``Prefetch(disk_dir=..., disk_bytes=...)``). A block evicted from the first tier goes to
the second instead of away (which evicts by the same policy: under Belady, blocks with no use
planned go first, then those used furthest ahead); a read, a lookup and the block states
see both tiers, so a dataset larger than the memory tier but not the disk is fetched once a
node, across epochs and runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from resumable_loader._lru import LRU
from resumable_loader.errors import ConfigError
from resumable_loader.storage.block_states import GONE, HELD, NEW, BlockStates

Key = tuple[int, int]  # (shard, block)
TEMP_SECONDS = 300.0
SUFFIX = ".blk"
FETCHING = ".fetching"
# Evict down to this fraction of the capacity, leaving room for blocks other processes are
# writing meanwhile.
LOW_WATER = 0.9
_RESCAN_PUTS = 16


def open_blocks_bound() -> int:
    """How many block files a process keeps open for reading: a sixteenth of its soft limit
    on file descriptors, between 64 and 1024. A global shuffle reads every block of the data
    in turn, so a bound below the blocks held reopens a block for most reads (64 against the
    bench's 72 blocks: ~3,200 opens an epoch a process); the sixteenth leaves the rest of the
    descriptors to the user's code, the other datasets and torch's workers."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1024
    return min(1024, max(64, soft // 16))


EVICTIONS = ("belady", "lru")


def check_eviction(eviction: str) -> None:
    """Refuse an eviction policy other than :data:`EVICTIONS` (ConfigError)."""
    if eviction not in EVICTIONS:
        raise ConfigError(f"eviction must be 'belady' or 'lru', got {eviction!r}")


class NodeCache:
    """Blocks in ``root``, at most about ``capacity`` bytes of them.

    Args:
        root: the folder (created); one per index fingerprint, so shard sets never mix.
        capacity: bytes of blocks kept.
        states: the node's block states (shared by the tiers).
        eviction: "belady" (next use furthest away, by ``next_use``) or "lru".
        spill: a second tier, where evicted blocks go instead of away (see the module).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        capacity: int,
        states: BlockStates,
        *,
        eviction: str = "belady",
        spill: NodeCache | None = None,
    ) -> None:
        check_eviction(eviction)
        self.root, self.capacity, self.eviction = Path(root), capacity, eviction
        self.root.mkdir(parents=True, exist_ok=True)
        self.spill, self.states = spill, states
        self._next_use: Callable[[Key], float] = _never
        self._scanned = 0  # bytes in the folder at the last scan
        self._written = self._puts = 0  # bytes and blocks this process wrote since
        self._used_at_scan = _used(self.root)  # the file system's used bytes then
        self._open: LRU[Key, int] = LRU(open_blocks_bound(), cost=_one, evicted=os.close)
        remove_dead_temps(self.root)

    @property
    def next_use(self) -> Callable[[Key], float]:
        """Belady's clock: a block's next planned use (inf: none), given by the reader; the
        spill tier shares it."""
        return self._next_use

    @next_use.setter
    def next_use(self, clock: Callable[[Key], float]) -> None:
        self._next_use = clock
        if self.spill is not None:
            self.spill.next_use = clock

    @property
    def tiers_capacity(self) -> int:
        """The bytes this tier and the ones it spills into hold: what a reader planning
        whole blocks may count on (a block evicted from here is still read from the next)."""
        return self.capacity + (0 if self.spill is None else self.spill.tiers_capacity)

    def path(self, key: Key) -> Path:
        return self.root / f"{key[0]}-{key[1]}{SUFFIX}"

    def __contains__(self, key: Key) -> bool:
        return os.path.exists(self.path(key)) or (self.spill is not None and key in self.spill)

    def never_held(self, key: Key) -> bool:
        """Whether no process of the node has published ``key`` yet (rather than: it is held,
        or was evicted since)."""
        return self.states.get(key) == NEW

    def mark_fetching(self, key: Key) -> None:
        """Say that this process is fetching ``key`` (until :meth:`unmark_fetching`)."""
        self._fetching(key).touch()

    def unmark_fetching(self, key: Key) -> None:
        _unlink(self._fetching(key))

    def fetching(self, key: Key, within: float) -> bool:
        """Whether a process of the node said it was fetching ``key`` less than ``within``
        seconds ago."""
        try:
            return time.time() - self._fetching(key).stat().st_mtime < within
        except FileNotFoundError:
            return False

    def _fetching(self, key: Key) -> Path:
        return self.root / f"{key[0]}-{key[1]}{FETCHING}"

    def read(self, key: Key, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` of a cached block, or None if it is not cached.

        Blocks are kept open (:func:`open_blocks_bound` at most): a block's content never
        changes, and an open block removed by another process stays readable."""
        fd = self._open.get(key)
        if fd is None:
            try:
                fd = os.open(self.path(key), os.O_RDONLY)
            except FileNotFoundError:
                return None if self.spill is None else self.spill.read(key, offset, length)
            self._open.put(key, fd)
        if self.eviction == "lru":
            os.utime(fd)
        return os.pread(fd, length, offset)

    def put(self, key: Key, data: bytes) -> bool:
        """Publish a block (atomically); False if the folder is full even after evicting."""
        temp = self.root / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        for attempt in range(2):
            try:
                with open(temp, "wb") as f:
                    f.write(data)
                os.rename(temp, self.path(key))
                self.states.set(key, HELD)
                break
            except OSError:  # ENOSPC and the like: make room once, then give up on caching
                _unlink(temp)
                if attempt:
                    return False
                self.evict(self.capacity // 2)
        self._written += len(data)
        self._puts += 1
        # Every process's writes since the scan show in the file system's used bytes (a
        # statvfs, ~1 us; other files' too, which only brings the scan forward): so no process
        # adds its share past the bound before it looks (counting its own writes only, 8
        # processes each added up to 0.9x of it: the folder reached 4x)
        grown = max(self._written, _used(self.root) - self._used_at_scan)
        if self._scanned + grown > self.capacity * LOW_WATER or self._puts >= _RESCAN_PUTS:
            self.evict(self.capacity)
        return True

    def evict(self, limit: int) -> None:
        """If the blocks pass ``limit`` bytes, remove them by the policy until below
        ``LOW_WATER`` of it (into the spill tier, if there is one)."""
        self._used_at_scan = _used(self.root)
        blocks = self._scan()
        total = sum(size for _, size, _ in blocks)
        self._written = self._puts = 0
        if total > limit:
            if self.eviction == "lru":
                blocks.sort(key=lambda b: b[2])  # least recently read first
            else:
                blocks.sort(key=lambda b: (-self._next_use(b[0]), b[0]))  # furthest first
            for key, size, _ in blocks:
                if total <= limit * LOW_WATER:
                    break
                if not self._spilled(key):
                    self.states.set(key, GONE)  # before the unlink: a reader never sees it held
                _unlink(self.path(key))
                total -= size
        self._scanned = total

    def _spilled(self, key: Key) -> bool:
        """Copy a block being evicted into the spill tier; whether the node still holds it
        (there, or gone already: another process evicted it first)."""
        if self.spill is None:
            return False
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return True
        return self.spill.put(key, data)

    def _scan(self) -> list[tuple[Key, int, float]]:
        """(key, bytes, mtime) of every block in the folder."""
        blocks = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                key = _key(entry.name)
                if key is None:
                    continue
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                blocks.append((key, info.st_size, info.st_mtime))
        return blocks

    def close(self) -> None:
        """Close the block files this process keeps open."""
        for fd in self._open.pop_all():
            os.close(fd)
        if self.spill is not None:
            self.spill.close()

    def __repr__(self) -> str:
        spill = f", spill={self.spill!r}" if self.spill is not None else ""
        return (
            f"NodeCache({str(self.root)!r}, capacity={self.capacity}, "
            f"eviction={self.eviction!r}{spill})"
        )


def remove_dead_temps(root: Path) -> None:
    """Remove temp files whose writer is gone (or that are older than ``TEMP_SECONDS``), and
    fetching markers that old."""
    cutoff = time.time() - TEMP_SECONDS
    for marker in root.glob(f"*{FETCHING}"):
        with contextlib.suppress(OSError):
            if marker.stat().st_mtime < cutoff:
                marker.unlink()
    for path in root.glob(".tmp-*"):
        try:
            pid = int(path.name.split("-")[1])
            if not _alive(pid) or path.stat().st_mtime < cutoff:
                path.unlink()
        except (ValueError, IndexError, OSError):
            continue


def _used(folder: Path) -> int:
    """Bytes in use on the file system that holds ``folder``."""
    info = os.statvfs(folder)
    return (info.f_blocks - info.f_bfree) * info.f_frsize


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie (killed, not yet reaped by its new parent, as a
    SIGKILLed loader's workers are for a moment) writes nothing more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): kill's answer stands
    return stat.rpartition(")")[2].split()[0] != "Z"


def _key(name: str) -> Key | None:
    if not name.endswith(SUFFIX):
        return None
    shard, _, block = name[: -len(SUFFIX)].partition("-")
    try:
        return int(shard), int(block)
    except ValueError:
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _one(_: int) -> int:
    return 1


def _never(_: Key) -> float:
    return math.inf
