"""Cursor parsing: every malformed, truncated or foreign state gets StateDictError, fuzzed."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resumable_loader import StateDictError
from resumable_loader.loader.cursor import make_cursor, parse_cursor

FINGERPRINT = {"dataset": "abc", "order": "shuffled", "length": 100, "drop_last": 0}
GOOD = make_cursor(seed=5, epoch=2, position=40, fingerprint=FINGERPRINT)

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=4)
    ),
    max_leaves=12,
)


def parse(state):
    return parse_cursor(state, fingerprint=FINGERPRINT, seed=None, epoch_samples=100)


def test_round_trip():
    assert parse(msgpack.unpackb(msgpack.packb(GOOD))) == GOOD


def test_explicit_seed_must_match():
    with pytest.raises(StateDictError, match="seed"):
        parse_cursor(GOOD, fingerprint=FINGERPRINT, seed=6)


@given(plain)
def test_arbitrary_values_are_rejected_cleanly(value):
    with pytest.raises(StateDictError):
        parse(value)


@given(st.sampled_from(sorted(GOOD)), plain)
def test_any_field_replaced_is_rejected_or_valid(field, value):
    state = dict(GOOD, **{field: value})
    try:
        parsed = parse(state)
    except StateDictError:
        return
    assert parsed[field] == value  # accepted only if the value is itself valid


@given(st.lists(st.sampled_from(sorted(GOOD)), unique=True, min_size=1))
def test_missing_fields_are_named(missing):
    state = {k: v for k, v in GOOD.items() if k not in missing}
    with pytest.raises(StateDictError, match="|".join(missing)):
        parse(state)


@settings(max_examples=200)
@given(st.data())
def test_truncated_and_flipped_msgpack(data):
    raw = bytearray(msgpack.packb(GOOD))
    cut = data.draw(st.integers(0, len(raw)))
    raw = raw[:cut]
    if raw and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    try:
        state = msgpack.unpackb(bytes(raw), strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return  # msgpack itself refused the bytes
    try:
        parsed = parse(state)
    except StateDictError:
        return
    assert parsed == GOOD  # only an intact cursor is accepted


def test_every_single_bit_flip_of_the_bytes_is_refused():
    raw = msgpack.packb(GOOD)
    accepted = []
    for bit in range(len(raw) * 8):
        damaged = bytearray(raw)
        damaged[bit // 8] ^= 1 << (bit % 8)
        try:
            parse(msgpack.unpackb(bytes(damaged), strict_map_key=False))
        except (ValueError, TypeError, msgpack.UnpackException, StateDictError):
            continue
        accepted.append(bit)
    assert accepted == []


@pytest.mark.parametrize(
    "field,value", [("seed", 6), ("epoch", 3), ("position", 41), ("checksum", 0)]
)
def test_an_edited_field_fails_the_checksum(field, value):
    with pytest.raises(StateDictError, match=r"field 'checksum'.*edited or damaged"):
        parse(dict(GOOD, **{field: value}))


def test_position_past_the_epoch_is_refused():
    state = make_cursor(seed=5, epoch=2, position=101, fingerprint=FINGERPRINT)
    with pytest.raises(StateDictError, match=r"field 'position': saved 101.*100 samples"):
        parse(state)
