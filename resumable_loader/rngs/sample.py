"""Per-sample randomness: each sample's RNG is keyed by (seed, epoch, position), never by a worker.

Before a sample is loaded, the process that loads it (a worker, or the main process with
num_workers=0) installs that sample's key. By default this also reseeds Python's ``random``,
numpy's global RNG and torch's CPU default generator from the key (each its own stream; see
:mod:`resumable_loader.rngs.process`; with ``reseed_globals="auto"`` only those the loader's
samples were seen to change, :mod:`resumable_loader.rngs.idle`), so unmodified augmentations
that call ``random``, ``np.random`` or ``torch.rand`` draw the same values however the work is
split across workers, ranks and batches, and however often the run is resumed. ``collate_fn``
runs under the batch's key (derived from the position of the batch's first sample).

User code that prefers explicit generators asks for the current key's own streams with
:func:`sample_numpy_generator` and :func:`sample_torch_generator`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from resumable_loader.errors import ResumableLoaderError
from resumable_loader.order.philox import Purpose, derive_words
from resumable_loader.rngs import process
from resumable_loader.rngs.process import ALL, reseed_sample

_MASK64 = (1 << 64) - 1

# The key installed in this process: seed, epoch, position and purpose (None outside a fetch),
# kept apart so that re-keying a fetch to its next sample stores one int and builds no tuple;
# SampleKey is built only when asked for.
_seed = _epoch = _position = 0
_purpose: Purpose | None = None
_reseeding = 0  # the global RNGs the current fetch reseeds with each key (a set, as ALL is)
_torch_generator: torch.Generator | None = None
# The key positions of the samples of the batched read in progress (of the installed key's seed
# and epoch), or None: set by loader/keyed_fetch.py around a dataset's ``__getitems__``.
batch_positions: Sequence[int] | None = None
_SAMPLE = Purpose.SAMPLE  # looked up once: an enum member's lookup costs ~0.06 us a sample


@dataclasses.dataclass(frozen=True)
class SampleKey:
    """The key of the sample (or, inside collate_fn, the batch) being loaded in this process.

    Attributes:
        seed: the loader's seed.
        epoch: the epoch the sample belongs to.
        position: its position in the epoch's global stream (for a batch: its first sample's).
        purpose: ``Purpose.SAMPLE`` for a sample, ``Purpose.BATCH`` for a batch's collate_fn.
        words: the four 32-bit Philox4x32-10 output words derived from the above.
    """

    seed: int
    epoch: int
    position: int
    purpose: Purpose
    words: tuple[int, int, int, int]

    @property
    def int128(self) -> int:
        """The key's 128 bits as one int (word 0 lowest)."""
        w0, w1, w2, w3 = self.words
        return w0 | w1 << 32 | w2 << 64 | w3 << 96

    def numpy_generator(self) -> np.random.Generator:
        """A fresh numpy Generator (Philox) whose stream is a pure function of this key."""
        value = self.int128
        return np.random.Generator(np.random.Philox(key=[value & _MASK64, value >> 64]))

    def torch_generator(self) -> torch.Generator:
        """This process's reusable CPU torch.Generator, seeded from this key."""
        global _torch_generator
        if _torch_generator is None:
            _torch_generator = torch.Generator()
        _torch_generator.manual_seed(self.int128 & _MASK64)
        return _torch_generator


def install_key(
    seed: int, epoch: int, position: int, purpose: Purpose, *, reseed_globals: bool | int
) -> None:
    """Make (seed, epoch, position, purpose) the current key; optionally reseed the globals:
    ``reseed_globals`` True (all three), False (none) or the set of them to reseed (a mask,
    bit g for generator g of :mod:`resumable_loader.rngs.process`).

    Without the reseed, the key's words are derived only if user code asks for them.
    """
    global _seed, _epoch, _position, _purpose, _reseeding
    generators = ALL if reseed_globals is True else reseed_globals
    _seed, _epoch, _position, _purpose, _reseeding = seed, epoch, position, purpose, generators
    if generators:
        reseed_sample(seed, epoch, position, purpose, generators)


def enter_samples(seed: int, epoch: int, *, reseed_globals: bool | int) -> None:
    """Begin loading samples of (seed, epoch) one :func:`install_sample_key` each, which then
    reseeds the globals as ``reseed_globals`` says (as :func:`install_key` takes it): a fetch
    that reads its samples one at a time keys each with one cheap call."""
    global _seed, _epoch, _purpose, _reseeding
    _seed, _epoch, _purpose = seed, epoch, _SAMPLE
    _reseeding = ALL if reseed_globals is True else reseed_globals


def install_sample_key(position: int) -> None:
    """Re-key the fetch in progress to the sample at ``position`` of the same (seed, epoch),
    reseeding the globals as the fetch does: for a dataset whose item holds several samples
    (a pack), so that each of them loads under its own key.

    Raises:
        ResumableLoaderError: when called outside a ResumableDataLoader fetch.
    """
    global _position, _purpose
    if _purpose is None:
        _installed("install_sample_key()")
    _position, _purpose = position, _SAMPLE  # install_key's work, inlined: once a sample
    if _reseeding:
        try:  # reseed_sample's one C++ call, inlined; TypeError: none here, or not a plain int
            done = process._reseeder(_seed, _epoch, position, _SAMPLE, _reseeding)
        except TypeError:
            done = False
        if not done:
            reseed_sample(_seed, _epoch, position, _SAMPLE, _reseeding)


def install_batch_sample_key(index: int) -> None:
    """Inside a batched read, make the key of its ``index``-th sample the current one,
    reseeding the global RNGs if the loader does: a ``__getitems__`` that runs per-sample code
    (a decode, an augmentation) after reading the batch calls it before each sample's, so each
    draws exactly what ``dataset[i]`` would. Elsewhere (a plain DataLoader, a direct call)
    nothing is done. (:func:`install_sample_key`'s work, inlined: it runs once a sample.)
    """
    global _position, _purpose
    if batch_positions is not None:  # a batched read runs under its first sample's key
        _position = position = batch_positions[index]
        _purpose = _SAMPLE
        if _reseeding:
            try:  # as in install_sample_key
                done = process._reseeder(_seed, _epoch, position, _SAMPLE, _reseeding)
            except TypeError:
                done = False
            if not done:
                reseed_sample(_seed, _epoch, position, _SAMPLE, _reseeding)


def clear_key() -> None:
    """Forget the current key, so code running outside a fetch gets a clear error."""
    global _purpose
    _purpose = None


def sample_key() -> SampleKey:
    """The key of the sample being loaded now (inside collate_fn: the batch's key).

    Raises:
        ResumableLoaderError: when called outside a ResumableDataLoader fetch.
    """
    current = _installed("sample_key()")
    return SampleKey(*current, derive_words(*current))


def sample_place() -> tuple[int, int, int]:
    """(seed, epoch, position) of the sample being loaded now: its key's coordinates without
    deriving the key's words, for code that only needs where the sample is (a Mixture locating
    an epoch-keyed source's draw, once per sample).

    Raises:
        ResumableLoaderError: when called outside a ResumableDataLoader fetch.
    """
    seed, epoch, position, _ = _installed("sample_place()")
    return seed, epoch, position


def _installed(caller: str) -> tuple[int, int, int, Purpose]:
    """The installed key's (seed, epoch, position, purpose)."""
    if _purpose is None:
        raise ResumableLoaderError(
            f"{caller} is only defined while ResumableDataLoader loads a sample: call it from "
            "your Dataset's __getitem__, a transform it calls, or collate_fn"
        )
    return _seed, _epoch, _position, _purpose


def sample_numpy_generator() -> np.random.Generator:
    """A numpy Generator for the sample being loaded now; replays exactly on resume."""
    return sample_key().numpy_generator()


def sample_torch_generator() -> torch.Generator:
    """A CPU torch.Generator for the sample being loaded now; replays exactly on resume."""
    return sample_key().torch_generator()
