"""Shard-local shuffle: near-sequential reads through a window of open shards and a buffer.

The epoch's stream (see csrc/shuffle_buffer.h) is a pure function of (seed, epoch, shard sizes,
window, buffer size), so it is the same for every worker count, rank, world size and batch size.
A position is reached by replaying the id-level bookkeeping in C++ from the epoch's start rather
than by storing the buffer in the cursor. The measured trade-off (benchmarks/bench_shuffle_buffer.py
on 2 EPYC cores, window 8): the replay runs at 150-200 M ids/s, so a resume at position 10^8 costs
about 0.6 s, once; a stored buffer would add 8 bytes per buffered id to every cursor (8 KB at
buffer_size 1024, 128 KB at 16384) against the cursor's budget of 1 KB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from resumable_loader import _core
from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError
from resumable_loader.order.permutation import CHUNK_SIZE, PERMUTATION_ALGORITHM
from resumable_loader.order.philox import check_epoch, check_seed

MAX_LENGTH = 2**63 - 1  # the C++ stream keeps int64 offsets


@dataclasses.dataclass(frozen=True)
class ShardShuffle:
    """Shard-local shuffle settings, for ``ResumableDataLoader(..., shard_shuffle=...)``.

    Args:
        window: shards open at once (interleaved round robin).
        buffer_size: ids in the shuffle buffer.
    """

    window: int = 4
    buffer_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("window", "buffer_size"):
            value = check_int(f"ShardShuffle {name}", getattr(self, name), low=1)
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

    def __len__(self) -> int:
        return self.length

    def _stream(self, epoch: int, start: int) -> Any:
        if not 0 <= start <= self.length:
            raise ConfigError(f"position {start} outside [0, {self.length}]")
        stream = _core.ShardLocalStream(
            self.shard_sizes, self.seed, check_epoch(epoch), self.window, self.buffer_size
        )
        stream.skip(start)
        return stream

    def ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Ids at positions [start, stop) (replays the epoch's bookkeeping up to ``start``)."""
        if not start <= stop <= self.length:
            raise ConfigError(f"positions [{start}, {stop}) outside [0, {self.length}]")
        out = np.empty(stop - start, dtype=np.int64)
        self._stream(epoch, start).fill(out)
        return out

    def iter_ids(
        self, epoch: int, start: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[np.ndarray]:
        """Ids from ``start`` to the epoch's end: one stream, replayed to ``start`` once."""
        chunk_size = check_int("chunk_size", chunk_size, low=1)
        stream = self._stream(epoch, start)
        while stream.remaining:
            out = np.empty(min(chunk_size, stream.remaining), dtype=np.int64)
            stream.fill(out)
            yield out

    def settings(self) -> dict[str, int | str]:
        """Everything but the seed that decides the order (the cursor checks them on resume)."""
        return {
            "order": "shard_local",
            "algorithm": PERMUTATION_ALGORITHM,
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
