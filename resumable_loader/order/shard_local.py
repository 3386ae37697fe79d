"""Shard-local shuffle: near-sequential reads through k open shards, shuffled block by block.

The epoch's order (see csrc/shard_blocks.h) is a pure function of (seed, epoch, shard sizes,
window, buffer size) and of the position: the shards in a Philox order, read as k lanes side by
side, and each block of ``3 * buffer_size`` consecutive positions shuffled within itself. So it is
the same for every worker count, rank, world size and batch size, and any position is computed
directly, at the cost of one block: a resume at position 10^9 costs what a fresh start does.
(Releases before it shuffled through a buffer replayed from the epoch's start, O(position) per
resume; docs/shards.md compares the two orders' quality.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from resumable_loader import _core
from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError
from resumable_loader.order.permutation import CHUNK_SIZE
from resumable_loader.order.philox import check_epoch, check_seed

MAX_LENGTH = 2**63 - 1  # the C++ order keeps int64 offsets
# A block holds BLOCK_PER_BUFFER * buffer_size positions: so it mixes as far as the shuffle
# buffer of buffer_size ids did (a block shuffle of M ids moves an id M/3 on average, the buffer
# about 0.74 * B), with the same read locality (docs/shards.md has the measurements).
BLOCK_PER_BUFFER = 3
# A block's Fisher-Yates draws multiply 32-bit words by its size, which stays below 2**32.
MAX_BUFFER_SIZE = (2**32 - 1) // BLOCK_PER_BUFFER
# Names the shard-local algorithm in the cursor's fingerprint, so that a cursor saved under
# another one is refused rather than resumed on a different order. "shard-blocks-v1": Feistel-v2
# shard order, k lanes, Fisher-Yates per block. Before it, shard-local cursors recorded
# "feistel-v2" (the shard order's permutation) for a shuffle buffer replayed from the epoch's
# start; those are refused (loader/cursor.py names the change).
SHARD_LOCAL_ALGORITHM = "shard-blocks-v1"


@dataclasses.dataclass(frozen=True)
class ShardShuffle:
    """Shard-local shuffle settings, for ``ResumableDataLoader(..., shard_shuffle=...)``.

    Args:
        window: shards open at once (k lanes read side by side).
        buffer_size: sets the shuffle's reach: blocks of ``3 * buffer_size`` consecutive
            positions are shuffled within themselves, which mixes about as far as a shuffle
            buffer of ``buffer_size`` ids; at most (2**32 - 1) // 3.
    """

    window: int = 4
    buffer_size: int = 1024

    def __post_init__(self) -> None:
        for name, high in (("window", None), ("buffer_size", MAX_BUFFER_SIZE + 1)):
            value = check_int(f"ShardShuffle {name}", getattr(self, name), low=1, high=high)
            object.__setattr__(self, name, value)

    def order_for(self, dataset: Any, *, seed: int) -> ShardLocalOrder:
        """The order of ``dataset``, which must expose ``shard_sizes`` (samples per shard)."""
        sizes = getattr(dataset, "shard_sizes", None)
        if sizes is None:
            raise ConfigError(
                f"shard_shuffle needs a dataset with shard_sizes (samples per shard), and "
                f"{type(dataset).__name__} has none; use TarShardDataset or ParquetDataset, or "
                "set shard_sizes on your dataset"
            )
        order = ShardLocalOrder(sizes, seed=seed, window=self.window, buffer_size=self.buffer_size)
        if len(order) != len(dataset):
            raise ConfigError(
                f"{type(dataset).__name__}.shard_sizes sum to {len(order)}, but the dataset "
                f"has {len(dataset)} samples; they must describe the same samples"
            )
        return order


class ShardLocalOrder:
    """The shard-local order of every epoch (implements ``order.Order``).

    Args:
        shard_sizes: samples per shard, in index order (a sample's id is the number of samples
            in earlier shards plus its index within its shard).
        seed: the Philox key.
        window, buffer_size: as in :class:`ShardShuffle`.
    """

    def __init__(self, shard_sizes: Any, *, seed: int, window: int, buffer_size: int) -> None:
        ShardShuffle(window, buffer_size)  # validates both
        sizes = np.asarray(shard_sizes)
        if sizes.ndim != 1 or (sizes.size and sizes.dtype.kind not in "iu") or (sizes < 0).any():
            raise ConfigError(
                f"shard_sizes must be a 1-d array of integer counts >= 0, got {shard_sizes!r}"
            )
        self.length = sum(sizes.tolist())  # Python ints: an int64 sum would wrap silently
        if self.length > MAX_LENGTH:
            raise ConfigError(f"shard_sizes sum to {self.length}, more than 2**63 - 1 samples")
        self.shard_sizes = np.ascontiguousarray(sizes, dtype=np.int64)
        self.seed = check_seed(seed)
        self.window, self.buffer_size = window, buffer_size
        self._cached: tuple[int, Any] | None = None  # (epoch, its C++ order)

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (and deep-copies) without its C++ order, which is made again when used."""
        return {**self.__dict__, "_cached": None}

    def _epoch_order(self, epoch: int) -> Any:
        """The epoch's C++ order (its shard order and offsets are computed once and kept)."""
        cached = self._cached
        if cached is None or cached[0] != epoch:
            order = _core.ShardBlockOrder(
                self.shard_sizes,
                self.seed,
                check_epoch(epoch),
                self.window,
                BLOCK_PER_BUFFER * self.buffer_size,
            )
            cached = self._cached = (epoch, order)
        return cached[1]

    def ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Ids at positions [start, stop), computed directly (one block's work beyond them)."""
        if not 0 <= start <= stop <= self.length:
            raise ConfigError(f"positions [{start}, {stop}) outside [0, {self.length}]")
        order, out = self._epoch_order(epoch), np.empty(stop - start, dtype=np.int64)
        if stop > start:
            order.fill(start, out)
        return out

    def iter_ids(
        self, epoch: int, start: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[np.ndarray]:
        """Ids from position ``start`` to the epoch's end, ``chunk_size`` at a time."""
        chunk_size = check_int("chunk_size", chunk_size, low=1)
        if not 0 <= start <= self.length:
            raise ConfigError(f"position {start} outside [0, {self.length}]")
        reader = self._epoch_order(epoch).reader(start)  # computes each block once
        while reader.remaining:
            out = np.empty(min(chunk_size, reader.remaining), dtype=np.int64)
            reader.read(out)
            yield out

    def settings(self) -> dict[str, int | str]:
        """Everything but the seed that decides the order (the cursor checks them on resume)."""
        return {
            "order": "shard_local",
            "algorithm": SHARD_LOCAL_ALGORITHM,
            "length": self.length,
            "shards": len(self.shard_sizes),
            "window": self.window,
            "buffer_size": self.buffer_size,
        }

    def __repr__(self) -> str:
        return (
            f"ShardLocalOrder(length={self.length}, shards={len(self.shard_sizes)}, "
            f"seed={self.seed}, window={self.window}, buffer_size={self.buffer_size})"
        )
