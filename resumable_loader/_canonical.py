"""The canonical JSON text of plain values: what the cursor's checksum and the fingerprints hash.

Keys sorted and no spaces, so the same values give the same text on every machine and release.
One encoder, built once: ``json.dumps`` with options builds a new one on every call, which is a
third of a fingerprint's cost on a resume.
"""

from __future__ import annotations

import json

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def canonical_json(value: object) -> str:
    """``value`` (dicts, lists, strings, ints) as canonical JSON text."""
    return _ENCODER.encode(value)
