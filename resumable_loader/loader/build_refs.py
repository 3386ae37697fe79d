"""Which order and which batch sampler of refs a loader's arguments call for.

A loader without a sampler follows our own order (shuffled, sequential, shard-local, or the one
a dataset supplies, such as a Mixture's), split by a :class:`Partition`. One of torch's
samplers is captured and its stream split the same way; any other sampler is iterated by each
rank itself. The loader builds its refs here once, and again only when its order must follow a
new dataset length or a loaded seed (:func:`make_order`).
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset

from resumable_loader.errors import ConfigError
from resumable_loader.loader.refs import OrderedBatchSampler, StreamBatchSampler, UserBatchSampler
from resumable_loader.loader.sampler_state import SamplerStream, capture, global_sampler
from resumable_loader.order.partition import Partition
from resumable_loader.order.permutation import Order, SequentialOrder, ShuffledOrder


@runtime_checkable
class OrderedDataset(Protocol):
    """A dataset that supplies the order the loader iterates (a Mixture), keyed by the seed."""

    def loader_order(self, *, seed: int) -> Order: ...


@runtime_checkable
class WrappingDataset(Protocol):
    """A dataset that reorganises the order the loader makes for the dataset it wraps (a
    ``Packed`` one iterates packs of it), so ``shuffle`` and ``shard_shuffle`` keep their
    meaning for the wrapped dataset."""

    def wrapped_order(self, *, seed: int, shuffle: bool, shard_shuffle: Any) -> Order: ...


@runtime_checkable
class ResumableOrder(Protocol):
    """An order with resumable state of its own (a Mixture's), kept in the cursor's
    ``order_state`` and checked on load; it can also say which sample a position holds and
    how far the run is."""

    def resume_state(self, epoch: int, position: int) -> Any: ...

    def check_resume(self, saved: Any, epoch: int, position: int, *, log: bool = True) -> None: ...

    def resumed_settings(self, saved: Any) -> dict[str, int | str]: ...

    def provenance(self, epoch: int, position: int) -> dict[str, Any]: ...

    def progress(self, epoch: int, position: int) -> dict[str, Any]: ...


def resumable_order(order: Order | None) -> ResumableOrder | None:
    """``order`` if it keeps resumable state of its own (a Mixture's), else None.

    Decided once per type (its methods): a runtime Protocol check costs about 5 us, which
    every resume and ``state_dict()`` would pay.
    """
    return order if order is not None and _resumable_type(type(order)) else None


@functools.cache
def _resumable_type(kind: type) -> bool:
    return issubclass(kind, ResumableOrder)


def make_order(dataset: Dataset, shuffle: bool, seed: int, shard_shuffle: Any) -> Order:
    """The loader's own order of ``dataset`` under ``seed``."""
    if isinstance(dataset, WrappingDataset):
        return dataset.wrapped_order(seed=seed, shuffle=shuffle, shard_shuffle=shard_shuffle)
    if isinstance(dataset, OrderedDataset):
        if shard_shuffle is not None:
            raise ConfigError(
                f"shard_shuffle does not apply to {type(dataset).__name__}, which supplies its "
                "own order; set a source's order on it (MixtureSource(..., shard_shuffle=...))"
            )
        return dataset.loader_order(seed=seed)
    length = len(dataset)
    if shard_shuffle is not None:
        if not callable(getattr(shard_shuffle, "order_for", None)):
            raise ConfigError(
                f"shard_shuffle takes a ShardShuffle, e.g. ShardShuffle(window=4, "
                f"buffer_size=1024), got {type(shard_shuffle).__name__} {shard_shuffle!r:.60}"
            )
        if not shuffle:
            raise ConfigError("shard_shuffle needs shuffle=True")
        return shard_shuffle.order_for(dataset, seed=seed)
    return ShuffledOrder(length, seed=seed) if shuffle else SequentialOrder(length)


def make_ref_sampler(
    dataset: Dataset,
    *,
    shuffle: bool | None,
    sampler: Any,
    batch_sampler: Any,
    shard_shuffle: Any,
    seed: int,
    batch_size: int | None,
    drop_last: bool,
    batched: bool,
    rank: int,
    world_size: int,
    trim: bool = False,
) -> OrderedBatchSampler | UserBatchSampler:
    """Our order; a torch sampler's stream split as our order is (``StreamBatchSampler``);
    or any other sampler, iterated by each rank itself (``UserBatchSampler``).

    ``sampler``/``batch_sampler`` are the user's (None: none given); ``batched`` says whether
    torch auto-batches (it made a batch sampler), ``batch_size`` is torch's (None without).
    ``trim`` cuts our order's last global batch to a multiple of the world size
    (:class:`Partition`), as an injected ``DistributedSampler(drop_last=True)`` asks.
    """
    if sampler is None and batch_sampler is None:
        order = make_order(dataset, bool(shuffle), seed, shard_shuffle)
        partition = Partition(
            len(order),
            batch_size or 1,
            world_size=world_size,
            rank=rank,
            drop_last=drop_last,
            trim=trim,
        )
        return OrderedBatchSampler(order, partition, batched=batched)
    if shard_shuffle is not None:
        raise ConfigError("shard_shuffle is mutually exclusive with sampler and batch_sampler")
    if isinstance(dataset, OrderedDataset | WrappingDataset):
        given = "batch_sampler=" if batch_sampler is not None else "sampler="
        raise ConfigError(
            f"{given} does not apply to a {type(dataset).__name__}, which supplies its own "
            "order (a Mixture's weights and phases, a Packed's packs): a sampler's indices "
            "would be taken as its ids, and its weights or packs silently lost; drop "
            f"{given} and set the order with shuffle= and seed= (a Mixture's sources: "
            "MixtureSource(..., shuffle=, shard_shuffle=))"
        )
    source = batch_sampler if batch_sampler is not None else sampler
    stream = global_sampler(source, batches=batch_sampler is not None)
    if stream is None:  # the sampler may split the data across ranks itself
        return UserBatchSampler(
            source,
            batches=batch_sampler is not None,
            batch_size=batch_size if batch_sampler is None else None,
            drop_last=drop_last,
            batched=batched,
            world_size=world_size,
            rank=rank,
        )
    stream_capture = capture(stream)
    if world_size > 1 and not stream_capture.rank_consistent:
        raise ConfigError(
            f"sampler {stream_capture.description} has no generator, so on world_size="
            f"{world_size} each rank would draw its epochs from its own global RNG and "
            "the ranks could split different orders; pass generator=torch.Generator()"
            ".manual_seed(s) with the same s on every rank, or drop the sampler and use "
            "shuffle=True (the loader's own order)"
        )
    size, drop = (
        (source.batch_size, source.drop_last)
        if batch_sampler is not None
        else (batch_size or 1, drop_last)
    )
    partition = Partition(len(stream), size, world_size=world_size, rank=rank, drop_last=drop)
    return StreamBatchSampler(SamplerStream(stream_capture), partition, batched=batched)


def epoch_complete(refs: Any, position: int) -> bool:
    """Whether an iteration of our order begun at ``position`` has no batch left (a user's
    sampler's epoch length is its own, so never)."""
    return isinstance(refs, OrderedBatchSampler) and refs.partition.num_batches(position) == 0
