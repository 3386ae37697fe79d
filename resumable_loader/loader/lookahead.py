"""The future a loading process can compute: the node's next batches, for datasets that prefetch.

The loader's order is a pure function of (seed, epoch, position), torch hands a rank's batches
to its workers round robin (batch k of an iteration to worker k mod W, from worker 0 at every
iteration's start), and every rank splits each global batch the same way. So any process that
loads batches can list, from the batch it is loading, the batches every worker of every rank
on its node loads next, and which of them are its own. A dataset with ``plan_reads``
(:class:`Prefetching`) is handed that list before each batch is loaded, in each worker and in
the main process at ``num_workers=0``, and may fetch their bytes ahead. The list is only a
forecast: a wrong one (another dispatch of batches, a stale order after a seed change in
persistent workers) may cost wasted fetches, never another sample, since what is loaded is
always the ref's own ids.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
from torch.utils.data import get_worker_info

from resumable_loader.loader.refs import OrderedBatchSampler, _PositionReader
from resumable_loader.order.partition import Partition
from resumable_loader.order.permutation import Order


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """One batch of the node's future: the epoch position of its first sample (the node's
    clock: batches are consumed in increasing position), its sample ids, and whether this
    process loads it."""

    position: int
    ids: np.ndarray
    mine: bool


@runtime_checkable
class Prefetching(Protocol):
    """A dataset that can fetch ahead: told, before each batch is loaded, the node's future
    (while its ``prefetching`` is true)."""

    prefetching: bool

    def plan_reads(self, schedule: NodeSchedule) -> None: ...


class NodeSchedule:
    """The batches the node loads in one iteration, from its start, pulled lazily in order.

    Attributes:
        epoch: the iteration's epoch.
        start: the epoch position the iteration began at (its first global batch).
        now: the position of the batch this process is loading now.
        batch_size: how many samples that batch has.
        global_batch_size: the positions one step of every rank covers.
        node_ranks, num_workers, worker: who loads what (see the module docstring).
    """

    def __init__(
        self,
        order: Order,
        partition: Partition,
        *,
        epoch: int,
        start: int,
        num_workers: int,
        worker: int,
        node_ranks: list[int],
    ) -> None:
        self.epoch, self.start, self.now = epoch, start, start
        self.batch_size = 0  # samples of the batch being loaded now
        self.global_batch_size = partition.global_batch_size  # positions a step advances
        self.num_workers, self.worker, self.node_ranks = num_workers, worker, node_ranks
        self.rank = partition.rank
        self._partitions = [dataclasses.replace(partition, rank=r) for r in node_ranks]
        self._reader = _PositionReader(order, epoch, start)
        self._batches = self._generate()
        self._pulled: deque[PlannedBatch] = deque()

    def pull(self) -> PlannedBatch | None:
        """The next batch of the node's future (None past the iteration's end)."""
        if self._pulled:
            return self._pulled.popleft()
        return next(self._batches, None)

    def _generate(self) -> Iterator[PlannedBatch]:
        position, step = self.start, 0
        while True:
            global_size = 0
            for rank, partition in zip(self.node_ranks, self._partitions, strict=True):
                batch = next(partition.batches(position), None)
                if batch is None:
                    return
                mine = rank == self.rank and step % self.num_workers == self.worker
                ids = np.asarray(self._reader.take(batch.start, batch.stop), dtype=np.int64)
                yield PlannedBatch(batch.start, ids, mine)
                global_size = batch.global_size
            position, step = position + global_size, step + 1

    def find_mine(self, position: int) -> np.ndarray | None:
        """The ids the schedule holds for this process's batch at ``position`` (pulling up to
        it; the batches pulled stay for :meth:`pull`), or None if it has none there."""
        while True:
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._pulled.append(batch)
            if batch.position > position:
                return None
            if batch.mine and batch.position == position:
                return batch.ids


class Lookahead:
    """Builds each process's :class:`NodeSchedule` and hands it to the dataset before a batch.

    Held by the loader's KeyedFetch, so it is pickled into the workers with it.

    Args:
        order: the loader's order (its seed included).
        partition: this rank's split of each epoch.
        num_workers: the loader's (0: the main process loads every batch).
        node_ranks: the ranks on this node (default: from LOCAL_RANK and LOCAL_WORLD_SIZE,
            as torchrun sets them; else this rank alone).
    """

    def __init__(
        self,
        order: Order,
        partition: Partition,
        *,
        num_workers: int,
        node_ranks: list[int] | None = None,
    ) -> None:
        self.order, self.partition = order, partition
        self.num_workers = max(num_workers, 1)
        self.node_ranks = node_ranks if node_ranks is not None else _node_ranks(partition)
        self._schedule: NodeSchedule | None = None
        self._next: tuple[int, int] | None = None  # (epoch, position) expected next here

    def before(self, dataset: Prefetching, epoch: int, start: int, ids: list[int]) -> None:
        """Tell ``dataset`` the node's future, as the batch at ``start`` (``ids``) is loaded."""
        partition = self.partition
        batch_size = partition.batch_size
        first = start - partition.rank * batch_size  # the global batch's first position
        if self._next != (epoch, start):  # a new iteration: this is its batch number `worker`
            info = get_worker_info()
            worker = info.id if info is not None else 0
            schedule = NodeSchedule(
                self.order,
                partition,
                epoch=epoch,
                start=max(first - worker * partition.global_batch_size, 0),
                num_workers=self.num_workers,
                worker=worker,
                node_ranks=self.node_ranks,
            )
            forecast = schedule.find_mine(start)
            self._schedule = schedule if forecast is not None and _same(forecast, ids) else None
        self._next = (epoch, start + self.num_workers * partition.global_batch_size)
        if self._schedule is not None:
            self._schedule.now, self._schedule.batch_size = start, len(ids)
            dataset.plan_reads(self._schedule)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_schedule": None, "_next": None}


def lookahead_for(dataset: object, refs: object, num_workers: int) -> Lookahead | None:
    """A Lookahead for an iteration of ``refs`` over ``dataset``, if the dataset prefetches
    and the loader's own order decides the batches (not a user's sampler)."""
    if not isinstance(dataset, Prefetching) or not dataset.prefetching:
        return None
    if type(refs) is not OrderedBatchSampler or not refs.batched:
        return None
    return Lookahead(refs.order, refs.partition, num_workers=num_workers)


def _same(forecast: np.ndarray, ids: list[int]) -> bool:
    return len(forecast) == len(ids) and forecast.tolist() == list(ids)


def _node_ranks(partition: Partition) -> list[int]:
    """The ranks on this node, as torchrun's LOCAL_RANK and LOCAL_WORLD_SIZE say."""
    try:
        local_rank = int(os.environ["LOCAL_RANK"])
        local_size = int(os.environ["LOCAL_WORLD_SIZE"])
    except (KeyError, ValueError):
        return [partition.rank]
    first = partition.rank - local_rank
    ranks = [r for r in range(first, first + local_size) if 0 <= r < partition.world_size]
    return ranks if partition.rank in ranks else [partition.rank]
