"""Mixture: named map-style sources blended by exact weights that may change in phases.

The whole mixture is a pure function of (seed, schedule, position), like the order itself: the
source of a position and the draws of every source before it follow from the schedule, each
source's k-th draw is position k of its own endless stream, and augmentation keys come from the
global position as for any dataset. So every resume guarantee of the loader holds unchanged,
and a resumed run may change the schedule's future (new phases, new weights, new sources).

A source whose samples depend on its stream's (seed, epoch) (``EpochKeyedDataset``: a
shuffle-mode TokenDataset) is read with its own seed and source epoch, located from the sample
key; every other source is read as ``dataset[id]``, at the cost it always had.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import sys
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from torch.utils.data import Dataset

from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError, ResumableLoaderError
from resumable_loader.mixture.order import MixtureOrder
from resumable_loader.mixture.schedule import POSITION_LIMIT, Schedule
from resumable_loader.mixture.streams import MixtureSource, check_source
from resumable_loader.rngs.sample import sample_place

ENDLESS = sys.maxsize  # positions of the one epoch of a mixture without samples_per_epoch


class Mixture(Dataset):
    """A weighted, phased blend of map-style datasets, for ``DataLoader(Mixture(...), ...)``.

    The loader asks it for its order (:meth:`loader_order`), so ``shuffle`` and
    ``shard_shuffle`` of the loader do not apply: each source's order is set by its
    :class:`MixtureSource` (a bare dataset is shuffled globally). Indexing takes the encoded
    ids of that order (the source's offset plus its own id), not positions.

    An epoch-keyed source (``mixture.streams.EpochKeyedDataset``) is read as
    ``keyed_item(id, seed=<source seed>, epoch=<source epoch>)``, the coordinates of its own
    stream: they are located from the sample key the loader installs (loader epoch and position
    -> global position -> the schedule's draw of that source -> its epoch), O(sources) a sample,
    so nothing else changes: ids stay the order's (``decode``, ``sample_at``, cursors as for any
    source), augmentation keys stay the global position's, and a resume with other workers,
    batch or world size reads the same coordinates. (Encoding the source epoch into the id
    instead would overflow int64 for large sources and change every id the loader reports.)

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
        self.sources = tuple(_source(name, s) for name, s in sources.items())
        self.schedule = Schedule(self.names, weights, phases)
        self.samples_per_epoch = (
            None
            if samples_per_epoch is None
            else check_int("samples_per_epoch", samples_per_epoch, low=1, high=POSITION_LIMIT)
        )
        lengths = [source.length for source in self.sources]
        self._ends = list(itertools.accumulate(lengths))  # Python ints: bisect is ~10x numpy's
        self.offsets = [0, *self._ends[:-1]]
        # One reader per source: a plain dataset's bound __getitem__ (no more per sample than
        # indexing it), an epoch-keyed one's through _read_keyed.
        self._readers = tuple(
            functools.partial(self._read_keyed, index)
            if source.epoch_keyed
            else source.dataset.__getitem__
            for index, source in enumerate(self.sources)
        )
        self._order: MixtureOrder | None = None  # this process's order, for _read_keyed

    def __len__(self) -> int:
        # the loader asks at every iter() and len(): where a source that changed is caught
        self.check_sources()
        return ENDLESS if self.samples_per_epoch is None else self.samples_per_epoch

    def check_sources(self) -> None:
        """Refuse a source whose length changed since the Mixture was built.

        Each source's stream is a permutation of the length it had then, so a grown source's
        new samples would never be drawn, and a shrunk one's ids would point past its end;
        following it silently would be another mixture than the schedule describes.

        Raises:
            ConfigError: naming the source and both lengths.
        """
        for name, source in zip(self.names, self.sources, strict=True):
            now = len(source.dataset)
            if now != source.length:
                raise ConfigError(
                    f"Mixture source '{name}' had {source.length} samples when the Mixture was "
                    f"built and has {now} now; its stream is a permutation of the length it had: "
                    "build a new Mixture (and loader) over the changed source, and resume with "
                    "Checkpointer.load(..., mode='flexible') or load_state_dict as documented"
                )

    def loader_order(self, *, seed: int) -> MixtureOrder:
        """The order a ResumableDataLoader iterates (its seed keys every source's stream)."""
        return MixtureOrder(self, seed=seed)

    @property
    def id_count(self) -> int:
        """How many encoded ids there are (every source's samples): ``len()`` is the epoch's
        length instead, so what draws ids (a bad sample's substitute) asks this."""
        return self._ends[-1]

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
        return self._readers[source](encoded - self.offsets[source])

    def _read_keyed(self, source: int, sample_id: int) -> Any:
        """Sample ``sample_id`` of epoch-keyed ``source``, under its own stream's seed and epoch
        at the draw the sample key's position makes."""
        try:
            seed, epoch, position = sample_place()
        except ResumableLoaderError:
            raise ConfigError(
                f"Mixture source {self.names[source]!r} is epoch-keyed: it is read with its own "
                "seed and epoch at the position being loaded, which only "
                "resumable_loader.DataLoader knows; outside it take loader.sample_at(epoch, "
                "position) and call the dataset's keyed_item(sample_id, seed=source_seed, "
                "epoch=source_epoch)"
            ) from None
        order = self._order
        if order is None or order.seed != seed:
            order = self._order = MixtureOrder(self, seed=seed)
        located, source_seed, source_epoch = order.stream_key(epoch, position)
        if located != source:
            raise ConfigError(
                f"Mixture: position {position} of epoch {epoch} draws from source "
                f"{self.names[located]!r}, but the id names {self.names[source]!r}: an "
                "epoch-keyed source is read only in the Mixture's own order (no sampler=)"
            )
        dataset = self.sources[source].dataset
        return dataset.keyed_item(sample_id, seed=source_seed, epoch=source_epoch)

    def __getstate__(self) -> dict[str, Any]:
        # The order _read_keyed caches is rebuilt in each process that reads, never shipped.
        return {**self.__dict__, "_order": None}

    def __repr__(self) -> str:
        return (
            f"Mixture(sources={dict(zip(self.names, self.sources, strict=True))!r}, "
            f"schedule={self.schedule!r}, samples_per_epoch={self.samples_per_epoch})"
        )


def _source(name: str, source: Any) -> MixtureSource:
    """``source`` as a MixtureSource; ConfigError naming it if a Mixture cannot draw from it."""
    if isinstance(source, MixtureSource):
        return source
    check_source(source, f"Mixture source '{name}'")
    return MixtureSource(source)
