"""The order of an epoch: position -> sample id as a pure function, never iteration state.

``SequentialOrder`` serves ``shuffle=False``; ``ShuffledOrder`` a keyed Feistel permutation per
epoch (round keys from Philox with ``Purpose.PERMUTATION``), computed for any position directly,
so a resume at position p costs the same as at 0. Neither depends on workers, ranks or batches.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from resumable_loader import _core
from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError
from resumable_loader.order.philox import Purpose, check_epoch, check_seed

MAX_LENGTH = 2**63
# Names the permutation algorithm in the cursor's fingerprint, so a cursor saved under another
# one is refused instead of resuming on a different order. v2: rounds by domain width (32 up to
# 128 values, 8 above); v1 (never released) used 6 rounds everywhere.
PERMUTATION_ALGORITHM = "feistel-v2"
CHUNK_SIZE = 65536


@runtime_checkable
class Order(Protocol):
    """What the loader needs from an order: ids by position, per epoch, and its settings."""

    def __len__(self) -> int: ...

    def ids(self, epoch: int, start: int, stop: int) -> np.ndarray: ...

    def iter_ids(
        self, epoch: int, start: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[np.ndarray]: ...

    def settings(self) -> dict[str, int | str]: ...


class Permutation:
    """A keyed bijection of [0, n): the sample at each position of one epoch's shuffle.

    Args:
        n: length, 1 <= n <= 2**63.
        seed: the Philox key, 0 <= seed < 2**64.
        epoch: 0 <= epoch < 2**32.
        purpose: which Philox stream supplies the round keys (shard orders use their own).
    """

    def __init__(
        self, n: int, *, seed: int, epoch: int, purpose: Purpose = Purpose.PERMUTATION
    ) -> None:
        self.n = check_int("permutation length", n, low=1, high=MAX_LENGTH + 1)
        self.seed, self.epoch = check_seed(seed), check_epoch(epoch)
        self.purpose = Purpose(purpose)
        self._core = _core.Permutation(self.n, self.seed, self.epoch, int(self.purpose))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, position: int) -> int:
        try:
            return self._core(position)  # plain ints in range: one C++ call
        except TypeError:
            pass
        return self._core(self._position(position))

    def inverse(self, sample_id: int) -> int:
        """The position holding ``sample_id``."""
        try:
            return self._core.inverse(sample_id)
        except TypeError:
            pass
        return self._core.inverse(self._position(sample_id))

    def fill(self, start: int, stop: int) -> np.ndarray:
        """Ids (int64) at positions [start, stop)."""
        if not 0 <= start <= stop <= self.n:
            raise ConfigError(f"positions [{start}, {stop}) outside [0, {self.n}]")
        out = np.empty(stop - start, dtype=np.int64)
        self._core.fill(start, out)
        return out

    def _position(self, position: int) -> int:
        index = operator.index(position)  # TypeError for non-integers, as for lists
        if isinstance(position, (bool, np.bool_)) or not 0 <= index < self.n:
            raise IndexError(f"position {position!r} out of range [0, {self.n})")
        return index

    def __repr__(self) -> str:
        return f"Permutation(n={self.n}, seed={self.seed}, epoch={self.epoch})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles (and deep-copies) as its settings; the native core is made again."""
        settings = functools.partial(
            Permutation, seed=self.seed, epoch=self.epoch, purpose=self.purpose
        )
        return settings, (self.n,)


class _PositionalOrder:
    """Shared part of orders whose ids are computed per position range."""

    def __init__(self, length: int) -> None:
        self.length = check_int("dataset length", length)

    def __len__(self) -> int:
        return self.length

    def ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Sample ids (int64) at positions [start, stop) of ``epoch``."""
        check_epoch(epoch)
        if not 0 <= start <= stop <= self.length:
            raise ConfigError(f"positions [{start}, {stop}) outside [0, {self.length}]")
        return self._ids(epoch, start, stop)

    def iter_ids(
        self, epoch: int, start: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[np.ndarray]:
        """Ids from position ``start`` to the epoch's end, ``chunk_size`` at a time."""
        for first in range(start, self.length, chunk_size):
            yield self.ids(epoch, first, min(first + chunk_size, self.length))

    def _ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError


class SequentialOrder(_PositionalOrder):
    """``shuffle=False``: position p holds sample p, every epoch."""

    def _ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        return np.arange(start, stop, dtype=np.int64)

    def settings(self) -> dict[str, int | str]:
        return {"order": "sequential", "length": self.length}

    def __repr__(self) -> str:
        return f"SequentialOrder(length={self.length})"


class ShuffledOrder(_PositionalOrder):
    """``shuffle=True``: position p of epoch e holds ``Permutation(n, seed, e)[p]``."""

    def __init__(self, length: int, *, seed: int) -> None:
        super().__init__(length)
        self.seed = check_seed(seed)
        self._epoch_permutation: Permutation | None = None

    def permutation(self, epoch: int) -> Permutation:
        """The epoch's permutation (its round keys are derived once and kept)."""
        cached = self._epoch_permutation
        if cached is None or cached.epoch != epoch:
            cached = self._epoch_permutation = Permutation(self.length, seed=self.seed, epoch=epoch)
        return cached

    def _ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        if start == stop:
            return np.empty(0, dtype=np.int64)
        return self.permutation(epoch).fill(start, stop)

    def settings(self) -> dict[str, int | str]:
        return {"order": "shuffled", "length": self.length, "algorithm": PERMUTATION_ALGORITHM}

    def __repr__(self) -> str:
        return f"ShuffledOrder(length={self.length}, seed={self.seed})"
