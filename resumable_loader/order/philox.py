"""Philox4x32-10 keyed by the seed: every random draw is a pure function of its coordinates.

The 64-bit seed is the Philox key (word 0 = low 32 bits); the epoch, the position in the epoch's
stream and a purpose go into the counter: counter = (position lo, position hi, epoch, purpose).
Streams are never derived by adding to the seed (``seed + epoch`` would make seed s at epoch
e+1 replay seed s+1 at epoch e), so neighbouring seeds and epochs are unrelated streams.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from resumable_loader import _core
from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError

SEED_LIMIT = 2**64
EPOCH_LIMIT = 2**32
POSITION_LIMIT = 2**64
PURPOSE_LIMIT = 2**32


# What a draw is for: the counter's last word, so different uses never share a stream. Defined
# once, in csrc/purposes.h (the C++ core draws with them too): PERMUTATION (an epoch's Feistel
# round keys), SAMPLE (a sample's key), BATCH (a batch's key, for collate_fn), SHARD_ORDER and
# SHUFFLE_BUFFER (shard-local mode), MIXTURE_SOURCE (a mixture source's own stream seed),
# DOCUMENT_ORDER (a token dataset's per-epoch document shuffle), WORKER_SEED (the base seed torch
# gives an iteration's workers), PROCESS_RNG (a rank's generators re-derived on a resume),
# SUBSTITUTE (the stand-in for a sample that failed to load, loader/bad_samples.py).
Purpose = enum.IntEnum("Purpose", _core.PURPOSES, module=__name__)


def check_seed(seed: object) -> int:
    """``seed`` as an int in [0, 2**64), or ConfigError naming it."""
    return check_int("seed", seed, high=SEED_LIMIT)


def check_epoch(epoch: object) -> int:
    """``epoch`` as an int in [0, 2**32), or ConfigError naming it."""
    return check_int("epoch", epoch, high=EPOCH_LIMIT)


def philox4x32(
    counter: Sequence[int], key: Sequence[int], rounds: int = 10
) -> tuple[int, int, int, int]:
    """Philox4x32-R (Random123) of a 4-word counter under a 2-word key; 32-bit words."""
    if len(counter) != 4 or len(key) != 2:
        raise ConfigError(f"need 4 counter words and 2 key words, got {counter!r}, {key!r}")
    try:
        return _core.philox4x32(list(counter), list(key), rounds)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid Philox input {counter!r}, {key!r}, {rounds}: {error}") from None


def derive_words(
    seed: int, epoch: int, position: int, purpose: Purpose
) -> tuple[int, int, int, int]:
    """The four 32-bit words keyed by ``seed`` for (epoch, position, purpose).

    Called once per sample in the loading process, so plain ints go straight to one C++ call;
    anything else (numpy ints, out-of-range values) is validated here and raises ConfigError.
    """
    try:
        return _core.derive_words(seed, epoch, position, purpose)
    except TypeError:
        pass  # validate outside the handler, so a ConfigError doesn't chain nanobind's TypeError
    return _core.derive_words(
        check_seed(seed),
        check_epoch(epoch),
        check_int("position", position, high=POSITION_LIMIT),
        check_int("purpose", purpose, high=PURPOSE_LIMIT),
    )
