"""Simulated ranks in lockstep, and chains of resumed segments: what each run delivered.

What a run saw, sample by sample: position, sample id and a digest per output field.

A run is a chain of segments, each a set of simulated ranks (one loader per rank, stepped in
lockstep) resumed from the previous segment's ``state_dict()`` passed through msgpack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import msgpack
from torch.utils.data import BatchSampler, IterableDataset

from resumable_loader.errors import ConfigError, ResumableLoaderError
from resumable_loader.loader.dataloader import ResumableDataLoader
from resumable_loader.order.partition import Partition
from resumable_loader.order.permutation import Order
from resumable_loader.verify.split import Layout, split_batch


@dataclasses.dataclass(frozen=True)
class Record:
    """One delivered sample: where it sits in the stream, which sample it is, what it held."""

    epoch: int
    position: int
    sample_id: int
    fields: dict[str, str]

    @property
    def key(self) -> tuple[int, ...]:
        """What identifies it across runs: its place in the stream."""
        return self.epoch, self.position


@dataclasses.dataclass(frozen=True)
class BatchRecord:
    """The batch-level fields of one rank's batch of positions [position, stop)."""

    epoch: int
    position: int
    stop: int
    fields: dict[str, str]

    @property
    def key(self) -> tuple[int, ...]:
        """What identifies it across runs: the positions it covers (padding included)."""
        return self.epoch, self.position, self.stop


@dataclasses.dataclass(frozen=True)
class Place:
    """A point of the stream: the next position of an epoch (the epoch's length once complete)."""

    epoch: int
    position: int

    def next_iteration(self, partition: Partition) -> Place:
        """Where the next ``iter()`` of a loader with ``partition`` begins.

        An epoch with no batch left is complete, so the places "epoch e, position p" with no
        batch after p, "epoch e, position length" and "epoch e + 1, position 0" are one place:
        compare places through this.
        """
        if partition.num_batches(self.position) == 0:
            return Place(self.epoch + 1, 0)
        return self

    def __str__(self) -> str:
        return f"epoch {self.epoch} position {self.position}"


class StreamError(ResumableLoaderError):
    """The loader's batches or cursor disagree with its partition (``what``: which of them)."""

    def __init__(self, place: Place, what: str, expected: str, got: str) -> None:
        super().__init__(f"{what} at {place}: expected {expected}, got {got}")
        self.place, self.what, self.expected, self.got = place, what, expected, got


@dataclasses.dataclass
class Stream:
    """The records of one run (of its samples, and of its batches' batch-level fields), and
    the global batches it consumed (to place batch stops).
    """

    records: list[Record] = dataclasses.field(default_factory=list)
    batch_records: list[BatchRecord] = dataclasses.field(default_factory=list)
    batches: int = 0


_END = object()


def own_order(loader: ResumableDataLoader) -> tuple[Order, Partition]:
    """The loader's own order and partition; verify cannot place samples of a user's sampler."""
    order, partition = loader.order, loader.partition
    if order is not None and partition is not None:
        return order, partition
    if isinstance(loader.dataset, IterableDataset):
        raise ConfigError(
            f"verify needs a map-style dataset: {type(loader.dataset).__name__} is an "
            "IterableDataset, whose order lives in its own __iter__"
        )
    batches = loader.batch_sampler
    source = loader.sampler if batches is None or type(batches) is BatchSampler else batches
    raise ConfigError(
        f"verify needs a dataset ordered by the loader itself, not by the sampler "
        f"{type(source).__name__}: drop sampler= and batch_sampler= (use "
        "shuffle=/shard_shuffle=)"
    )


def record(
    ranks: Sequence[ResumableDataLoader],
    stream: Stream,
    place: Place,
    *,
    epochs: int,
    layout: Layout,
    until: Callable[[Stream], bool] | None = None,
) -> Place:
    """Consume ``ranks`` (one loader per rank, in rank order) in lockstep into ``stream``.

    Starts at ``place`` (where the loaders are: fresh, or loaded from a state at ``place``)
    and runs until epoch ``epochs`` would begin or ``until(stream)`` holds after a global batch.
    A global batch is the ranks' batches concatenated in rank order, padding dropped. Every
    iteration must deliver each position once, in order, up to ``Partition.end`` (which the
    loader itself never consults, so a batch split that skips or repeats a position shows).
    Batches split by ``layout`` (see :func:`split_batch`).

    Returns:
        The place after the last delivered batch.

    Raises:
        StreamError: a rank delivered more or fewer batches than the partition prescribes, or
            the batches skipped, repeated or reordered a position.
    """
    plans = [own_order(loader) for loader in ranks]
    order, partition = plans[0]
    batched = ranks[0].batch_sampler is not None
    while until is None or not until(stream):
        place = place.next_iteration(partition)
        if place.epoch >= epochs:
            break
        iterators = [iter(loader) for loader in ranks]
        batches = zip(*(p.batches(place.position) for _, p in plans), strict=True)
        start = expected = place.position  # expected: the next position the ranks deliver
        for plan in batches:
            outputs = [next(iterator, _END) for iterator in iterators]
            ended = [rank for rank, output in enumerate(outputs) if output is _END]
            if ended:
                raise StreamError(
                    place, "(batches)", "a batch from every rank", f"none from {ended}"
                )
            ids = order.ids(place.epoch, place.position, place.position + plan[0].global_size)
            for batch, output in zip(plan, outputs, strict=True):
                size = batch.stop - batch.start if batched else None
                samples, shared = split_batch(output, size, layout)
                if shared:
                    stream.batch_records.append(
                        BatchRecord(place.epoch, batch.start, batch.stop, shared)
                    )
                for offset, fields in enumerate(samples):
                    position = batch.start + offset
                    if position >= partition.length:  # padding: a repeat of the epoch's start
                        continue
                    if position != expected:
                        raise StreamError(
                            place, "(positions)", f"position {expected}", f"position {position}"
                        )
                    sample_id = int(ids[position - place.position])
                    stream.records.append(Record(place.epoch, position, sample_id, fields))
                    expected += 1
            stream.batches += 1
            place = Place(place.epoch, place.position + plan[0].global_size)
            if place.position != expected:  # the cursor moves past what was delivered
                raise StreamError(
                    place, "(positions)", f"up to {place.position - 1}", f"up to {expected - 1}"
                )
            if until is not None and until(stream):
                return place
        extra = [rank for rank, it in enumerate(iterators) if next(it, _END) is not _END]
        if extra:
            raise StreamError(place, "(batches)", "the end of the epoch", f"more from {extra}")
        if place.position != partition.end(start):
            raise StreamError(
                place, "(positions)", f"up to {partition.end(start) - 1}", f"up to {expected - 1}"
            )
    return place


@dataclasses.dataclass(frozen=True)
class Config:
    """How one segment of a run loads: worker count, per-rank batch size, simulated ranks."""

    num_workers: int
    batch_size: int | None
    world_size: int

    def __str__(self) -> str:
        return f"workers={self.num_workers} batch={self.batch_size} world={self.world_size}"


@dataclasses.dataclass(frozen=True)
class Stop:
    """Interrupt a run once it has delivered ``count`` samples (or global batches) in all."""

    count: int
    unit: Literal["samples", "batches"]

    def reached(self, stream: Stream) -> bool:
        done = len(stream.records) if self.unit == "samples" else stream.batches
        return done >= self.count

    def __str__(self) -> str:
        return f"after {self.count} {self.unit}"


@dataclasses.dataclass(frozen=True)
class Interruption:
    """Where a run was interrupted for ``stop``: at the first global-batch boundary at or after
    it, once ``samples`` samples were delivered, at ``place``, and where the next segment
    resumes: ``resumes_at``, the next epoch's start if the interrupted configuration had no
    batch left in the epoch (its cursor says "epoch complete", so no configuration delivers
    the epoch's drop_last tail). Both are None when the run ended first (a resumed topology
    with fewer batches, say a drop_last tail too short for its global batch), after
    ``samples`` samples.
    """

    stop: Stop
    samples: int
    place: Place | None
    resumes_at: Place | None

    def __str__(self) -> str:
        if self.place is None:
            return f"stop {self.stop}: not reached, the run ended after {self.samples} samples"
        where = str(self.place)
        if self.resumes_at != self.place:
            where += f", the end of the epoch for this configuration: resumed at {self.resumes_at}"
        return f"stop {self.stop}: stopped at {self.samples} samples ({where})"


def run_chain(
    build: Callable[[Config], list[ResumableDataLoader]],
    chain: Sequence[Config],
    stops: Sequence[Stop],
    stream: Stream,
    *,
    epochs: int,
    layout: Layout,
) -> list[Interruption]:
    """Run ``chain[0]``, interrupt it at ``stops[0]``, resume as ``chain[1]``, and so on.

    Args:
        build: makes a fresh loader per rank of a configuration.
        chain: one configuration per segment, ``len(stops) + 1`` of them.
        stops: where each segment but the last ends.
        stream: receives the run's records (those before a StreamError too).
        epochs: the run ends when this epoch would begin.
        layout: how batches split (see :func:`split_batch`).

    Returns:
        Where each stop interrupted the run; once the run ends before a stop, that stop and
        the later ones are not reached (and their segments are not run).

    Raises:
        StreamError: a segment's batches, or the cursor it saved, disagree with the partition.
    """
    place, state = Place(0, 0), None
    interruptions: list[Interruption] = []
    for config, stop in zip(chain, [*stops, None], strict=True):
        ranks = build(config)
        if state is not None:
            for loader in ranks:
                loader.load_state_dict(msgpack.unpackb(msgpack.packb(state)))
        until = stop and stop.reached
        place = record(ranks, stream, place, epochs=epochs, layout=layout, until=until)
        if stop is None:
            break
        if not stop.reached(stream):  # the run ended first
            ended = len(stream.records)
            interruptions += [
                Interruption(later, ended, None, None) for later in stops[len(interruptions) :]
            ]
            break
        resumes_at = place.next_iteration(own_order(ranks[0])[1])
        interruptions.append(Interruption(stop, len(stream.records), place, resumes_at))
        for loader in ranks:
            state = loader.state_dict()
            saved = Place(state["epoch"], state["position"])
            if saved.next_iteration(own_order(loader)[1]) != resumes_at:
                raise StreamError(place, "(state_dict)", str(place), str(saved))
        place = resumes_at
    return interruptions
