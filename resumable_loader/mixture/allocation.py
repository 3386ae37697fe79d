"""Which source each position of a phase draws from, with every prefix within 1 of its share.

A phase with reduced integer weights w (W = sum w) repeats a period of W positions in which
source i is drawn exactly w_i times. Inside the period, the draws are scheduled so that after
every prefix of t positions each source has drawn floor(t w_i / W) or ceil(t w_i / W) times:
the j-th draw of source i (j = 0, 1, ...) must fall in the window of positions
[floor(j W / w_i), ceil((j + 1) W / w_i) - 1], and earliest-deadline-first fills every
position with a window's draw (Hall's condition holds on every interval, since the windows of
a stretch of positions never hold more draws than it has positions). That is the quota
property of Balinski and Young's quota method, in the form of Tijdeman's chairman assignment.
Tighter windows (|draws - share| <= 1/2, 2/3, ...) are tried first and the first one met kept.

Known closed forms were measured and rejected (see docs/mixtures.md): rounding down a tree of
two-way splits drifts past 1 with 5 or more sources, and largest-remainder or bisection rules
either lose a draw between consecutive prefixes (the Alabama paradox) or dead-end. So the period
is scheduled once per distinct weights into a table of W bytes (W <= 2**16) and, per source, the
period positions of its draws (2 bytes a position); the run's length never enters. A position's
source is one table read. The draws before any offset t are O(sources): within a period each
source i has drawn f = floor(t w_i / W) or f + 1 times (the bound is below 1), and it is f + 1
exactly when its draw number f falls before t, one lookup.
"""

from __future__ import annotations

import array
import heapq
import itertools
from fractions import Fraction
from typing import Any

import numpy as np

from resumable_loader._lru import LRU

# Bounds tried in turn on |draws - share| (<= b), before the one always met (< 1).
BOUNDS = (Fraction(1, 2), Fraction(2, 3), Fraction(3, 4), Fraction(5, 6), Fraction(9, 10))
# Period tables kept per process: each costs 3 W bytes.
_TABLES: LRU[tuple[int, ...], PhaseAllocation] = LRU(64 * 2**20, cost=lambda a: a.nbytes)


class PhaseAllocation:
    """The interleaving of one phase's weights; use :func:`allocation_for` (it caches).

    Args:
        weights: reduced integer weights, one per source (zero: never drawn in this phase).
    """

    def __init__(self, weights: tuple[int, ...]) -> None:
        self.weights = tuple(int(w) for w in weights)
        self.total = sum(self.weights)
        self.table, self.bound = _schedule_period(self.weights)
        # Source i's draws sit at draw_positions[first_draw[i] : first_draw[i] + w_i], in order
        # (a stable sort of the table by source); an array.array reads back Python ints, fast.
        order = np.argsort(self.table, kind="stable").astype(np.uint16)
        self._draw_positions = array.array("H", order.tobytes())
        self._first_draw = [0, *itertools.accumulate(self.weights)][:-1]

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + self._draw_positions.itemsize * len(self._draw_positions)

    def counts(self, offset: int) -> list[int]:
        """Draws of each source at offsets [0, ``offset``) of the phase, in O(sources)."""
        periods, rest = divmod(offset, self.total)
        total, positions = self.total, self._draw_positions
        counts = []
        for w, first in zip(self.weights, self._first_draw, strict=True):
            floor = rest * w // total  # the draws are floor or floor + 1 (|draws - share| < 1)
            ahead = floor < w and positions[first + floor] < rest
            counts.append(periods * w + floor + ahead)
        return counts

    def source_at(self, offset: int) -> int:
        """The source drawn at ``offset`` of the phase."""
        return int(self.table[offset % self.total])

    def sources(self, start: int, stop: int) -> np.ndarray:
        """The source (uint8) drawn at each offset in [start, stop)."""
        first = start % self.total
        periods = -(-(first + stop - start) // self.total)
        return np.tile(self.table, periods)[first : first + stop - start]

    def __repr__(self) -> str:
        return f"PhaseAllocation(weights={self.weights})"


def allocation_for(weights: tuple[int, ...]) -> PhaseAllocation:
    """The (cached) allocation of ``weights``."""
    allocation = _TABLES.get(weights)
    if allocation is None:
        allocation = PhaseAllocation(weights)
        _TABLES.put(weights, allocation)
    return allocation


def _schedule_period(weights: tuple[int, ...]) -> tuple[np.ndarray, Fraction]:
    """The period's sources, scheduled within the tightest bound of :data:`BOUNDS` that
    earliest-deadline-first meets (the last, below 1, always is), and that bound."""
    for bound in BOUNDS:
        table = _earliest_deadline_first(weights, bound)
        if table is not None:
            return table, bound
    table = _earliest_deadline_first(weights, None)
    if table is None:  # impossible by Hall's condition; a bug if ever seen
        raise AssertionError(f"mixture allocation missed a deadline for weights {weights}")
    return table, Fraction(1)


def _earliest_deadline_first(weights: tuple[int, ...], bound: Fraction | None) -> Any:
    """The source of each of the period's W positions, every prefix count within ``bound`` of
    its share (``None``: strictly within 1); None if a deadline is missed."""
    total = sum(weights)
    if bound is None:  # draw j in [floor(jW/w), ceil((j+1)W/w) - 1]

        def window(j: int, w: int) -> tuple[int, int]:
            return j * total // w, -(-(j + 1) * total // w) - 1
    else:  # draw j in [ceil((j+1-b)W/w) - 1, floor((j+b)W/w)], b = a/d
        a, d = bound.numerator, bound.denominator

        def window(j: int, w: int) -> tuple[int, int]:
            release = max(0, -(-((j + 1) * d - a) * total // (d * w)) - 1)
            return release, ((j * d + a) * total) // (d * w)

    table = np.empty(total, dtype=np.uint8)
    drawn = [0] * len(weights)
    released: list[tuple[int, int]] = []  # (deadline, source) of each source's next draw
    waiting: list[tuple[int, int]] = []  # (release, source) of draws not yet released
    for source, w in enumerate(weights):
        if w:
            waiting.append((window(0, w)[0], source))
    heapq.heapify(waiting)
    for position in range(total):
        while waiting and waiting[0][0] <= position:
            _, source = heapq.heappop(waiting)
            heapq.heappush(released, (window(drawn[source], weights[source])[1], source))
        if not released:
            return None
        deadline, source = heapq.heappop(released)
        if deadline < position:
            return None
        table[position] = source
        drawn[source] += 1
        if drawn[source] < weights[source]:
            heapq.heappush(waiting, (window(drawn[source], weights[source])[0], source))
    return table
