"""Notices a loader rebuilt from this loader's visible sampler, and says so once."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

from torch.utils.data import RandomSampler, SequentialSampler

from resumable_loader.errors import ResumeWarning

_MESSAGE = (
    "the sampler torch made for a ResumableDataLoader ({name}) is being iterated by another "
    "loader, e.g. after accelerator.prepare(loader), accelerate's skip_first_batches(loader), "
    "or a DataLoader built from loader.batch_sampler: its batches follow torch's order and "
    "randomness, not the resumable stream, and the ResumableDataLoader's state_dict() does not "
    "move with them. Iterate the ResumableDataLoader itself (with Accelerate: "
    "resumable_loader.integrations.accelerate.prepare_loader); see docs/integrations.md"
)


_FLAG = "_foreign_iteration_warned"  # set on a watched sampler once a foreign loader iterated it


def _iterate_watched(sampler: RandomSampler | SequentialSampler) -> Iterator[int]:
    """The watched samplers' ``__iter__``: the loader never iterates its visible sampler, so
    any iteration is a foreign loader's. Warns once per sampler, then iterates as torch's."""
    torch_type = type(sampler).__bases__[0]
    if not sampler.__dict__.get(_FLAG, False):
        sampler.__dict__[_FLAG] = True
        warnings.warn(_MESSAGE.format(name=torch_type.__name__), ResumeWarning, stacklevel=2)
    yield from torch_type.__iter__(sampler)


class WatchedRandomSampler(RandomSampler):
    """torch's RandomSampler, watched (see :func:`watch_visible_sampler`)."""

    __iter__ = _iterate_watched


class WatchedSequentialSampler(SequentialSampler):
    """torch's SequentialSampler, watched (see :func:`watch_visible_sampler`)."""

    __iter__ = _iterate_watched


_WATCHED = {RandomSampler: WatchedRandomSampler, SequentialSampler: WatchedSequentialSampler}


def watch_visible_sampler(sampler: object) -> None:
    """Make the sampler torch built for the loader warn (a ResumeWarning, once) when iterated.

    The loader iterates its own index sampler; the visible ``loader.sampler`` (and the
    ``batch_sampler`` over it) are only ever iterated by a framework that rebuilt the loader
    from them, whose batches are then not ours. The sampler keeps its type's behaviour and
    ``isinstance`` (a subclass), so frameworks that inspect it still see torch's sampler.
    Others (a user's sampler, Lightning's injected one) are left as they are.
    """
    watched = _WATCHED.get(type(sampler))
    if watched is not None:
        sampler.__class__ = watched


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
