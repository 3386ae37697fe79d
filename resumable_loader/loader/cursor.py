"""The resume cursor: a small, versioned, validated plain dict that says where the data stream is.

Everything that decides the order is either in the cursor (seed, epoch, position) or in its
fingerprint (dataset length and identity, shuffle mode and settings, drop_last), so a cursor is a
few numbers and strings that msgpack, JSON and torch.save all carry unchanged, and it is the
same on every rank.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, TypedDict

from typing_extensions import NotRequired

from resumable_loader._canonical import canonical_json
from resumable_loader.errors import StateDictError

FORMAT = "resumable_loader.cursor"
# Version 1: format, version, seed, epoch, position, fingerprint, checksum, and (only for a
# user's own sampler) sampler_state; and, optional, order_state (only for an order with a
# resumable state of its own, a Mixture's: covered by the checksum, which a cursor without it
# computes as before, so every earlier version-1 cursor keeps loading).
VERSION = 1

FORMAT_KEY = "format"
VERSION_KEY = "version"
SEED_KEY = "seed"
EPOCH_KEY = "epoch"
POSITION_KEY = "position"
FINGERPRINT_KEY = "fingerprint"
CHECKSUM_KEY = "checksum"
SAMPLER_STATE_KEY = "sampler_state"
ORDER_STATE_KEY = "order_state"

# Fingerprint fields added after version 1 was released, with the value a cursor without them
# implies, so that every version-1 cursor keeps loading: reseed_globals (default True then).
_ADDED_FINGERPRINT_FIELDS: dict[str, int | str] = {"reseed_globals": 1}
# Fingerprint fields that version-1 cursors may hold and that no longer decide the order:
# batch_size (a user sampler's, which may now change on resume).
_DROPPED_FIELDS = frozenset({"batch_size"})

_FIX_SETTINGS = (
    "resume with the dataset and the order settings (shuffle, shard_shuffle, drop_last, "
    "sampler, reseed_globals) the checkpoint was taken with, or do not load this state to "
    "start afresh"
)
# Fields whose change has its own cause and fix. algorithm: a release changed how an order is
# computed (the shard-local order's "feistel-v2" buffer replay became "shard-blocks-v1").
_FIELD_FIXES = {
    "dataset": (
        "the dataset is not the one the state was saved from: its identity "
        "(resumable_loader.dataset_fingerprint(dataset)) covers our sources' shard files (names, "
        "sizes, token and document counts) and settings (a TokenDataset's dtype, seq_len and "
        "documents mode), another dataset's type, length and `fingerprint` attribute; resume "
        "over the same data and settings, or do not load this state to start afresh"
    ),
    "algorithm": (
        "this release computes the order with another algorithm than the one that saved the "
        "state, so the saved position would continue a different order; resume with the "
        "resumable_loader release that saved it, or continue from the next epoch's start with "
        "loader.load_state_dict(loader.state_at(saved epoch + 1, 0))"
    ),
}


class Cursor(TypedDict):
    """A ResumableDataLoader state_dict.

    Keys:
        format: always ``"resumable_loader.cursor"``, so a foreign dict is recognised.
        version: the format version, 1.
        seed: the loader's seed, 0 <= seed < 2**64.
        epoch: the epoch in progress.
        position: samples of that epoch delivered to the training loop, counted across all
            ranks; the epoch length once the epoch is complete.
        fingerprint: everything besides the seed that decides the order, as plain values.
        checksum: CRC-32 of the fields above, so a cursor damaged or edited after
            ``state_dict()`` (a flipped bit can turn one valid seed into another) is refused.
        sampler_state: a user sampler's state at the epoch's start (user samplers only; not
            covered by the checksum, since its types are the sampler's own).
        order_state: what an order with a state of its own needs to check and continue (a
            Mixture's past phases, source fingerprints and draws; plain ints, strings, lists
            and dicts, covered by the checksum). Absent for every other order.
    """

    format: str
    version: int
    seed: int
    epoch: int
    position: int
    fingerprint: dict[str, int | str]
    checksum: int
    sampler_state: NotRequired[Any]
    order_state: NotRequired[Any]


def make_cursor(
    *,
    seed: int,
    epoch: int,
    position: int,
    fingerprint: Mapping[str, int | str],
    sampler_state: Any = None,
    order_state: Any = None,
) -> Cursor:
    """Build a cursor dict (plain ints and strings only)."""
    seed, epoch, position, fingerprint = int(seed), int(epoch), int(position), dict(fingerprint)
    checksum = _checksum(seed, epoch, position, fingerprint, order_state)
    return _assemble(seed, epoch, position, fingerprint, checksum, sampler_state, order_state)


def _assemble(
    seed: int,
    epoch: int,
    position: int,
    fingerprint: dict[str, int | str],
    checksum: int,
    sampler_state: Any,
    order_state: Any,
) -> Cursor:
    cursor = Cursor(
        format=FORMAT,
        version=VERSION,
        seed=seed,
        epoch=epoch,
        position=position,
        fingerprint=fingerprint,
        checksum=checksum,
    )
    if sampler_state is not None:
        cursor[SAMPLER_STATE_KEY] = sampler_state
    if order_state is not None:
        cursor[ORDER_STATE_KEY] = order_state
    return cursor


def parse_cursor(
    state: object,
    *,
    fingerprint: Mapping[str, int | str],
    seed: int | None,
    reasons: Mapping[str, str] | None = None,
    epoch_samples: int | None = None,
) -> Cursor:
    """Check ``state`` against this loader and return it as a Cursor.

    Args:
        state: what the caller passed to ``load_state_dict``.
        fingerprint: the current loader's fingerprint.
        seed: the current loader's seed if the user chose it explicitly, else None (the saved
            seed is then adopted).
        reasons: per fingerprint field, why it may not change and the fix, for the message
            (default: resume with the settings the checkpoint was taken with).
        epoch_samples: the positions of an epoch, which a saved position cannot pass (None:
            not known, e.g. a user's sampler without ``__len__``).

    Raises:
        StateDictError: naming the field, the saved and the current value, and the fix.
    """
    if not isinstance(state, Mapping):
        raise StateDictError(
            f"state_dict must be the dict returned by ResumableDataLoader.state_dict(), got "
            f"{type(state).__name__}; pass the loader's saved state, not the whole checkpoint"
        )
    if state.get(FORMAT_KEY) != FORMAT:
        raise StateDictError(
            f"field '{FORMAT_KEY}': saved {state.get(FORMAT_KEY)!r}, expected {FORMAT!r}: this "
            "dict was not made by ResumableDataLoader.state_dict() (is it another loader's "
            "state, or a whole checkpoint?); pass the loader's own saved state"
        )
    version = _field(state, VERSION_KEY, int)
    if version != VERSION:
        raise StateDictError(
            f"field '{VERSION_KEY}': saved {version}, this release reads version {VERSION}; "
            "load it with the resumable_loader release that wrote it, or a newer one"
        )
    saved_seed = _field(state, SEED_KEY, int)
    if not 0 <= saved_seed < 2**64:
        raise StateDictError(f"field '{SEED_KEY}': saved {saved_seed} is outside [0, 2**64)")
    epoch = _field(state, EPOCH_KEY, int)
    position = _field(state, POSITION_KEY, int)
    if not 0 <= epoch < 2**32 or not 0 <= position < 2**63:
        raise StateDictError(
            f"fields '{EPOCH_KEY}'/'{POSITION_KEY}': saved {epoch}/{position}, out of range "
            "(epoch in [0, 2**32), position in [0, 2**63)); pass an unmodified state_dict()"
        )
    saved_fingerprint = _field(state, FINGERPRINT_KEY, Mapping)
    if not all(isinstance(name, str) for name in saved_fingerprint):
        raise StateDictError(
            f"field '{FINGERPRINT_KEY}': saved keys {list(saved_fingerprint)!r} are not all "
            "strings; pass an unmodified ResumableDataLoader.state_dict()"
        )
    saved_checksum = _field(state, CHECKSUM_KEY, int)
    try:
        expected = _checksum(
            saved_seed, epoch, position, saved_fingerprint, state.get(ORDER_STATE_KEY)
        )
    except (TypeError, ValueError):  # fingerprint values that are not plain ints and strings
        expected = None
    if saved_checksum != expected:
        raise StateDictError(
            f"field '{CHECKSUM_KEY}': saved {saved_checksum}, but the other fields give "
            f"{expected}: the state was edited or damaged after state_dict() (a flipped bit, "
            "a partial write); pass an unmodified state_dict(), e.g. an earlier checkpoint"
        )
    if seed is not None and saved_seed != seed:
        raise StateDictError(
            f"field '{SEED_KEY}': saved {saved_seed}, current loader {seed}; pass "
            f"seed={saved_seed} (or no seed, to adopt the saved one) to continue this run"
        )
    # The current loader's fields in their own order (dataset, order, ...) first, so the message
    # names the most basic difference; then fields only the saved state has.
    saved_only = (k for k in saved_fingerprint if k not in fingerprint and k not in _DROPPED_FIELDS)
    for name in [*fingerprint, *saved_only]:
        saved = saved_fingerprint.get(name, _ADDED_FINGERPRINT_FIELDS.get(name))
        current = fingerprint.get(name)
        if saved != current:
            raise StateDictError(
                f"field '{FINGERPRINT_KEY}.{name}': saved {saved!r}, current {current!r}; "
                + (reasons or {}).get(name, _FIELD_FIXES.get(name, _FIX_SETTINGS))
            )
    if epoch_samples is not None and position > epoch_samples:
        raise StateDictError(
            f"field '{POSITION_KEY}': saved {position}, but an epoch has {epoch_samples} samples"
        )
    return _assemble(  # the checksum was verified above: not computed again
        saved_seed,
        epoch,
        position,
        dict(saved_fingerprint),
        saved_checksum,
        state.get(SAMPLER_STATE_KEY),
        state.get(ORDER_STATE_KEY),
    )


def _checksum(
    seed: int,
    epoch: int,
    position: int,
    fingerprint: Mapping[str, Any],
    order_state: Any = None,
) -> int:
    """CRC-32 of the cursor's fields in one canonical text (what every transport keeps)."""
    if not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in fingerprint.values()):
        raise TypeError("fingerprint values must be ints or strings")
    fields = [FORMAT, VERSION, seed, epoch, position, sorted(fingerprint.items())]
    if order_state is not None:  # absent: the text (and so the checksum) is as before
        fields.append(order_state)
    return zlib.crc32(canonical_json(fields).encode())


def _field(state: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in state:
        raise StateDictError(
            f"field '{name}' is missing from the state_dict; it is truncated or was edited, so "
            "pass an unmodified ResumableDataLoader.state_dict()"
        )
    value = state[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise StateDictError(
            f"field '{name}': saved {value!r} of type {type(value).__name__}, expected "
            f"{kind.__name__}; pass an unmodified ResumableDataLoader.state_dict()"
        )
    return value
