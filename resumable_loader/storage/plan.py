"""From sample ids to range requests: byte spans, blocks, the block-or-span choice, coalescing.

A sample's bytes are one span of its shard (the index's ``spans``). Shards are cut into aligned
blocks of ``block_size`` bytes, the unit of the node cache. For every block the near future
touches, :func:`block_usage` says how many of its bytes that future reads; a block read mostly
is fetched whole (one request, cached, shared by the node), one read a little has only its
samples' spans fetched, adjacent spans of one batch merged into one request (:func:`coalesce`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

Key = tuple[int, int]  # (shard, block)


@dataclasses.dataclass(frozen=True)
class Read:
    """One range request: ``length`` bytes of ``shard`` at ``start``; ``block`` is the block
    number of a whole-block read (None: the spans ``members`` of one batch), ``first_use`` the
    epoch position that needs it first."""

    shard: int
    start: int
    length: int
    first_use: int
    block: int | None = None
    members: tuple[tuple[int, int], ...] = ()  # (start, length) of each span served


def sample_spans(
    spans: np.ndarray, shard_offsets: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shard, byte start, byte length) of each sample id, as int64 arrays."""
    ids = np.asarray(ids, dtype=np.int64)
    shards = np.searchsorted(shard_offsets, ids, side="right") - 1
    rows = spans[ids]
    return shards, rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)


def blocks_of(start: int, length: int, block_size: int) -> range:
    """The block numbers a span touches."""
    return range(start // block_size, (start + max(length, 1) - 1) // block_size + 1)


def block_usage(
    shards: np.ndarray, starts: np.ndarray, lengths: np.ndarray, block_size: int
) -> dict[Key, int]:
    """Bytes read from each block by the spans (a span across a boundary counts in each)."""
    first = starts // block_size
    last = (starts + np.maximum(lengths, 1) - 1) // block_size
    usage: dict[Key, int] = {}
    inside = first == last
    if inside.any():
        keys = np.stack([shards[inside], first[inside]], axis=1)
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        sums = np.bincount(inverse.reshape(-1), weights=lengths[inside], minlength=len(unique))
        for (shard, block), used in zip(unique.tolist(), sums.tolist(), strict=True):
            usage[(shard, block)] = int(used)
    for i in np.flatnonzero(~inside).tolist():
        start, end = int(starts[i]), int(starts[i] + lengths[i])
        for block in range(int(first[i]), int(last[i]) + 1):
            lo, hi = max(start, block * block_size), min(end, (block + 1) * block_size)
            key = (int(shards[i]), block)
            usage[key] = usage.get(key, 0) + hi - lo
    return usage


def coalesce(spans: Iterable[tuple[int, int, int]], *, gap: int, first_use: int) -> list[Read]:
    """Span reads of (shard, start, length) triples: spans of one shard at most ``gap`` bytes
    apart are merged into one request (the bytes between them are read and dropped)."""
    reads: list[Read] = []
    current: list[tuple[int, int]] = []
    shard = end = -1
    for s, start, length in sorted(set(spans)):
        if current and (s != shard or start - end > gap):
            reads.append(_span_read(shard, current, first_use))
            current = []
        if not current:
            shard = s
        current.append((start, length))
        end = max(end, start + length) if len(current) > 1 else start + length
    if current:
        reads.append(_span_read(shard, current, first_use))
    return reads


def _span_read(shard: int, members: list[tuple[int, int]], first_use: int) -> Read:
    start = members[0][0]
    stop = max(s + n for s, n in members)
    return Read(shard, start, stop - start, first_use, None, tuple(members))
