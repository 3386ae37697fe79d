"""The order a loader iterates over a Mixture: global position -> encoded (source, sample id).

Position p of loader epoch e is global position g = e * N + p (N = samples_per_epoch; one
endless epoch without it). Its phase, its source, and that source's draw number k (its draws
before g, over the whole run and across phases) follow from the schedule alone; the sample is
position k mod n of the source's own epoch k // n. Nothing depends on workers, ranks or batches.
An id is encoded as the source's offset (the lengths of the sources before it) plus its own id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from resumable_loader.errors import ConfigError
from resumable_loader.mixture.allocation import allocation_for
from resumable_loader.mixture.progress import mixture_progress
from resumable_loader.mixture.resume import check_order_state, order_state, saved_source_names
from resumable_loader.mixture.schedule import POSITION_LIMIT
from resumable_loader.mixture.streams import SourceStream, source_seed
from resumable_loader.order.permutation import CHUNK_SIZE
from resumable_loader.order.philox import check_epoch, check_seed

if TYPE_CHECKING:
    from resumable_loader.mixture.mixture import Mixture

# Names the interleaving and the per-source stream derivation in the cursor's fingerprint.
MIXTURE_ALGORITHM = "mixture-edf-v1"
logger = logging.getLogger("resumable_loader")


class MixtureOrder:
    """Implements ``order.Order`` for a :class:`~resumable_loader.Mixture` under one seed.

    Args:
        mixture: the mixture (sources, schedule, epoch length).
        seed: the loader's seed; each source's own seed is derived from it and its name.
    """

    def __init__(self, mixture: Mixture, *, seed: int) -> None:
        self.mixture = mixture
        self.seed = check_seed(seed)
        self.schedule = mixture.schedule
        self.names = mixture.names
        self.length = len(mixture)
        self.seeds = [source_seed(self.seed, name) for name in self.names]
        self.streams = [
            SourceStream(source, seed=seed)
            for source, seed in zip(mixture.sources, self.seeds, strict=True)
        ]
        self.allocations = [allocation_for(phase.weights) for phase in self.schedule.phases]
        self._bases = [[0] * len(self.names)]  # draws of each source before each phase
        for index, allocation in enumerate(self.allocations[:-1]):
            span = self.schedule.end(index) - self.schedule.phases[index].start
            ends = allocation.counts(span)
            self._bases.append([b + c for b, c in zip(self._bases[-1], ends, strict=True)])

    def __len__(self) -> int:
        return self.length

    def source_fingerprints(self) -> list[str]:
        """Each source's fingerprint, in ``names`` order, from its stream's own order."""
        return [stream.source.fingerprint(stream.order) for stream in self.streams]

    def global_position(self, epoch: int, position: int) -> int:
        """The global position of ``position`` in loader epoch ``epoch``."""
        where = check_epoch(epoch) * self.length + position
        if not 0 <= position <= self.length or where > POSITION_LIMIT:
            raise ConfigError(
                f"position {position} of epoch {epoch} is outside the mixture's positions "
                f"[0, 2**63) (epochs of {self.length})"
            )
        return where

    def draws_before(self, where: int) -> list[int]:
        """Each source's draws at global positions [0, ``where``)."""
        index = self.schedule.phase_at(where)
        offset = where - self.schedule.phases[index].start
        counts = self.allocations[index].counts(offset)
        return [b + c for b, c in zip(self._bases[index], counts, strict=True)]

    def locate(self, where: int) -> tuple[int, int, int]:
        """(phase, source, draw number of that source) at global position ``where``."""
        index = self.schedule.phase_at(where)
        offset = where - self.schedule.phases[index].start
        source = self.allocations[index].source_at(offset)
        draw = self._bases[index][source] + self.allocations[index].counts(offset)[source]
        return index, source, draw

    def stream_key(self, epoch: int, position: int) -> tuple[int, int, int]:
        """(source, its seed, its epoch) of the draw at ``position`` of loader epoch ``epoch``:
        the coordinates of the source's own stream an epoch-keyed source is read with. A
        padding position (past the epoch's end: the last batch of several ranks) delivers the
        sample at ``position`` modulo the epoch's length, so it is located there. O(sources),
        once per sample: the position is the loader's own (its ids() checked it), so the global
        position is computed without global_position()'s checks.
        """
        _, source, draw = self.locate(epoch * self.length + position % self.length)
        return source, self.seeds[source], self.streams[source].locate(draw)[0]

    def ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Encoded ids (int64) at positions [start, stop) of loader epoch ``epoch``."""
        if not 0 <= start <= stop <= self.length:
            raise ConfigError(f"positions [{start}, {stop}) outside [0, {self.length}]")
        first = self.global_position(epoch, start)
        return self._global_ids(first, first + stop - start)

    def iter_ids(
        self, epoch: int, start: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[np.ndarray]:
        """Encoded ids from ``start`` to the epoch's end, ``chunk_size`` at a time; logs each
        phase the stream enters (when the loader's index sampler reaches it)."""
        for first in range(start, self.length, chunk_size):
            stop = min(first + chunk_size, self.length)
            self._log_phases(self.global_position(epoch, first), epoch * self.length + stop)
            yield self.ids(epoch, first, stop)

    def _global_ids(self, first: int, stop: int) -> np.ndarray:
        out = np.empty(stop - first, dtype=np.int64)
        index, where = self.schedule.phase_at(first), first
        while where < stop:
            begin = self.schedule.phases[index].start
            end = min(stop, self.schedule.end(index))
            self._phase_ids(index, where - begin, end - begin, out[where - first : end - first])
            where, index = end, index + 1
        return out

    def _phase_ids(self, index: int, start: int, stop: int, out: np.ndarray) -> None:
        allocation = self.allocations[index]
        before, after = allocation.counts(start), allocation.counts(stop)
        # The offsets grouped by source, in order within each: one radix sort of the uint8
        # sources, whose cost (unlike a mask per source) does not depend on the interleaving.
        slots = np.argsort(allocation.sources(start, stop), kind="stable")
        at = 0
        for source, stream in enumerate(self.streams):
            drawn = after[source] - before[source]
            if drawn:
                first = self._bases[index][source] + before[source]
                local = stream.ids(first, first + drawn)
                out[slots[at : at + drawn]] = local + self.mixture.offsets[source]
                at += drawn

    def _log_phases(self, first: int, stop: int) -> None:
        for index, phase in enumerate(self.schedule.phases[1:], start=1):
            if first <= phase.start < stop:
                logger.info(
                    "mixture: phase %d starts at position %d with weights %s; draws so far %s",
                    index,
                    phase.start,
                    phase.named(self.names),
                    dict(zip(self.names, self._bases[index], strict=True)),
                )

    def settings(self) -> dict[str, int | str]:
        """What the cursor's fingerprint checks; the schedule is checked by ``check_resume``,
        which lets its future change."""
        return {"order": "mixture", "algorithm": MIXTURE_ALGORITHM, "length": self.length}

    def provenance(self, epoch: int, position: int) -> dict[str, Any]:
        """Which sample position ``position`` of ``epoch`` delivers, without loading it: the
        encoded id, the source, its sample id, and the coordinates of that source's own stream
        (seed, epoch, position in it, draw number; an epoch-keyed source's sample is
        ``keyed_item(sample_id, seed=source_seed, epoch=source_epoch)``) and the phase."""
        if not 0 <= position < self.length:
            raise ConfigError(f"position {position} outside the epoch's [0, {self.length})")
        where = self.global_position(epoch, position)
        phase, source, draw = self.locate(where)
        source_epoch, source_position = self.streams[source].locate(draw)
        stream = self.streams[source]
        local = int(stream.order.ids(source_epoch, source_position, source_position + 1)[0])
        return {
            "epoch": epoch,
            "position": position,
            "id": local + self.mixture.offsets[source],
            "source": self.names[source],
            "sample_id": local,
            "source_seed": self.seeds[source],
            "source_epoch": source_epoch,
            "source_position": source_position,
            "draw": draw,
            "phase": phase,
        }

    def resume_state(self, epoch: int, position: int) -> dict[str, Any]:
        """The cursor's ``order_state`` after ``position`` samples of ``epoch``."""
        return order_state(self, self.global_position(epoch, position))

    def check_resume(self, saved: object, epoch: int, position: int, *, log: bool = True) -> None:
        """Refuse a saved ``order_state`` whose past this schedule rewrites; log the resume
        (unless ``log`` is False: a check ahead of the load, which logs it then)."""
        check_order_state(self, saved, self.global_position(epoch, position), log=log)

    def resumed_settings(self, saved: object) -> dict[str, int | str]:
        """The fingerprint fields a state whose ``order_state`` is ``saved`` holds, where they
        differ from :meth:`settings`: none (the sources are checked by :meth:`check_resume`)."""
        return {}

    def saved_sources(self, saved: object) -> list[str] | None:
        """The saved run's source names in its mixture's order (None: ``saved`` is malformed,
        which :meth:`check_resume` refuses)."""
        return saved_source_names(saved)

    def progress(self, epoch: int, position: int) -> dict[str, Any]:
        """Per source: draws, epochs completed, fraction of its epoch; phase and weights."""
        return mixture_progress(self, self.global_position(epoch, position))

    def __repr__(self) -> str:
        return f"MixtureOrder({self.mixture!r}, seed={self.seed})"
