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
Eviction leaves an empty ``<shard>-<block>.gone`` beside (removed when the block is published
again; the newest ``GONE_PER_BLOCK`` per cached block are kept), so that a reader missing a
block can tell "evicted" (fetch it now) from "not fetched yet" (its owner may be slow: wait).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from resumable_loader._lru import LRU
from resumable_loader.errors import ConfigError

Key = tuple[int, int]  # (shard, block)
TEMP_SECONDS = 300.0
SUFFIX = ".blk"
GONE = ".gone"
# Eviction markers kept per block the cache holds (the oldest go): a cache too small for a
# global shuffle over a large dataset would otherwise leave one empty file per block ever evicted.
GONE_PER_BLOCK = 4
# Evict down to this fraction of the capacity, leaving room for blocks other processes are
# writing meanwhile.
LOW_WATER = 0.9
_RESCAN_PUTS = 16
OPEN_BLOCKS = 64  # block files a process keeps open for reading


class NodeCache:
    """Blocks in ``root``, at most about ``capacity`` bytes of them.

    Args:
        root: the folder (created); one per index fingerprint, so shard sets never mix.
        capacity: bytes of blocks kept.
        eviction: "belady" (next use furthest away, by ``next_use``) or "lru".
    """

    def __init__(self, root: str | os.PathLike, capacity: int, *, eviction: str = "belady") -> None:
        if eviction not in ("belady", "lru"):
            raise ConfigError(f"eviction must be 'belady' or 'lru', got {eviction!r}")
        self.root, self.capacity, self.eviction = Path(root), capacity, eviction
        self.root.mkdir(parents=True, exist_ok=True)
        self.next_use: Callable[[Key], float] = _never
        self._estimate = 0  # bytes in the folder at the last scan, plus this process's writes
        self._puts = 0
        self._open: LRU[Key, int] = LRU(OPEN_BLOCKS, cost=_one, evicted=os.close)
        remove_dead_temps(self.root)

    def path(self, key: Key) -> Path:
        return self.root / f"{key[0]}-{key[1]}{SUFFIX}"

    def __contains__(self, key: Key) -> bool:
        return os.path.exists(self.path(key))

    def evicted(self, key: Key) -> bool:
        """Whether ``key`` was evicted from the node and not published again since."""
        return os.path.exists(self._gone(key))

    def _gone(self, key: Key) -> Path:
        return self.root / f"{key[0]}-{key[1]}{GONE}"

    def read(self, key: Key, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` of a cached block, or None if it is not cached.

        Blocks are kept open (``OPEN_BLOCKS`` at most): a block's content never changes, and
        an open block removed by another process stays readable."""
        fd = self._open.get(key)
        if fd is None:
            try:
                fd = os.open(self.path(key), os.O_RDONLY)
            except FileNotFoundError:
                return None
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
                _unlink(self._gone(key))
                break
            except OSError:  # ENOSPC and the like: make room once, then give up on caching
                _unlink(temp)
                if attempt:
                    return False
                self.evict(self.capacity // 2)
        self._estimate += len(data)
        self._puts += 1
        if self._estimate > self.capacity * LOW_WATER or self._puts >= _RESCAN_PUTS:
            self.evict(self.capacity)
        return True

    def evict(self, limit: int) -> None:
        """If the blocks pass ``limit`` bytes, remove them by the policy until below
        ``LOW_WATER`` of it; keep the newest ``GONE_PER_BLOCK`` markers a block held."""
        blocks, gone = self._scan()
        keep = GONE_PER_BLOCK * max(len(blocks), 1)
        for marker, _ in sorted(gone, key=lambda g: g[1], reverse=True)[keep:]:
            _unlink(Path(marker))  # forgotten: a read missing that block waits (bounded) for it
        total = sum(size for _, size, _ in blocks)
        self._puts = 0
        if total > limit:
            if self.eviction == "lru":
                blocks.sort(key=lambda b: b[2])  # least recently read first
            else:
                blocks.sort(key=lambda b: (-self.next_use(b[0]), b[0]))  # furthest first
            for key, size, _ in blocks:
                if total <= limit * LOW_WATER:
                    break
                self._gone(key).touch()
                _unlink(self.path(key))
                total -= size
        self._estimate = total

    def _scan(self) -> tuple[list[tuple[Key, int, float]], list[tuple[str, float]]]:
        """(key, bytes, mtime) of every block in the folder, and (path, mtime) of every
        eviction marker."""
        blocks, gone = [], []
        with os.scandir(self.root) as entries:
            for entry in entries:
                key = _key(entry.name)
                marker = entry.name.endswith(GONE)
                if key is None and not marker:
                    continue
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                if marker:
                    gone.append((entry.path, info.st_mtime))
                else:
                    blocks.append((key, info.st_size, info.st_mtime))
        return blocks, gone

    def close(self) -> None:
        """Close the block files this process keeps open."""
        for fd in self._open.pop_all():
            os.close(fd)

    def __repr__(self) -> str:
        return (
            f"NodeCache({str(self.root)!r}, capacity={self.capacity}, eviction={self.eviction!r})"
        )


def remove_dead_temps(root: Path) -> None:
    """Remove temp files whose writer is gone (or that are older than ``TEMP_SECONDS``)."""
    cutoff = time.time() - TEMP_SECONDS
    for path in root.glob(".tmp-*"):
        try:
            pid = int(path.name.split("-")[1])
            if not _alive(pid) or path.stat().st_mtime < cutoff:
                path.unlink()
        except (ValueError, IndexError, OSError):
            continue


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
