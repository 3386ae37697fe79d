"""The node's future in packs, told to a prefetching dataset inside Packed as its samples.

The loader hands a prefetching dataset (``plan_reads``, :mod:`resumable_loader.loader.lookahead`)
the batches its node loads next, in the ids the loader loads: for ``Packed`` those are pack ids.
:class:`SampleSchedule` shows the same future to the wrapped dataset in its own terms: each
batch's samples (every piece's, in pack order), and as the clock the sample position of the
batch's first piece, which increases along the epoch as pack positions do (a window's packs are
ordered by their earliest sample), so the storage reader's look-ahead depth and Belady's clock
count samples, as without packing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resumable_loader.loader.lookahead import NodeSchedule, PlannedBatch

if TYPE_CHECKING:
    from resumable_loader.packing.order import PackedOrder


class SampleSchedule:
    """A :class:`NodeSchedule` of packs, as the schedule of their samples.

    Args:
        packs: the loader's schedule (pack positions, pack ids).
        order: the packed order the packs come from.

    Attributes:
        epoch, start, now, batch_size, global_batch_size, node_ranks, num_workers, worker,
        rank: as a NodeSchedule's, in samples: ``now`` the clock of the batch loaded now,
        ``batch_size`` its pieces, ``global_batch_size`` the samples a step of every rank
        covers on average (its packs x the epoch's samples per pack, rounded up), which the
        clock advances by per step.
    """

    def __init__(self, packs: NodeSchedule, order: PackedOrder) -> None:
        self.packs, self.order = packs, order
        self.epoch = packs.epoch
        self.node_ranks, self.num_workers = packs.node_ranks, packs.num_workers
        self.worker, self.rank = packs.worker, packs.rank
        per_pack = -(-order.samples // max(order.epoch_length(self.epoch), 1))
        self.global_batch_size = packs.global_batch_size * per_pack
        self.start = self._clock(packs.start)
        self.now, self.batch_size = self.start, 0

    def follow(self) -> None:
        """Take the pack schedule's current batch (its ``now`` and ``batch_size``)."""
        packs = self.packs
        ids = self.order.ids(self.epoch, packs.now, packs.now + packs.batch_size)
        pieces = self.order.packs_pieces(self.epoch, ids)
        self.now = int(pieces["positions"][0])
        self.batch_size = len(pieces["ids"])

    def pull(self) -> PlannedBatch | None:
        """The next batch of the node's future, as its samples (None past the end)."""
        batch = self.packs.pull()
        if batch is None:
            return None
        pieces = self.order.packs_pieces(self.epoch, batch.ids)
        return PlannedBatch(int(pieces["positions"][0]), pieces["ids"], batch.mine)

    def _clock(self, position: int) -> int:
        """The sample position of the first piece of pack ``position`` (the epoch's sample
        count past its last pack)."""
        if position >= self.order.epoch_length(self.epoch):
            return self.order.samples
        ids = self.order.ids(self.epoch, position, position + 1)
        return int(self.order.packs_pieces(self.epoch, ids)["positions"][0])

    def __repr__(self) -> str:
        return f"SampleSchedule(epoch={self.epoch}, now={self.now}, of {self.packs!r})"


class Translated:
    """Per process, the sample schedule of the pack schedule the loader hands over (one per
    iteration: the reader starts afresh when handed another schedule object)."""

    def __init__(self) -> None:
        self._held: tuple[Any, SampleSchedule] | None = None

    def of(self, packs: NodeSchedule, order: PackedOrder) -> SampleSchedule:
        held = self._held
        if held is None or held[0] is not packs:
            held = self._held = (packs, SampleSchedule(packs, order))
        held[1].follow()
        return held[1]
