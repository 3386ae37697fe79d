"""Notices a loader rebuilt from this loader's visible sampler, says so once, and keeps it on
this loader's order."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from resumable_loader.errors import ResumeWarning
from resumable_loader.loader.keyed_batches import WatchedBatchSampler
from resumable_loader.loader.refs import OrderedBatchSampler

_MESSAGE = (
    "the sampler torch made for a ResumableDataLoader ({name}) is being iterated by another "
    "loader, e.g. after accelerator.prepare(loader), accelerate's skip_first_batches(loader), "
    "or a DataLoader built from loader.batch_sampler: it yields the resumable order's sample "
    "ids, each loaded under its own key when read through loader.batch_sampler, but the "
    "ResumableDataLoader's state_dict() does not move with those batches. With "
    "accelerator.prepare, resume through save_state/load_state with "
    "Accelerator(dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True)), the "
    "same global batch size, and prepared_loader.set_epoch(epoch) before each epoch; or use "
    "resumable_loader.integrations.accelerate.prepare_loader, exact under any change. See "
    "docs/integrations.md"
)

_FLAG = "_foreign_iteration_warned"  # set on a watched sampler once a foreign loader iterated it
_ORDER = "_foreign_order"  # the watched sampler's ForeignOrder


class ForeignOrder:
    """What a foreign loader iterating the visible sampler gets: the loader's order.

    Each iteration yields one whole epoch of the global order (every rank's positions, from
    position 0), so a wrapper that shards batches over processes as Accelerate's
    ``BatchSamplerShard`` does (global batch k to process k mod W) hands each process the very
    ids our partition gives that rank. The epoch is the one ``set_epoch`` named last (Accelerate
    sets it before each iteration), else the one after the previous foreign iteration's, else
    the epoch the loader itself would run next: a fresh order every epoch, as torch's
    RandomSampler draws, yet a pure function of (seed, epoch).

    Args:
        refs: the loader's ref sampler, whose ``order`` is read at each iteration (the loader
            replaces it to follow a new dataset length or a loaded seed).
        place: the loader's ``(epoch, position, complete)`` (``Progress.place``), held instead
            of the loader so that a dropped loader is freed while the foreign one runs on.

    Attributes:
        seed, reseed_globals: the loader's, for the keys of the batches a foreign loader reads
            through the watched batch sampler (the loader updates ``seed`` when a state
            brings another).
    """

    def __init__(
        self,
        refs: OrderedBatchSampler,
        place: Callable[[], tuple[int, int, bool]],
        *,
        seed: int,
        reseed_globals: bool,
    ) -> None:
        self.refs = refs
        self._place = place
        self._next_epoch: int | None = None
        self.seed, self.reseed_globals = seed, reseed_globals

    def set_epoch(self, epoch: int) -> None:
        """The next foreign iteration runs ``epoch``."""
        self._next_epoch = epoch

    def next_epoch(self) -> tuple[int, Iterator[int]]:
        """The next foreign iteration's epoch and its sample ids, in order."""
        epoch = self._next_epoch
        if epoch is None:
            epoch, _, complete = self._place()
            epoch += complete
        self._next_epoch = epoch + 1
        return epoch, _ids(self.refs.order, epoch)

    def __repr__(self) -> str:
        return f"ForeignOrder(order={self.refs.order!r}, next_epoch={self._next_epoch})"


def _ids(order: object, epoch: int) -> Iterator[int]:
    for chunk in order.iter_ids(epoch):
        yield from chunk.tolist()


class _Watched:
    """What a watched sampler does instead of torch's (see :func:`watch_visible_sampler`):
    the methods of the watched classes below (not a base of them: a sampler's class is
    swapped in place, so its layout must stay torch's; methods, not functions named otherwise,
    so that a bound one pickles by its name)."""

    def __iter__(self) -> Iterator[int]:
        """Our order's ids (see :class:`ForeignOrder`)."""
        yield from self.foreign_order().next_epoch()[1]

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next foreign iteration."""
        self.__dict__[_ORDER].set_epoch(epoch)

    def foreign_order(self) -> ForeignOrder:
        """The loader never iterates its visible sampler (nor the batch sampler over it), so
        any iteration is a foreign loader's: warns once per sampler, and returns the order to
        iterate."""
        if not self.__dict__.get(_FLAG, False):
            self.__dict__[_FLAG] = True
            name = type(self).__bases__[0].__name__
            warnings.warn(_MESSAGE.format(name=name), ResumeWarning, stacklevel=3)
        return self.__dict__[_ORDER]


class WatchedRandomSampler(RandomSampler):
    """torch's RandomSampler, watched (see :func:`watch_visible_sampler`)."""

    __iter__, set_epoch = _Watched.__iter__, _Watched.set_epoch
    foreign_order = _Watched.foreign_order


class WatchedSequentialSampler(SequentialSampler):
    """torch's SequentialSampler, watched (see :func:`watch_visible_sampler`)."""

    __iter__, set_epoch = _Watched.__iter__, _Watched.set_epoch
    foreign_order = _Watched.foreign_order


_WATCHED = {RandomSampler: WatchedRandomSampler, SequentialSampler: WatchedSequentialSampler}


def watch_visible_sampler(
    sampler: object,
    batch_sampler: object,
    refs: OrderedBatchSampler,
    place: Callable[[], tuple[int, int, bool]],
    *,
    seed: int,
    reseed_globals: bool,
) -> ForeignOrder | None:
    """Make the sampler torch built for the loader warn (a ResumeWarning, once) when iterated,
    and yield the loader's order (see :class:`ForeignOrder`) instead of torch's; the batch
    sampler over it yields that order's batches as :class:`KeyedIds`, which load each sample
    under its key in the foreign loader too. Returns the order (None if nothing is watched).

    The loader iterates its own index sampler; the visible ``loader.sampler`` (and the
    ``batch_sampler`` over it) are only ever iterated by a framework that rebuilt the loader
    from them, whose batches are then not ours: with this, their sample ids at least are. The
    sampler keeps ``isinstance`` (a subclass), so frameworks that inspect it still see torch's
    sampler. Others (a user's sampler, Lightning's injected one) are left as they are.
    """
    watched = _WATCHED.get(type(sampler))
    if watched is None:
        return None
    sampler.__class__ = watched
    order = sampler.__dict__[_ORDER] = ForeignOrder(
        refs, place, seed=seed, reseed_globals=reseed_globals
    )
    if type(batch_sampler) is BatchSampler and batch_sampler.sampler is sampler:
        batch_sampler.__class__ = WatchedBatchSampler
    return order


def warn_if_replaced(sampler: object) -> None:
    """From ``state_dict()``: warn (ResumeWarning) if a foreign loader iterated the loader's
    visible sampler, since this cursor then says only what this object delivered, not what the
    training loop trained on, and resuming from it would repeat or skip samples."""
    if getattr(sampler, "__dict__", {}).get(_FLAG, False):
        warnings.warn(
            "state_dict() of a ResumableDataLoader that another loader replaced (its sampler was "
            "iterated from outside, e.g. after accelerator.prepare(loader)): the cursor is where "
            "this object stands, not where training is; resuming from it would not continue the "
            "stream. Iterate the ResumableDataLoader itself; see docs/integrations.md",
            ResumeWarning,
            stacklevel=3,
        )
