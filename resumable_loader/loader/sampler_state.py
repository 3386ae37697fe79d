"""What decides a user sampler's next epoch, captured for the cursor and put back on resume.

torch's samplers have no ``state_dict()``, yet what decides an epoch of theirs is small:

- ``SequentialSampler``, or a list, tuple or range of indices (or of batches): nothing.
- ``RandomSampler``, ``SubsetRandomSampler``, ``WeightedRandomSampler`` with ``generator=``: that
  generator's state at the epoch's start (the whole epoch is drawn from it).
- the same without a generator: one seed per epoch, drawn from torch's global RNG when the epoch
  starts, as ``RandomSampler`` itself draws it; the epoch is then drawn from a generator seeded
  with it (for ``RandomSampler`` exactly torch's own stream).
- ``DistributedSampler``: its ``epoch`` (its seed, shuffle and split are settings, fingerprinted).
- any other sampler: its own ``state_dict()`` if it has one, else nothing it can be resumed from
  mid-epoch.

A :class:`Capture` holds that, per sampler: ``begin()`` starts an epoch (and returns what to
iterate for it), ``saved()`` is the value for the cursor's ``sampler_state``, ``restore()`` puts
a saved value back. Its ``saved()`` before any epoch is a placeholder of the same structure, so a
fresh loader's ``state_dict()`` (DCP's load template) carries every key a loaded state has.
"""

from __future__ import annotations

import base64
import warnings
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from resumable_loader.errors import ConfigError, ResumeWarning, StateDictError

# torch's samplers whose index stream is the same on every rank and for every batch size: the
# loader splits it across ranks itself, as it splits its own order.
GLOBAL_SAMPLERS = (SequentialSampler, RandomSampler, SubsetRandomSampler, WeightedRandomSampler)
_RANDOM_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)
# Samplers given as a plain sequence of indices (or of batches, as batch_sampler=), as torch
# takes them: the same order every epoch, so resumable anywhere, like SequentialSampler.
FIXED_SEQUENCES = (list, tuple, range)
NOT_DRAWN = -1  # the placeholder seed: the epoch has not started, its seed is drawn then


def global_sampler(source: Any, *, batches: bool) -> Any:
    """The torch sampler whose stream ``source`` yields, if it is one of GLOBAL_SAMPLERS (given
    as ``sampler=``, or under a torch ``BatchSampler`` as ``batch_sampler=``: ``batches``),
    else None. A ``BatchSampler`` given as ``sampler=`` yields lists of indices, each one
    item (one ``dataset[list]``, as torch does), so it is not looked into."""
    inner = source.sampler if batches and type(source) is BatchSampler else source
    return inner if type(inner) in GLOBAL_SAMPLERS else None


def describe(sampler: Any) -> str:
    """The sampler's type and the settings that decide its stream, for the fingerprint."""
    name = type(sampler).__qualname__
    if type(sampler) in FIXED_SEQUENCES:  # its contents are its order
        return f"{name}(len={len(sampler)}, crc={zlib.crc32(repr(sampler).encode()):08x})"
    if type(sampler) is DistributedSampler:
        return (
            f"{name}(num_replicas={sampler.num_replicas}, shuffle={int(sampler.shuffle)}, "
            f"seed={sampler.seed}, drop_last={int(sampler.drop_last)})"
        )
    if type(sampler) not in _RANDOM_SAMPLERS:
        return name
    settings = [f"generator={'given' if sampler.generator is not None else 'global'}"]
    if type(sampler) is RandomSampler:
        settings.append(f"replacement={int(sampler.replacement)}")
    elif type(sampler) is SubsetRandomSampler:
        settings.append(f"indices={_crc(sampler.indices)}")
    else:
        settings += [f"weights={_crc(sampler.weights)}", f"replacement={int(sampler.replacement)}"]
    return f"{name}({', '.join(settings)})"


def _crc(values: Any) -> str:
    array = np.asarray(values.tolist() if isinstance(values, torch.Tensor) else list(values))
    return f"{zlib.crc32(array.astype(np.float64).tobytes()):08x}"


class Capture:
    """A sampler whose epochs are decided by nothing but its settings (``SequentialSampler``).

    Attributes:
        exact: whether a resume mid-epoch reproduces the epoch (False: the loader refuses it).
        rank_consistent: whether the stream is the same on every rank without the user's help.
    """

    exact = True
    rank_consistent = True

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        # Once: hashing a SubsetRandomSampler's indices on every state_dict() would cost O(n).
        self.description = describe(sampler)
        self._warned = False  # warn_unresumable() said it

    def begin(self) -> Iterable[Any]:
        """Start an epoch: what to iterate for it."""
        return self.sampler

    def snapshot(self) -> Any:
        """Everything ``begin()`` changes, for :meth:`rollback`."""
        return dict(vars(self))

    def rollback(self, snapshot: Any) -> None:
        """Undo the ``begin()`` since ``snapshot()``: its iteration failed before delivering
        anything, so the next ``begin()`` must start the same epoch (a loaded seed, the
        generator's state) rather than the one after it."""
        vars(self).update(snapshot)

    def saved(self, *, in_epoch: bool) -> Any:
        """The ``sampler_state`` of a cursor (None: none). ``in_epoch``: the epoch begun last
        is still in progress, so its start is what a resume needs; otherwise what the next
        epoch starts from."""
        return None

    def restore(self, state: Any) -> None:
        """Put back a ``saved()`` value (its epoch's start, or the next epoch's)."""

    def check(self, state: Any, *, position: int) -> None:
        """Refuse a cursor's ``sampler_state`` that cannot resume at ``position`` exactly
        (StateDictError naming the sampler and the fix), changing nothing."""
        name = self.description
        if position > 0 and not self.exact:
            raise StateDictError(
                f"cannot resume mid-epoch (position {position}) with sampler {name}: it has no "
                "state_dict()/load_state_dict(), so its order cannot be replayed; give it those "
                "methods, use one of torch's samplers, or let ResumableDataLoader order the data "
                "(shuffle=...)"
            )
        if state is None and position > 0 and self.saved(in_epoch=False) is not None:
            raise StateDictError(
                f"field 'sampler_state' is missing, yet sampler {name} needs it to resume at "
                f"position {position} (it decides the epoch's order): the state lost it on the "
                "way (e.g. a checkpoint template without it); pass the whole state_dict()"
            )

    def warn_unresumable(self, state: Any, *, position: int) -> None:
        """Warn (once) when a cursor holding ``state`` at ``position`` is one :meth:`check`
        will refuse: the run learns at its first checkpoint, not when it resumes from it."""
        if self._warned:
            return
        try:
            self.check(state, position=position)
        except StateDictError as error:
            self._warned = True
            warnings.warn(
                f"state_dict() returned a state that load_state_dict() will refuse: {error}",
                ResumeWarning,
                stacklevel=4,  # this, the loader's cursor, its state_dict(), the caller
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


class _Stateless(Capture):
    """A custom sampler without state_dict(): only an epoch's start can be resumed."""

    exact = False


class _UserState(Capture):
    """A sampler with ``state_dict()``/``load_state_dict()``: its own state, as it gives it."""

    def __init__(self, sampler: Any) -> None:
        super().__init__(sampler)
        self._start: Any = None

    def begin(self) -> Iterable[Any]:
        self._start = None
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        # The start is taken when the sampler's iteration really starts, i.e. at the first
        # batch, not at iter(loader): Lightning (and user loops) call set_epoch in between.
        self._start = self._current()
        yield from self.sampler

    def saved(self, *, in_epoch: bool) -> Any:
        return self._start if in_epoch and self._start is not None else self._current()

    def restore(self, state: Any) -> None:
        self._put(state)
        self._start = None

    def _current(self) -> Any:
        return self.sampler.state_dict()

    def _put(self, state: Any) -> None:
        self.sampler.load_state_dict(state)


class _GivenGenerator(_UserState):
    """A torch sampler with ``generator=``: the generator's state, as base64 text (a plain
    string every transport keeps, ~6.7 KB for torch's CPU generator)."""

    def snapshot(self) -> Any:
        # The generator too: a loader splitting the sampler's stream draws the epoch at begin().
        return super().snapshot(), self.sampler.generator.get_state()

    def rollback(self, snapshot: Any) -> None:
        fields, generator = snapshot
        super().rollback(fields)
        self.sampler.generator.set_state(generator)

    def _current(self) -> Any:
        state = self.sampler.generator.get_state().numpy().tobytes()
        return {"generator": base64.b64encode(state).decode("ascii")}

    def _put(self, state: Any) -> None:
        text = _entry(state, "generator", str)
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
            self.sampler.generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        except (ValueError, RuntimeError) as error:
            raise StateDictError(
                f"field 'sampler_state.generator' is not a state of the generator of "
                f"{self.description} ({error}); pass an unmodified state_dict()"
            ) from None


class _DrawnSeed(Capture):
    """A torch random sampler without a generator: the seed drawn at its epoch's start."""

    rank_consistent = False  # each rank draws from its own global RNG

    def __init__(self, sampler: Any) -> None:
        super().__init__(sampler)
        self._seed: int | None = None  # the epoch in progress's
        self._loaded: int | None = None  # a restored one, for the next begin()

    def begin(self) -> Iterable[Any]:
        seed, self._loaded = self._loaded, None
        if seed is None:  # as RandomSampler draws it, from torch's global RNG
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self._seed = seed
        return _with_generator(self.sampler, torch.Generator().manual_seed(seed))

    def saved(self, *, in_epoch: bool) -> Any:
        seed = self._seed if in_epoch and self._seed is not None else self._loaded
        return {"seed": NOT_DRAWN if seed is None else seed}

    def restore(self, state: Any) -> None:
        seed = _entry(state, "seed", int)
        if not NOT_DRAWN <= seed < 2**63:
            raise StateDictError(
                f"field 'sampler_state.seed': saved {seed}, outside [-1, 2**63); pass an "
                "unmodified state_dict()"
            )
        self._loaded, self._seed = (None if seed == NOT_DRAWN else seed), None


def _with_generator(sampler: Any, generator: torch.Generator) -> Any:
    """The same torch sampler, drawing from ``generator``."""
    if type(sampler) is RandomSampler:
        return RandomSampler(
            sampler.data_source,
            replacement=sampler.replacement,
            num_samples=sampler.num_samples,
            generator=generator,
        )
    if type(sampler) is SubsetRandomSampler:
        return SubsetRandomSampler(sampler.indices, generator=generator)
    return WeightedRandomSampler(
        sampler.weights, sampler.num_samples, sampler.replacement, generator=generator
    )


class _DistributedEpoch(_UserState):
    """A ``DistributedSampler``: its epoch (set by ``set_epoch``) at the epoch's start."""

    def _current(self) -> Any:
        return {"epoch": self.sampler.epoch}

    def _put(self, state: Any) -> None:
        self.sampler.set_epoch(_entry(state, "epoch", int))


def capture(sampler: Any) -> Capture:
    """The capture of what decides ``sampler``'s epochs."""
    kind = type(sampler)
    if kind in _RANDOM_SAMPLERS:
        return _GivenGenerator(sampler) if sampler.generator is not None else _DrawnSeed(sampler)
    if kind is DistributedSampler:
        return _DistributedEpoch(sampler)
    if kind is SequentialSampler or kind in FIXED_SEQUENCES:
        return Capture(sampler)
    if callable(getattr(sampler, "state_dict", None)) and callable(
        getattr(sampler, "load_state_dict", None)
    ):
        return _UserState(sampler)
    return _Stateless(sampler)


def _entry(state: Any, name: str, kind: type) -> Any:
    value = state.get(name) if isinstance(state, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise StateDictError(
            f"field 'sampler_state.{name}': saved {state!r:.80}, expected a dict with a "
            f"{kind.__name__} '{name}'; pass an unmodified state_dict()"
        )
    return value


class DrawnEpoch:
    """One epoch's drawn index stream, as an order (ids by position) that never changes."""

    def __init__(self, epoch: int, ids: np.ndarray) -> None:
        self.epoch = epoch
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        if epoch != self.epoch:
            raise ConfigError(f"epoch {epoch} asked of the stream drawn for epoch {self.epoch}")
        return self._ids[start:stop]

    def iter_ids(self, epoch: int, start: int = 0, chunk_size: int = 65536) -> Iterator[np.ndarray]:
        for first in range(start, len(self._ids), chunk_size):
            yield self.ids(epoch, first, first + chunk_size)

    def __repr__(self) -> str:
        return f"DrawnEpoch(epoch={self.epoch}, length={len(self)})"


class SamplerStream:
    """A torch sampler's index stream as an epoch order: position -> index, one epoch at a time.

    ``begin(epoch)`` draws the epoch's whole stream (index draws only, as the sampler would,
    nothing is loaded); ``drawn()`` then reads any position of it, so the loader's partition
    splits it across ranks and batches exactly as it splits its own order.
    """

    def __init__(self, sampler_capture: Capture) -> None:
        self.capture = sampler_capture
        self._drawn: DrawnEpoch | None = None

    def __len__(self) -> int:
        return len(self.capture.sampler)

    def begin(self, epoch: int) -> None:
        """Draw ``epoch``'s stream (the sampler's state must be that epoch's start)."""
        # To its end, as torch's iterator would: the sampler's last draws (RandomSampler's
        # trailing ``randperm(n)[:0]``) advance its generator too.
        ids = np.fromiter(iter(self.capture.begin()), dtype=np.int64)
        if len(ids) != len(self):
            raise ConfigError(
                f"sampler {self.capture.description} yielded {len(ids)} indices but its len() "
                f"is {len(self)}; the loader splits an epoch by its len()"
            )
        self._drawn = DrawnEpoch(epoch, ids)

    def drawn(self) -> DrawnEpoch:
        """The stream of the epoch begun last."""
        if self._drawn is None:
            raise ConfigError("no epoch of the sampler's stream was drawn yet (begin() first)")
        return self._drawn

    def ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        return self.drawn().ids(epoch, start, stop)

    def iter_ids(self, epoch: int, start: int = 0, chunk_size: int = 65536) -> Iterator[np.ndarray]:
        return self.drawn().iter_ids(epoch, start, chunk_size)

    def settings(self) -> dict[str, int | str]:
        return {"order": "sampler", "sampler": self.capture.description, "length": len(self)}

    def __repr__(self) -> str:
        return f"SamplerStream({self.capture.description}, length={len(self)})"
