"""What a run saw, sample by sample: position, sample id and a digest per output field.

``verify`` compares streams, not batches: a resumed run may use another batch size or world
size, so every delivered batch is split back into its samples and each sample is identified by
its (epoch, position) in the epoch's global stream. A batch of B samples splits by its shape:
mappings by key; a tensor or array whose dim 0 is B along dim 0 (batch-major); a list or tuple
of B elements one element per sample (``collate_fn=lambda b: b``, a list of strings), each
element digested as that sample; other lists and tuples field by field (``default_collate``
of tuple samples). Where a length equals B by chance (a pair of fields in a batch of 2,
time-major padding as long as the batch) the split follows a :func:`learn_layout` of the
pipeline's collate_fn. What remains (a per-batch count, a 0-d tensor, a tensor that is not
batch-major) belongs to no one sample: it is a batch-level field, digested once per batch and
comparable only with a batch of the same positions.

A run is a chain of segments, each a set of simulated ranks (one loader per rank, stepped in
lockstep) resumed from the previous segment's ``state_dict()`` passed through msgpack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import msgpack
import numpy as np
import torch

from resumable_loader.errors import ConfigError
from resumable_loader.index_sampler import OrderedBatchSampler
from resumable_loader.loader import ResumableDataLoader
from resumable_loader.partition import Partition

WHOLE_SAMPLE = "<sample>"  # the field name of an output that is a single tensor or value
WHOLE_BATCH = "<batch>"  # the field name of a batch that is a single value no sample owns
_ARRAYS = (torch.Tensor, np.ndarray)
Split = Literal["rows", "samples", "fields", "batch"]
Layout = Mapping[str, Split]  # field path -> how it splits; see learn_layout()


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


def learn_layout(small: Any, large: Any, size: int) -> Layout:
    """How a collate_fn lays out its batches, from its outputs for ``size`` and ``size + 1``
    copies of one sample: per field path, "rows" (a batch-major tensor or array), "samples"
    (a sequence of one element per sample), "fields" (a sequence of fixed length) or "batch"
    (a value no sample owns). A path whose length varies otherwise is left out.
    """
    layout: dict[str, Split] = {}
    _learn(small, large, size, "", layout)
    return layout


def _learn(small: Any, large: Any, size: int, path: str, layout: dict[str, Split]) -> None:
    if isinstance(small, Mapping) and isinstance(large, Mapping):
        for key in small.keys() & large.keys():
            _learn(small[key], large[key], size, _key_path(path, key), layout)
    elif isinstance(small, _ARRAYS) and isinstance(large, _ARRAYS):
        grows = small.ndim and large.ndim and (len(small), len(large)) == (size, size + 1)
        layout[path] = "rows" if grows else "batch"
    elif isinstance(small, list | tuple) and isinstance(large, list | tuple):
        if (len(small), len(large)) == (size, size + 1):
            layout[path] = "samples"
        elif len(small) == len(large):
            layout[path] = "fields"
            for i, (one, other) in enumerate(zip(small, large, strict=True)):
                _learn(one, other, size, f"{path}[{i}]", layout)
    else:
        layout[path] = "batch"


def split_batch(
    output: Any, size: int | None, layout: Layout
) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Split a delivered batch into ``size`` samples' {field path: digest} dicts, and the
    {field path: digest} of its batch-level fields.

    Args:
        output: what the loader yielded (a collated batch, or one sample when ``size`` is None,
            i.e. torch's auto-batching is off).
        size: how many samples the batch holds.
        layout: the collate_fn's :func:`learn_layout`; it settles the paths whose length
            equals ``size`` by chance.
    """
    if size is None:
        return [_sample_fields(output, "")], {}
    samples: list[dict[str, str]] = [{} for _ in range(size)]
    shared: dict[str, str] = {}
    _split(output, size, "", layout, samples, shared)
    return samples, shared


def _split(
    value: Any,
    size: int,
    path: str,
    layout: Layout,
    samples: list[dict[str, str]],
    shared: dict[str, str],
) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _split(item, size, _key_path(path, key), layout, samples, shared)
        return
    how = _how(value, size, layout.get(path))
    if how == "rows":
        for fields, row in zip(samples, value, strict=True):
            fields[path or WHOLE_SAMPLE] = digest(row)
    elif how == "samples":
        for fields, item in zip(samples, value, strict=True):
            fields.update(_sample_fields(item, path))
    elif how == "fields":
        for i, item in enumerate(value):
            _split(item, size, f"{path}[{i}]", layout, samples, shared)
    else:
        shared[path or WHOLE_BATCH] = digest(value)


def _how(value: Any, size: int, learnt: Split | None) -> Split:
    """How ``value`` splits: by its own shape, unless the layout says a length is by chance."""
    if isinstance(value, _ARRAYS):
        batch_major = value.ndim > 0 and len(value) == size
        return "rows" if batch_major and learnt != "batch" else "batch"
    if isinstance(value, list | tuple):
        return "samples" if len(value) == size and learnt != "fields" else "fields"
    return "batch"


def _sample_fields(value: Any, path: str) -> dict[str, str]:
    """One sample's {field path: digest}: mappings by key, lists and tuples by index."""
    if isinstance(value, Mapping):
        items = [(_key_path(path, key), item) for key, item in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    else:
        return {path or WHOLE_SAMPLE: digest(value)}
    return {name: hashed for p, item in items for name, hashed in _sample_fields(item, p).items()}


def _key_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


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


class StreamError(Exception):
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


def ordered_sampler(loader: ResumableDataLoader) -> OrderedBatchSampler:
    """The loader's own order and partition; verify cannot place samples of a user's sampler."""
    refs = loader._refs
    if refs is None:
        raise ConfigError(
            f"verify needs a map-style dataset: {type(loader.dataset).__name__} is an "
            "IterableDataset, whose order lives in its own __iter__"
        )
    if not isinstance(refs, OrderedBatchSampler):
        raise ConfigError(
            f"verify needs a dataset ordered by the loader itself, not by the sampler "
            f"{type(refs.source).__name__}: drop sampler= and batch_sampler= (use "
            "shuffle=/shard_shuffle=)"
        )
    return refs


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
        resumes_at = place.next_iteration(ordered_sampler(ranks[0]).partition)
        interruptions.append(Interruption(stop, len(stream.records), place, resumes_at))
        for loader in ranks:
            state = loader.state_dict()
            saved = Place(state["epoch"], state["position"])
            if saved.next_iteration(ordered_sampler(loader).partition) != resumes_at:
                raise StreamError(place, "(state_dict)", str(place), str(saved))
        place = resumes_at
    return interruptions
