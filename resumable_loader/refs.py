"""The index samplers torch's DataLoader machinery iterates in the main process.

:class:`OrderedBatchSampler` turns (order, partition, epoch, start position) into this rank's
batch references; it holds no iteration state beyond the arguments of the iteration it was
last asked for. :class:`UserBatchSampler` adapts a user's own sampler or batch_sampler: its ids
come from the user's object, its keys from our positions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from resumable_loader.errors import StateDictError
from resumable_loader.keyed_fetch import BatchRef, SampleRef
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
        length = len(self._order)
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


class _RefSampler(Sampler):
    """Common part: the iteration to produce next, and the cursor advance of each ref yielded.

    ``advances`` holds, for every ref handed to torch and not yet delivered to the caller, how
    many samples the cursor moves once it is, and whether it is the iteration's last; torch
    prefetches refs in order and (with in_order=True) delivers them in that order, so the
    iterator pops one per delivered batch. The refs are read one ahead, so the last batch is
    known as such when it is handed out (a user sampler's epoch length is its own). Each
    ``begin()`` starts a new deque, so an older iterator still being consumed keeps its own.
    """

    def __init__(self) -> None:
        self.seed = 0
        self.epoch = 0
        self.start = 0
        self.advances: deque[tuple[int, bool]] = deque()

    def begin(self, *, seed: int, epoch: int, start: int) -> None:
        """Set the iteration the next ``iter()`` produces."""
        self.seed, self.epoch, self.start = seed, epoch, start
        self.advances = deque()

    def __iter__(self) -> Iterator[BatchRef | SampleRef]:
        return _recording(self._refs(self.seed, self.epoch, self.start), self.advances)

    def _refs(
        self, seed: int, epoch: int, start: int
    ) -> Iterator[tuple[BatchRef | SampleRef, int]]:
        raise NotImplementedError


def _recording(
    refs: Iterator[tuple[BatchRef | SampleRef, int]], advances: deque[tuple[int, bool]]
) -> Iterator[BatchRef | SampleRef]:
    current = next(refs, None)
    while current is not None:
        following = next(refs, None)
        advances.append((current[1], following is None))
        yield current[0]
        current = following


class OrderedBatchSampler(_RefSampler):
    """This rank's batches of the epoch order, from a start position; yields BatchRef/SampleRef.

    Args:
        order: the epoch order (sequential, shuffled or shard-local).
        partition: how global batches split across ranks.
        batched: yield a BatchRef per batch (torch auto-batching) or a SampleRef per sample.
    """

    def __init__(self, order: Order, partition: Partition, *, batched: bool) -> None:
        super().__init__()
        self.order = order
        self.partition = partition
        self.batched = batched

    def __len__(self) -> int:
        return self.partition.num_batches()

    def _refs(
        self, seed: int, epoch: int, start: int
    ) -> Iterator[tuple[BatchRef | SampleRef, int]]:
        reader = _PositionReader(self.order, epoch, start)
        for batch in self.partition.batches(start):
            ids = reader.take(batch.start, batch.stop)
            if self.batched:
                yield BatchRef(seed, epoch, batch.start, ids), batch.global_size
            else:
                yield SampleRef(seed, epoch, batch.start, ids[0]), batch.global_size


class UserBatchSampler(_RefSampler):
    """Wraps a user's sampler (with a batch size) or batch_sampler; keys follow our positions.

    A user's sampler decides both the order and the split across ranks, so each rank counts
    its own samples; key positions interleave the ranks (``count * world_size + rank``) so that
    no two ranks share a key. Resuming replays the user's index stream up to the saved count
    (index draws only, no sample loads) after restoring the user's sampler state as it was at
    the epoch's start, when the sampler has ``state_dict``/``load_state_dict``.

    Args:
        source: the user's sampler or batch_sampler.
        batch_size: samples per batch when ``source`` yields single indices, else None.
        drop_last: drop a short last batch (only with ``batch_size``).
        batched: torch auto-batching on (yield BatchRef) or off (yield SampleRef).
        world_size, rank: this process's place among the ranks.
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        batch_size: int | None,
        drop_last: bool,
        batched: bool,
        world_size: int,
        rank: int,
    ) -> None:
        super().__init__()
        self.source = source
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.batched = batched
        self.world_size = world_size
        self.rank = rank
        self.epoch_start_state: dict[str, Any] | None = None

    @property
    def stateful(self) -> bool:
        return hasattr(self.source, "state_dict") and hasattr(self.source, "load_state_dict")

    def begin(self, *, seed: int, epoch: int, start: int) -> None:
        super().begin(seed=seed, epoch=epoch, start=start)
        if self.stateful and start == 0:
            self.epoch_start_state = self.source.state_dict()

    def current_state(self) -> dict[str, Any] | None:
        """The user's sampler state now (after an epoch: the next epoch's start state)."""
        return self.source.state_dict() if self.stateful else None

    def restore(self, state: dict[str, Any] | None) -> None:
        """Put the user's sampler back in the state it had at the saved epoch's start."""
        if state is not None:
            self.source.load_state_dict(state)
            self.epoch_start_state = state

    def __len__(self) -> int:
        if self.batch_size is None:
            return len(self.source)
        full, rest = divmod(len(self.source), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _batches(self) -> Iterator[list[int]]:
        if not self.batched or self.batch_size is None:
            yield from ([index] if not self.batched else list(index) for index in self.source)
            return
        batch: list[int] = []
        for index in self.source:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def _refs(
        self, seed: int, epoch: int, start: int
    ) -> Iterator[tuple[BatchRef | SampleRef, int]]:
        count = 0
        for ids in self._batches():
            if count < start:
                count += len(ids)
                if count > start:
                    raise StateDictError(
                        f"cannot resume {type(self.source).__name__} at sample {start}: it falls "
                        f"inside a batch (samples {count - len(ids)}..{count - 1}); resume with "
                        "the batch size the checkpoint was taken with"
                    )
                continue
            key_position = count * self.world_size + self.rank
            if self.batched:
                yield BatchRef(seed, epoch, key_position, ids, self.world_size), len(ids)
            else:
                yield SampleRef(seed, epoch, key_position, ids[0]), 1
            count += len(ids)
