"""What a run saw, sample by sample: position, sample id and a digest per output field.

``verify`` compares streams, not batches: a resumed run may use another batch size or world
size, so every delivered batch is split back into its samples and each sample is identified by
its (epoch, position) in the epoch's global stream. A collated batch splits as torch's
``default_collate`` builds it: tensors and arrays along dim 0, mappings by key, lists and tuples
by index, except that a list of plain values (str, bytes, numbers) holds one value per sample.
A value that does not split (a 0-d tensor, a per-batch scalar) counts for every sample.

A run is a chain of segments, each a set of simulated ranks (one loader per rank, stepped in
lockstep) resumed from the previous segment's ``state_dict()`` passed through msgpack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import msgpack
import numpy as np
import torch

from resumable_loader.errors import ConfigError
from resumable_loader.index_sampler import OrderedBatchSampler
from resumable_loader.loader import ResumableDataLoader
from resumable_loader.partition import Partition

WHOLE_SAMPLE = "<sample>"  # the field name of an output that is a single tensor or value
_PLAIN = (str, bytes, bytearray, int, float, complex, bool, type(None), np.generic)


def digest(value: Any) -> str:
    """A stable 64-bit hex digest of one leaf value; dtype and shape count, not just the bytes."""
    return hashlib.blake2b(_leaf_bytes(value), digest_size=8).hexdigest()


def _leaf_bytes(value: Any) -> bytes:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        head = f"tensor:{flat.dtype}:{tuple(value.shape)}:".encode()
        return head + flat.view(torch.uint8).numpy().tobytes()
    if isinstance(value, np.generic | np.ndarray):
        array = np.ascontiguousarray(value)
        head = f"ndarray:{array.dtype.str}:{array.shape}:".encode()
        # An object array's bytes are pointers: hash the objects instead.
        body = pickle.dumps(array.tolist()) if array.dtype.hasobject else array.tobytes()
        return head + body
    if isinstance(value, str):
        return b"str:" + value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return b"bytes:" + bytes(value)
    if isinstance(value, int | float | complex | bool | type(None)):
        return f"{type(value).__name__}:{value!r}".encode()
    return b"pickle:" + pickle.dumps(value, protocol=4)


def sample_fields(output: Any, size: int | None) -> list[dict[str, str]]:
    """Split a delivered batch into ``size`` samples' {field path: digest} dicts.

    Args:
        output: what the loader yielded (a collated batch, or one sample when ``size`` is None,
            i.e. torch's auto-batching is off).
        size: how many samples the batch holds.
    """
    samples: list[dict[str, str]] = [{} for _ in range(size or 1)]
    for path, digests in _split(output, size, ""):
        for fields, value in zip(samples, digests, strict=True):
            fields[path or WHOLE_SAMPLE] = value
    return samples


def _split(value: Any, size: int | None, path: str) -> Iterator[tuple[str, list[str]]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _split(item, size, f"{path}.{key}" if path else str(key))
    elif size is None:
        if isinstance(value, list | tuple):
            for i, item in enumerate(value):
                yield from _split(item, size, f"{path}[{i}]")
        else:
            yield path, [digest(value)]
    elif isinstance(value, torch.Tensor | np.ndarray) and value.ndim and len(value) == size:
        yield path, [digest(row) for row in value]
    elif isinstance(value, list | tuple):
        if len(value) == size and all(isinstance(item, _PLAIN) for item in value):
            yield path, [digest(item) for item in value]
        else:
            for i, item in enumerate(value):
                yield from _split(item, size, f"{path}[{i}]")
    else:
        yield path, [digest(value)] * size


@dataclasses.dataclass(frozen=True)
class Record:
    """One delivered sample: where it sits in the stream, which sample it is, what it held."""

    epoch: int
    position: int
    sample_id: int
    fields: dict[str, str]


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


class StreamError(Exception):
    """The loader's batches or cursor disagree with its partition (``what``: which of them)."""

    def __init__(self, place: Place, what: str, expected: str, got: str) -> None:
        super().__init__(f"{what} at {place}: expected {expected}, got {got}")
        self.place, self.what, self.expected, self.got = place, what, expected, got


@dataclasses.dataclass
class Stream:
    """The records of one run, and the global batches it consumed (to place batch stops)."""

    records: list[Record] = dataclasses.field(default_factory=list)
    batches: int = 0


_END = object()


def ordered_sampler(loader: ResumableDataLoader) -> OrderedBatchSampler:
    """The loader's own order and partition; verify cannot place samples of a user's sampler."""
    refs = loader._refs
    if not isinstance(refs, OrderedBatchSampler):
        raise ConfigError(
            "verify needs a map-style dataset ordered by the loader itself: drop sampler= and "
            "batch_sampler= (use shuffle=/shard_shuffle=), and use a map-style Dataset"
        )
    return refs


def record(
    ranks: Sequence[ResumableDataLoader],
    stream: Stream,
    place: Place,
    *,
    epochs: int,
    until: Callable[[Stream], bool] | None = None,
) -> Place:
    """Consume ``ranks`` (one loader per rank, in rank order) in lockstep into ``stream``.

    Starts at ``place`` (where the loaders are: fresh, or loaded from a state at ``place``)
    and runs until epoch ``epochs`` would begin or ``until(stream)`` holds after a global batch.
    A global batch is the ranks' batches concatenated in rank order, padding dropped. Every
    iteration must deliver each position once, in order, up to ``Partition.end`` (which the
    loader itself never consults, so a batch split that skips or repeats a position shows).

    Returns:
        The place after the last delivered batch.

    Raises:
        StreamError: a rank delivered more or fewer batches than the partition prescribes, or
            the batches skipped, repeated or reordered a position.
    """
    samplers = [ordered_sampler(loader) for loader in ranks]
    order, partition = samplers[0].order, samplers[0].partition
    while until is None or not until(stream):
        place = place.next_iteration(partition)
        if place.epoch >= epochs:
            break
        iterators = [iter(loader) for loader in ranks]
        plans = zip(*(s.partition.batches(place.position) for s in samplers), strict=True)
        start = expected = place.position  # expected: the next position the ranks deliver
        for plan in plans:
            outputs = [next(iterator, _END) for iterator in iterators]
            ended = [rank for rank, output in enumerate(outputs) if output is _END]
            if ended:
                raise StreamError(
                    place, "(batches)", "a batch from every rank", f"none from {ended}"
                )
            ids = order.ids(place.epoch, place.position, place.position + plan[0].global_size)
            for batch, output in zip(plan, outputs, strict=True):
                size = batch.stop - batch.start if samplers[0].batched else None
                for offset, fields in enumerate(sample_fields(output, size)):
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
    it, once ``samples`` samples were delivered, at ``place``. ``place`` is None when the run
    ended first (a resumed topology with fewer batches, say a drop_last tail too short for its
    global batch), after ``samples`` samples.
    """

    stop: Stop
    samples: int
    place: Place | None

    def __str__(self) -> str:
        if self.place is None:
            return f"stop {self.stop}: not reached, the run ended after {self.samples} samples"
        return f"stop {self.stop}: stopped at {self.samples} samples ({self.place})"


def run_chain(
    build: Callable[[Config], list[ResumableDataLoader]],
    chain: Sequence[Config],
    stops: Sequence[Stop],
    stream: Stream,
    *,
    epochs: int,
) -> list[Interruption]:
    """Run ``chain[0]``, interrupt it at ``stops[0]``, resume as ``chain[1]``, and so on.

    Args:
        build: makes a fresh loader per rank of a configuration.
        chain: one configuration per segment, ``len(stops) + 1`` of them.
        stops: where each segment but the last ends.
        stream: receives the run's records (those before a StreamError too).
        epochs: the run ends when this epoch would begin.

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
        place = record(ranks, stream, place, epochs=epochs, until=stop and stop.reached)
        if stop is None:
            break
        if not stop.reached(stream):  # the run ended first
            ended = len(stream.records)
            interruptions += [
                Interruption(later, ended, None) for later in stops[len(interruptions) :]
            ]
            break
        interruptions.append(Interruption(stop, len(stream.records), place))
        partition = ordered_sampler(ranks[0]).partition
        for loader in ranks:
            state = loader.state_dict()
            saved = Place(state["epoch"], state["position"])
            if saved.next_iteration(partition) != place.next_iteration(partition):
                raise StreamError(place, "(state_dict)", str(place), str(saved))
    return interruptions
