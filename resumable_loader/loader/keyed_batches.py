"""Batches of the visible batch sampler that load each sample under its own key, whoever loads.

A framework that rebuilds a loader from ``loader.batch_sampler`` (``accelerator.prepare``)
runs torch's fetcher, ``[dataset[i] for i in batch]``, not our :class:`KeyedFetch`. The batches
the watched batch sampler yields are :class:`KeyedIds`: lists of sample ids that also know
their (seed, epoch, first position). Iterating one installs each sample's key (and reseeds the
global RNGs) just before handing out its id, which is just before torch's fetcher reads that
sample, so augmentations replay per sample in any process; in the main process the global RNG
states are put back when the batch has been read, as our own loader does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import BatchSampler, get_worker_info

from resumable_loader.order.philox import Purpose
from resumable_loader.rngs.process import this_process
from resumable_loader.rngs.sample import clear_key, install_key


class KeyedIds(list):
    """Sample ids at consecutive positions of one epoch; iterating installs each one's key.

    Args:
        ids: the sample ids, in order.
        seed, epoch, start: the key of the first id; the k-th id's position is ``start + k``.
        reseed_globals: reseed ``random``, numpy's and torch's global RNGs per sample.
    """

    def __init__(
        self, ids: list[int], *, seed: int, epoch: int, start: int, reseed_globals: bool
    ) -> None:
        super().__init__(ids)
        self.seed, self.epoch, self.start = seed, epoch, start
        self.reseed_globals = reseed_globals

    def __iter__(self) -> Iterator[int]:
        main = get_worker_info() is None
        rngs = this_process() if main and self.reseed_globals else None
        saved = rngs.save() if rngs is not None else None
        try:
            for offset, sample_id in enumerate(list.__iter__(self)):
                install_key(
                    self.seed,
                    self.epoch,
                    self.start + offset,
                    Purpose.SAMPLE,
                    reseed_globals=self.reseed_globals,
                )
                yield sample_id
        finally:
            clear_key()
            if rngs is not None:
                rngs.restore(saved)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled to a worker as ids and key (the plain-list pickling would iterate)."""
        arguments = (self.seed, self.epoch, self.start, self.reseed_globals)
        return (_rebuild, (list(list.__iter__(self)), *arguments))

    def __repr__(self) -> str:
        return (
            f"KeyedIds({list.__repr__(self)}, seed={self.seed}, epoch={self.epoch}, "
            f"start={self.start})"
        )


def _rebuild(ids: list[int], seed: int, epoch: int, start: int, reseed: bool) -> KeyedIds:
    return KeyedIds(ids, seed=seed, epoch=epoch, start=start, reseed_globals=reseed)


class WatchedBatchSampler(BatchSampler):
    """torch's BatchSampler over a watched sampler: its batches are :class:`KeyedIds` of the
    loader's order (see ``visible_sampler.ForeignOrder``), cut as torch's would be."""

    def __iter__(self) -> Iterator[list[int]]:
        if not hasattr(self.sampler, "foreign_order"):  # rebuilt around another sampler
            yield from super().__iter__()
            return
        order = self.sampler.foreign_order()  # warns once: a foreign loader is iterating
        epoch, ids = order.next_epoch()
        seed, reseed = order.seed, order.reseed_globals
        batch: list[int] = []
        start = 0
        for sample_id in ids:
            batch.append(sample_id)
            if len(batch) == self.batch_size:
                yield KeyedIds(batch, seed=seed, epoch=epoch, start=start, reseed_globals=reseed)
                start, batch = start + len(batch), []
        if batch and not self.drop_last:
            yield KeyedIds(batch, seed=seed, epoch=epoch, start=start, reseed_globals=reseed)


def unwrap_rebuilt(
    sampler: Any, batch_size: int | None, drop_last: bool, batch_sampler: Any
) -> tuple[Any, int | None, bool, Any]:
    """Torch's arguments again for a loader rebuilt around a :class:`WatchedBatchSampler`.

    A framework that rebuilds a loader from ours re-instantiates a batch sampler that is not
    torch's own class around its own sampler and passes it as ``batch_sampler`` with
    ``batch_size=1`` (Lightning's DDP: ``WatchedBatchSampler(DistributedSampler(...))``).
    That is torch's ``BatchSampler`` over that sampler, so the loader is given it as such:
    ``sampler``, ``batch_size`` and ``drop_last``, and no batch_sampler (which lets the loader
    recognise Lightning's injected sampler and keep its own order). Other arguments pass as given.
    """
    if type(batch_sampler) is WatchedBatchSampler and sampler is None:
        return batch_sampler.sampler, batch_sampler.batch_size, batch_sampler.drop_last, None
    return sampler, batch_size, drop_last, batch_sampler
