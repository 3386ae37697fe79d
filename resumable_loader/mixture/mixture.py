"""Mixture: named map-style sources blended by exact weights that may change in phases.

The whole mixture is a pure function of (seed, schedule, position), like the order itself: the
source of a position and the draws of every source before it follow from the schedule, each
source's k-th draw is position k of its own endless stream, and augmentation keys come from the
global position as for any dataset. So every resume guarantee of the loader holds unchanged,
and a resumed run may change the schedule's future (new phases, new weights, new sources).
"""

from __future__ import annotations

import bisect
import itertools
import sys
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from torch.utils.data import Dataset

from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError
from resumable_loader.mixture.order import MixtureOrder
from resumable_loader.mixture.schedule import POSITION_LIMIT, Schedule
from resumable_loader.mixture.streams import MixtureSource

ENDLESS = sys.maxsize  # positions of the one epoch of a mixture without samples_per_epoch


class Mixture(Dataset):
    """A weighted, phased blend of map-style datasets, for ``DataLoader(Mixture(...), ...)``.

    The loader asks it for its order (:meth:`loader_order`), so ``shuffle`` and
    ``shard_shuffle`` of the loader do not apply: each source's order is set by its
    :class:`MixtureSource` (a bare dataset is shuffled globally). Indexing takes the encoded
    ids of that order (the source's offset plus its own id), not positions.

    Args:
        sources: stable names -> map-style datasets or :class:`MixtureSource`\\ s. A source's
            stream is keyed by its name, so keep names stable across resumes.
        weights: the first phase's weights by name: ints or ``fractions.Fraction``\\ s (a float
            is refused: its share would not be exact); names left out weigh 0.
        phases: ``(start, weights)`` pairs: from global position ``start`` (samples delivered
            over the whole run, all ranks together) on, draw by these weights. Increasing.
        samples_per_epoch: the loader's epoch length (for ``len()`` and epoch loops); epoch e
            covers global positions [e * N, (e + 1) * N). Default: one endless epoch.
    """

    # The loader's fingerprint field "dataset": the sources' identities and the schedule are
    # in the cursor's order_state instead, checked so that the future may change.
    fingerprint = "Mixture"

    def __init__(
        self,
        sources: Mapping[str, Dataset | MixtureSource],
        weights: Mapping[str, int | Fraction],
        *,
        phases: Sequence[tuple[int, Mapping[str, int | Fraction]]] = (),
        samples_per_epoch: int | None = None,
    ) -> None:
        if not isinstance(sources, Mapping):
            raise ConfigError(
                f"Mixture sources must map names to datasets, got {type(sources).__name__}"
            )
        bad = [name for name in sources if not isinstance(name, str) or not name]
        if bad:
            raise ConfigError(f"Mixture source names must be non-empty strings, got {bad!r}")
        self.names = tuple(sources)
        self.sources = tuple(
            s if isinstance(s, MixtureSource) else MixtureSource(s) for s in sources.values()
        )
        self.schedule = Schedule(self.names, weights, phases)
        self.samples_per_epoch = (
            None
            if samples_per_epoch is None
            else check_int("samples_per_epoch", samples_per_epoch, low=1, high=POSITION_LIMIT)
        )
        lengths = [source.length for source in self.sources]
        self._ends = list(itertools.accumulate(lengths))  # Python ints: bisect is ~10x numpy's
        self.offsets = [0, *self._ends[:-1]]
        self._datasets = tuple(source.dataset for source in self.sources)

    def __len__(self) -> int:
        return ENDLESS if self.samples_per_epoch is None else self.samples_per_epoch

    def loader_order(self, *, seed: int) -> MixtureOrder:
        """The order a ResumableDataLoader iterates (its seed keys every source's stream)."""
        return MixtureOrder(self, seed=seed)

    def decode(self, encoded: int) -> tuple[int, int]:
        """(source index, that source's sample id) of an encoded id."""
        if isinstance(encoded, bool) or not 0 <= encoded < self._ends[-1]:
            raise IndexError(f"encoded id {encoded!r} outside [0, {self._ends[-1]})")
        source = bisect.bisect_right(self._ends, encoded)
        return source, int(encoded) - self.offsets[source]

    def __getitem__(self, encoded: int) -> Any:
        # Once per sample: decode inline (the ids come from our own order, so in range).
        source = bisect.bisect_right(self._ends, encoded)
        if source == len(self._ends) or encoded < 0:
            raise IndexError(f"encoded id {encoded!r} outside [0, {self._ends[-1]})")
        return self._datasets[source][encoded - self.offsets[source]]

    def __repr__(self) -> str:
        return (
            f"Mixture(sources={dict(zip(self.names, self.sources, strict=True))!r}, "
            f"schedule={self.schedule!r}, samples_per_epoch={self.samples_per_epoch})"
        )
