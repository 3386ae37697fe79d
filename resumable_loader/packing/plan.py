"""Which samples of one window of the sample order share a pack: a pure function of lengths.

A window is K consecutive positions of an epoch's sample order. Its samples are cut into
pieces (a sample longer than the budget is truncated or split, by the explicit ``overlong``
policy), the pieces are put into bins of ``max_tokens`` by a strategy, and the bins are ordered
by their earliest piece, each bin's pieces in order of position. Nothing but the lengths and
the settings decides the plan, so any process that knows a window's lengths makes the same one.

Strategies (measured in docs/packing.md):

- ``"bfd"`` best-fit decreasing: longest piece first, into the fullest bin it fits.
- ``"ffd"`` first-fit decreasing: longest piece first, into the first bin it fits.
- ``"next_fit"`` greedy concatenation: pieces in order, a new bin when the next does not fit.
- ``"pad"`` token-budget batches without packing (:mod:`~resumable_loader.packing.budget`): a
  bin is a batch whose padded size (samples x longest) fits the budget.

The decreasing strategies take the pieces longest first, equal sizes in order of position; of
equally full bins, best fit takes the first opened. The bins are assigned and ordered in C++
(csrc/packing.h: window_pack_plan; a window of 4096 by best fit in ~0.2 ms, of which ~0.18 the
assignment, 10-20x the Python reference in tests/packing_reference.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from resumable_loader import _core
from resumable_loader.errors import ConfigError

STRATEGIES = ("bfd", "ffd", "next_fit", "pad")  # in csrc/packing.h's PackStrategy order
OVERLONG = ("error", "truncate", "split")


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """The packs of one window: pieces in pack order, ``bounds[k]:bounds[k+1]`` is pack k.

    Attributes:
        sample: the window-local index (position - window start) of each piece's sample.
        start: the token offset of the piece within its sample (0 unless split).
        length: the piece's tokens.
        bounds: int64, one more than the packs.
    """

    sample: np.ndarray
    start: np.ndarray
    length: np.ndarray
    bounds: np.ndarray

    @property
    def num_packs(self) -> int:
        return len(self.bounds) - 1

    def pack(self, index: int) -> slice:
        """The pieces of pack ``index``."""
        return slice(int(self.bounds[index]), int(self.bounds[index + 1]))


def pieces(
    lengths: np.ndarray, max_tokens: int, overlong: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample, start, length) of each piece; a sample of 0 tokens is one empty piece."""
    lengths = np.asarray(lengths, dtype=np.int64)
    index = np.arange(len(lengths), dtype=np.int64)
    if overlong != "split":
        if overlong == "error" and len(lengths) and lengths.max() > max_tokens:
            raise ConfigError(
                f"a sample of {int(lengths.max())} tokens exceeds max_tokens={max_tokens} and "
                "overlong='error'; choose overlong='truncate' or 'split', or a larger max_tokens"
            )
        return index, np.zeros_like(index), np.minimum(lengths, max_tokens)
    counts = np.maximum(1, -(-lengths // max_tokens))
    sample = np.repeat(index, counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    start = (np.arange(len(sample), dtype=np.int64) - first) * max_tokens
    return sample, start, np.minimum(lengths[sample] - start, max_tokens)


def plan_window(
    lengths: np.ndarray, max_tokens: int, *, strategy: str, overlong: str
) -> WindowPlan:
    """The packs of a window whose samples have ``lengths`` (in order of position)."""
    sample, start, length = pieces(lengths, max_tokens, overlong)
    strategy_index = _strategy_index(strategy)
    order = np.empty(len(length), dtype=np.int64)
    bounds = np.empty(len(length) + 1, dtype=np.int64)
    length = np.ascontiguousarray(length, dtype=np.int64)
    packs = _core.window_pack_plan(length, max_tokens, strategy_index, order, bounds)
    return WindowPlan(sample[order], start[order], length[order], bounds[: packs + 1])


def assign(length: np.ndarray, capacity: int, strategy: str) -> np.ndarray:
    """The bin (numbered in order of opening) of each piece; every piece fits ``capacity``.
    Counted in C++ (``csrc/packing.h``: window_pack_bins, whose contract is the rule of each
    strategy; tests/packing_reference.py is its Python reference)."""
    bins = np.empty(len(length), dtype=np.int64)
    sizes = np.ascontiguousarray(length, dtype=np.int64)
    _core.window_pack_bins(sizes, capacity, _strategy_index(strategy), bins)
    return bins


def _strategy_index(strategy: str) -> int:
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return STRATEGIES.index(strategy)
