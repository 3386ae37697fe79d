"""Damage for the checkpoint tests: flipped bytes, cut files, edited manifests (resealed or not).

A resealed manifest carries a correct checksum of its edited self (what a careful forger, or
a tool that rewrites manifests, would leave), so the checks behind the checksum are reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resumable_loader.checkpoint import manifest as manifest_mod


def flip(path: Path, offset: int) -> None:
    """Invert every bit of the byte at ``offset`` of ``path`` (negative: from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    """Cut ``path`` to half its length."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def reseal(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` to ``path`` with a checksum that matches its (edited) content."""
    rest = {key: value for key, value in manifest.items() if key not in ("checksum", "files")}
    path.write_text(json.dumps(manifest_mod.seal(rest, manifest["files"])))
