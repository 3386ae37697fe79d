"""From sample ids to range requests: byte spans, blocks, the block-or-span choice, coalescing.

A sample's bytes are one span of its shard (the index's ``spans``). Shards are cut into aligned
blocks of ``block_size`` bytes, the unit of the node cache. For every block the near future
touches, :class:`BlockPieces` says how many of its bytes each span reads; a block read mostly
is fetched whole (one request, cached, shared by the node), one read a little has only its
samples' spans fetched, adjacent spans of one batch merged into one request (:func:`coalesce`).
"""

from __future__ import annotations

import dataclasses
import itertools

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


def key_code(shards: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """One int64 per (shard, block) key, ordered as the keys are: shard in the high bits."""
    return (np.asarray(shards, dtype=np.int64) << 32) | np.asarray(blocks, dtype=np.int64)


def code_key(code: int) -> Key:
    """The (shard, block) key of a :func:`key_code`."""
    return code >> 32, code & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class BlockPieces:
    """Every (span, block) pair of a set of spans, as arrays: ``span`` is the span's index,
    ``code`` the block's :func:`key_code`, ``used`` how many of the span's bytes lie in it."""

    span: np.ndarray
    code: np.ndarray
    used: np.ndarray

    @classmethod
    def of(
        cls, shards: np.ndarray, starts: np.ndarray, lengths: np.ndarray, block_size: int
    ) -> BlockPieces:
        first = starts // block_size
        counts = (starts + np.maximum(lengths, 1) - 1) // block_size - first + 1
        span = np.repeat(np.arange(len(starts)), counts)
        offsets = np.cumsum(counts) - counts
        blocks = first[span] + np.arange(len(span)) - offsets[span]
        lo = np.maximum(starts[span], blocks * block_size)
        hi = np.minimum(starts[span] + lengths[span], (blocks + 1) * block_size)
        return cls(span, key_code(shards[span], blocks), hi - lo)

    def all_in(self, codes: np.ndarray, spans: int) -> np.ndarray:
        """Per span: whether every block it touches is one of ``codes`` (sorted)."""
        inside = np.isin(self.code, codes)
        missing = np.bincount(self.span[~inside], minlength=spans)
        return missing == 0


def coalesce(
    shards: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    first_uses: np.ndarray,
    *,
    gap: int,
) -> list[Read]:
    """Span reads of the spans (``shards``, ``starts``, ``lengths``) needed first at
    ``first_uses``: spans of one shard and one use at most ``gap`` bytes apart are merged into
    one request (the bytes between them are read and dropped); a span listed twice is read
    once."""
    columns = [np.asarray(c, dtype=np.int64) for c in (first_uses, shards, starts, lengths)]
    if not len(columns[0]):
        return []
    use, shard, start, length = unique_rows(columns)  # sorted by use, shard, start
    end = start + length
    group = np.concatenate([[True], (use[1:] != use[:-1]) | (shard[1:] != shard[:-1])])
    # the furthest end so far within each (use, shard) group: a running max over the groups
    # lifted apart by a step larger than any end
    lift = np.cumsum(group) * (int(end.max()) + 1)
    reach = np.maximum.accumulate(end + lift) - lift
    cut = group.copy()
    cut[1:] |= start[1:] - reach[:-1] > gap
    bounds = np.append(np.flatnonzero(cut), len(start)).tolist()
    reads = []
    starts_list, lengths_list = start.tolist(), length.tolist()
    for a, b in itertools.pairwise(bounds):
        members = tuple(zip(starts_list[a:b], lengths_list[a:b], strict=True))
        stop = int(reach[b - 1])
        reads.append(
            Read(int(shard[a]), starts_list[a], stop - starts_list[a], int(use[a]), None, members)
        )
    return reads


def unique_rows(columns: list[np.ndarray]) -> list[np.ndarray]:
    """The distinct rows of the table whose columns are ``columns`` (int64), sorted by the
    first column, then the second...: ``np.unique(axis=0)``, without its slow row sort."""
    order = np.lexsort(columns[::-1])
    sorted_columns = [c[order] for c in columns]
    fresh = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        fresh[1:] = np.any([c[1:] != c[:-1] for c in sorted_columns], axis=0)
    return [c[fresh] for c in sorted_columns]


def fit_live(
    ranked: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    sizes: np.ndarray,
    budget: int,
    *,
    grid: int = 256,
) -> np.ndarray:
    """The blocks of ``ranked`` (indices, best first) that a cache of ``budget`` bytes can hold
    together.

    Block i is held from its first use ``first[i]`` to its last ``last[i]``; it is taken if,
    at every position of that interval, the blocks taken before it leave room for its
    ``sizes[i]``. A shard-local order reads each block over a short stretch of the window, so
    blocks whose stretches do not overlap share the room; a sum over the window would count
    every block the window touches as held at once. Positions are counted in ``grid`` steps of
    the window (an interval covers every step it touches: it may count more held, never less).
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    if not len(ranked):
        return ranked
    lows, highs = _steps(first[ranked], last[ranked], grid)
    if _peak(lows, highs, sizes[ranked], grid) <= budget:
        return ranked
    held = np.zeros(grid, dtype=np.int64)
    taken = []
    rows = zip(ranked.tolist(), lows.tolist(), highs.tolist(), sizes[ranked].tolist(), strict=True)
    for index, low, high, size in rows:
        if held[low : high + 1].max() + size <= budget:
            held[low : high + 1] += size
            taken.append(index)
    return np.array(taken, dtype=np.int64)


def peak_held(first: np.ndarray, last: np.ndarray, sizes: np.ndarray, grid: int = 256) -> int:
    """The most bytes held at once by blocks each held from ``first`` to ``last`` (counted in
    ``grid`` steps of their span, as :func:`fit_live` counts them)."""
    if not len(sizes):
        return 0
    return _peak(*_steps(first, last, grid), sizes, grid)


def _peak(lows: np.ndarray, highs: np.ndarray, sizes: np.ndarray, grid: int) -> int:
    """The most bytes held at once by intervals of ``grid`` steps ``lows`` to ``highs``."""
    change = np.zeros(grid + 1, dtype=np.int64)
    np.add.at(change, lows, sizes)
    np.add.at(change, highs + 1, -sizes)
    return int(np.cumsum(change).max())


def _steps(first: np.ndarray, last: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and last of ``grid`` steps (over ``first.min()`` to ``last.max()``) that each
    interval touches."""
    start = int(first.min())
    scale = grid / max(1, int(last.max()) - start + 1)
    return ((first - start) * scale).astype(np.int64), ((last - start) * scale).astype(np.int64)
