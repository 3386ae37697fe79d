"""Where each block of a shard set stands on a node: never fetched, held, or evicted.

One byte a block in a small file beside the node cache (``states-<block size>-<blocks>``),
memory-mapped by every process of the node: a byte is written whole, so no lock is needed, and
a process killed at any moment leaves a valid state. It tells a reader missing a block whether
the block's owner has yet to fetch it (wait for it) or it was evicted since (fetch it now),
without one marker file per evicted block: 1 byte a block is 10 MB a node for 10 TB in 1 MiB
blocks.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NEW, HELD, GONE = 0, 1, 2  # never published on this node; in a tier of the cache; evicted


class BlockStates:
    """The state of every (shard, block) of a shard set, shared through a file.

    Args:
        folder: where the file lives (the node cache's folder).
        blocks_per_shard: blocks of each shard, in index order.
        block_size: bytes a block (names the file, so sets of blocks never mix).
    """

    def __init__(self, folder: Path, blocks_per_shard: Sequence[int], block_size: int) -> None:
        self.first = np.concatenate([[0], np.cumsum(blocks_per_shard, dtype=np.int64)])
        total = int(self.first[-1])
        self.path = Path(folder) / f"states-{block_size}-{total}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < total:  # processes racing here grow it to the same size
                # allocated, not a sparse ftruncate: on a full file system (/dev/shm, often)
                # a mapped page first written would kill the process with SIGBUS; this fails
                # here instead, with ENOSPC
                os.posix_fallocate(fd, 0, total)
            self._map = mmap.mmap(fd, total) if total else None
        finally:
            os.close(fd)
        self.states = np.frombuffer(self._map, np.uint8) if total else np.zeros(0, np.uint8)

    def get(self, key: tuple[int, int]) -> int:
        return int(self.states[self.first[key[0]] + key[1]])

    def set(self, key: tuple[int, int], state: int) -> None:
        self.states[self.first[key[0]] + key[1]] = state
