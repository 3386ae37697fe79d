"""The index samplers torch's DataLoader machinery iterates in the main process.

:class:`OrderedBatchSampler` turns (order, partition, epoch, start position) into this rank's
batch references; it holds no iteration state beyond the arguments of the iteration it was
last asked for. :class:`StreamBatchSampler` does the same over a torch sampler's index stream;
:class:`UserBatchSampler` adapts any other sampler or batch_sampler, iterated by each rank
itself: its ids come from the user's object, its keys from our positions.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, Sampler

from resumable_loader.errors import StateDictError
from resumable_loader.loader.keyed_fetch import BatchRef, SampleRef
from resumable_loader.loader.sampler_state import Capture, SamplerStream, capture
from resumable_loader.order.partition import Partition
from resumable_loader.order.permutation import Order


class _PositionReader:
    """Serves ids for increasing position ranges of one epoch from the order's chunk stream."""

    def __init__(self, order: Order, epoch: int, start: int) -> None:
        self._order = order
        self._epoch = epoch
        self._chunks = order.iter_ids(epoch, start)
        self._buffer = np.empty(0, dtype=np.int64)
        self._buffer_start = start

    def take(self, start: int, stop: int) -> list[int]:
        """Ids at positions [start, stop); positions past the epoch wrap to its beginning."""
        length = epoch_length(self._order, self._epoch)
        real_stop = min(stop, length)
        ids = self._read(start, real_stop) if start < real_stop else []
        if stop > length:
            wrapped = np.arange(max(start, length), stop) % length
            head = self._order.ids(self._epoch, 0, int(wrapped.max()) + 1)
            ids = ids + head[wrapped].tolist()
        return ids

    def _read(self, start: int, stop: int) -> list[int]:
        while self._buffer_start + len(self._buffer) < stop:
            self._buffer = np.concatenate([self._buffer, next(self._chunks)])
            consumed = min(start - self._buffer_start, len(self._buffer))  # other ranks' ids
            self._buffer = self._buffer[consumed:]
            self._buffer_start += consumed
        return self._buffer[start - self._buffer_start : stop - self._buffer_start].tolist()


def epoch_length(order: Order, epoch: int) -> int:
    """Positions in ``epoch`` of ``order``: its ``epoch_length(epoch)`` if the length varies by
    epoch (a Packed dataset's packs), else its length."""
    sizer = getattr(order, "epoch_length", None)
    return len(order) if sizer is None else sizer(epoch)


class _RefSampler(Sampler):
    """Common part: the iteration to produce next, and the cursor advance of each ref yielded.

    ``advances`` holds, for every ref handed to torch and not yet delivered to the caller, how
    many samples the cursor moves once it is, and whether it is the iteration's last; torch
    prefetches refs in order and (with in_order=True) delivers them in that order, so the
    iterator pops one per delivered batch. The refs are read one ahead, so the last batch is
    known as such when it is handed out (a user sampler's epoch length is its own). Each
    ``begin()`` starts a new deque, so an older iterator still being consumed keeps its own.
    ``first`` keeps the iteration's first ``prefetched`` refs: torch sends them to its workers
    before the loader can watch what it sends, and a stall warning names their positions.
    """

    def __init__(self) -> None:
        self.seed = 0
        self.epoch = 0
        self.start = 0
        self.advances: deque[tuple[int, bool]] = deque()
        self.prefetched = 0  # refs torch's iterator sends before its first next()
        self.first: list[BatchRef | SampleRef] = []

    def begin(self, *, seed: int, epoch: int, start: int) -> None:
        """Set the iteration the next ``iter()`` produces."""
        self.seed, self.epoch, self.start = seed, epoch, start
        self.advances, self.first = deque(), []

    def pass_epoch(self, epoch: int, position: int) -> None:
        """A loaded state stopped ``epoch`` at ``position``, where this layout has no batch
        left, and the iteration begins the next epoch: nothing to do for an order that is a
        pure function of the epoch (see :class:`StreamBatchSampler`)."""

    def __iter__(self) -> Iterator[BatchRef | SampleRef]:
        refs = self._refs(self.seed, self.epoch, self.start)
        return _recording(refs, self.advances, self.first, self.prefetched)

    def _refs(
        self, seed: int, epoch: int, start: int
    ) -> Iterator[tuple[BatchRef | SampleRef, int]]:
        raise NotImplementedError


def _recording(
    refs: Iterator[tuple[BatchRef | SampleRef, int]],
    advances: deque[tuple[int, bool]],
    first: list[BatchRef | SampleRef],
    kept: int,
) -> Iterator[BatchRef | SampleRef]:
    current = next(refs, None)
    while current is not None:
        following = next(refs, None)
        advances.append((current[1], following is None))
        if len(first) < kept:
            first.append(current[0])
        yield current[0]
        current = following


class OrderedBatchSampler(_RefSampler):
    """This rank's batches of the epoch order, from a start position; yields BatchRef/SampleRef.

    Args:
        order: the epoch order (sequential, shuffled or shard-local).
        partition: how global batches split across ranks.
        batched: yield a BatchRef per batch (torch auto-batching) or a SampleRef per sample.
    """

    capture: Capture | None = None  # what decides a user sampler's epochs (none: our order)

    def __init__(self, order: Order, partition: Partition, *, batched: bool) -> None:
        super().__init__()
        self.order = order
        self._partition = partition
        self._partition_epoch = 0  # the epoch whose length the partition has (at_epoch)
        self.batched = batched

    @property
    def partition(self) -> Partition:
        """The split of the epoch last named by ``at_epoch`` (or begun)."""
        if hasattr(self.order, "epoch_length"):  # its length varies by epoch
            length = self.order.epoch_length(self._partition_epoch)
            if length != self._partition.length:
                self._partition = dataclasses.replace(self._partition, length=length)
        return self._partition

    @partition.setter
    def partition(self, partition: Partition) -> None:
        self._partition = partition

    def at_epoch(self, epoch: int) -> None:
        """Make ``partition`` (and ``len()``) that of ``epoch``: the one a loaded state, a
        ``set_epoch`` or an iteration names."""
        self._partition_epoch = epoch

    def epoch_positions(self, epoch: int) -> int:
        """Positions in ``epoch`` (the partition's length, for the epoch asked)."""
        if hasattr(self.order, "epoch_length"):
            return self.order.epoch_length(epoch)
        return self.partition.length

    def epoch_batches(self, epoch: int) -> int:
        """This rank's batches in the whole of ``epoch`` (a Packed dataset's differ by epoch)."""
        length = self.epoch_positions(epoch)
        return dataclasses.replace(self.partition, length=length).num_batches()

    def begin(self, *, seed: int, epoch: int, start: int) -> None:
        super().begin(seed=seed, epoch=epoch, start=start)
        self.at_epoch(epoch)

    def __len__(self) -> int:
        return self.partition.num_batches()

    def _refs(
        self, seed: int, epoch: int, start: int
    ) -> Iterator[tuple[BatchRef | SampleRef, int]]:
        # Bound now, when torch's iterator is made: an older iterator still being consumed
        # keeps the order and partition of its own iteration.
        return _ordered_refs(self.order, self.partition, self.batched, seed, epoch, start)


def _ordered_refs(
    order: Order, partition: Partition, batched: bool, seed: int, epoch: int, start: int
) -> Iterator[tuple[BatchRef | SampleRef, int]]:
    reader = _PositionReader(order, epoch, start)
    for batch in partition.batches(start):
        ids = reader.take(batch.start, batch.stop)
        if batched:
            yield BatchRef(seed, epoch, batch.start, ids), batch.global_size
        else:
            yield SampleRef(seed, epoch, batch.start, ids[0]), batch.global_size


class StreamBatchSampler(OrderedBatchSampler):
    """A torch sampler's index stream, split across ranks and batches as the loader's own order.

    For the samplers whose stream is the same on every rank and for every batch size
    (``sampler_state.GLOBAL_SAMPLERS``): position p of an epoch holds the sampler's p-th index,
    so batch size, world size and num_workers may change on resume, and keys are positions.
    Each epoch's stream is drawn when the epoch begins, from the sampler's state at its start.
    """

    order: SamplerStream

    def __init__(self, order: SamplerStream, partition: Partition, *, batched: bool) -> None:
        super().__init__(order, partition, batched=batched)

    def begin(self, *, seed: int, epoch: int, start: int) -> None:
        super().begin(seed=seed, epoch=epoch, start=start)
        if start == 0 and len(self.order) != self.partition.length:  # its data grew or shrank
            self.partition = dataclasses.replace(self.partition, length=len(self.order))
        self.order.begin(epoch)

    def pass_epoch(self, epoch: int, position: int) -> None:
        """The sampler's state was restored to ``epoch``'s start (the state was taken inside
        it: before its end); draw that epoch, as its iteration would have, so that the next
        one is drawn from its own start, not from this one's (a resume with a larger batch or
        world size whose ``drop_last`` left no batch of it replayed its order as the next)."""
        if position < self.partition.length:
            self.order.begin(epoch)

    @property
    def capture(self) -> Capture:  # type: ignore[override]
        return self.order.capture

    def _refs(
        self, seed: int, epoch: int, start: int
    ) -> Iterator[tuple[BatchRef | SampleRef, int]]:
        drawn = self.order.drawn()  # this epoch's stream, kept by this iteration
        return _ordered_refs(drawn, self.partition, self.batched, seed, epoch, start)


class UserBatchSampler(_RefSampler):
    """Wraps a user's sampler (with a batch size) or batch_sampler; keys follow our positions.

    For samplers that may split the data across ranks themselves (``DistributedSampler``, any
    custom sampler): each rank iterates its own and counts its own samples; key positions
    interleave the ranks (``count * world_size + rank``) so that no two ranks share a key. A
    resume restores what decides the sampler's epoch (``sampler_state.capture``) as it was at the
    epoch's start and replays its index stream up to the saved count (index draws only, no
    sample loads), then batches the rest: a sampler's stream (also under a torch
    ``BatchSampler``) may be batched differently on resume; a custom batch_sampler's batches
    are its own, so a resume must fall between two of them.

    Args:
        source: the user's sampler or batch_sampler.
        batches: whether ``source`` was given as ``batch_sampler=`` (else as ``sampler=``: a
            torch ``BatchSampler`` given so yields one list of indices an item, as in torch).
        batch_size: samples per batch when ``source`` yields single indices, else None.
        drop_last: drop a short last batch (only with ``batch_size``).
        batched: torch auto-batching on (yield BatchRef) or off (yield SampleRef).
        world_size, rank: this process's place among the ranks.
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        batches: bool,
        batch_size: int | None,
        drop_last: bool,
        batched: bool,
        world_size: int,
        rank: int,
    ) -> None:
        super().__init__()
        self.source = source
        # a torch BatchSampler given as batch_sampler= is re-batched from its sampler: its batch
        # size may change on a resume
        if batches and type(source) is BatchSampler:
            source, batch_size, drop_last = source.sampler, source.batch_size, source.drop_last
        self.capture = capture(source)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.batched = batched
        self.world_size = world_size
        self.rank = rank
        self._epoch_items: Iterable[Any] = source

    def begin(self, *, seed: int, epoch: int, start: int) -> None:
        super().begin(seed=seed, epoch=epoch, start=start)
        self._epoch_items = self.capture.begin()

    def __len__(self) -> int:
        return self.batches_from(0)

    def epoch_samples(self) -> int | None:
        """The positions of an epoch: the sampler's count of indices (which may pass the
        dataset's length: drawn with replacement); None if it has no length (an infinite
        sampler, as torch's DataLoader allows) or yields its own batches (their samples are
        not known ahead)."""
        if self.batched and self.batch_size is None:
            return None
        try:
            return len(self.capture.sampler)
        except TypeError:
            return None

    def batches_from(self, start: int) -> int:
        """Batches of an epoch after its first ``start`` samples (a TypeError, as torch's
        ``len()``, for a sampler without ``__len__``); a custom batch_sampler's own batches
        are counted whole, their split unknown without iterating them."""
        items = len(self.capture.sampler)
        if self.batch_size is None:
            return items if self.batched else items - start
        full, rest = divmod(max(items - start, 0), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _batches(self, epoch_items: Iterable[Any], start: int) -> Iterator[list[int]]:
        """The epoch's batches after its first ``start`` samples."""
        items = iter(epoch_items)
        if self.batched and self.batch_size is None:  # a custom batch_sampler's own batches
            count = 0
            for ids in items:
                if count >= start:
                    yield list(ids)
                count += len(ids)
                if start < count < start + len(ids):
                    raise StateDictError(
                        f"cannot resume batch_sampler {type(self.source).__name__} at sample "
                        f"{start}: it falls inside a batch (samples {count - len(ids)}.."
                        f"{count - 1}) of this batch_sampler, whose batches are its own; resume "
                        "with the batch_sampler the checkpoint was taken with"
                    )
            return
        items = itertools.islice(items, start, None)
        size = self.batch_size if self.batched and self.batch_size is not None else 1
        while batch := list(itertools.islice(items, size)):
            if len(batch) < size and self.drop_last:
                return
            yield batch

    def _refs(
        self, seed: int, epoch: int, start: int
    ) -> Iterator[tuple[BatchRef | SampleRef, int]]:
        return self._keyed(self._batches(self._epoch_items, start), seed, epoch, start)

    def _keyed(
        self, batches: Iterator[list[int]], seed: int, epoch: int, start: int
    ) -> Iterator[tuple[BatchRef | SampleRef, int]]:
        count = start
        for ids in batches:
            key_position = count * self.world_size + self.rank
            if self.batched:
                yield BatchRef(seed, epoch, key_position, ids, self.world_size), len(ids)
            else:
                yield SampleRef(seed, epoch, key_position, ids[0]), 1
            count += len(ids)
