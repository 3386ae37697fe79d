"""The checkpoint manifest: a human-readable JSON that says what a checkpoint holds and whence.

Written last (atomically) into the checkpoint, so its presence marks a complete save, and read
first on load, so every check is made against it before anything is applied. Its fields are
module constants and are listed in :data:`FIELDS` with their types; a manifest of an unknown
format or version, whose version contradicts its fields, or with a field missing or of the
wrong type, is refused as a whole.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resumable_loader.checkpoint import integrity
from resumable_loader.checkpoint.layout import write_inside
from resumable_loader.errors import CheckpointError

FORMAT = "resumable_loader.checkpoint"
# Version 1: the fields of FIELDS. Version 2 adds those of FIELDS_2: the content checksum of
# every file, the optimizers' classes and hyperparameters, the resume probe, and the
# manifest's own checksum. Both are read; a version-1 checkpoint loads without checksums, so a
# manifest that says version 1 but has a field of FIELDS_2 is refused: an edited 'version' must
# not switch the checksums off.
VERSION = 2
READABLE = (1, 2)

FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "time": str,  # UTC, ISO 8601
    "step": int,  # the global step (optimizer steps taken)
    "samples_seen": (int, type(None)),  # across all ranks; None when unknown
    "tokens_seen": (int, type(None)),
    "world_size": int,  # processes that saved
    "data_parallel_size": int,  # ranks the data was split over (the loaders' world size)
    "versions": dict,  # python, torch, numpy, resumable_loader at save time
    "components": dict,  # name -> {"kind", "type"}
    "loaders": dict,  # name -> {"state", "seed", "batch_size", "num_workers", "world_size"}
    "rng": dict,  # {"files": [...], "cuda_devices": n}
    "metadata": dict,  # the user's, JSON values only
}
FIELDS_2: dict[str, type | tuple[type, ...]] = {
    "files": dict,  # file name -> {"xxh3_64": hex digest, "bytes": length}
    "optimizers": dict,  # name -> {"type", "defaults"}
    "probe": (dict, type(None)),  # the resume probe's batch and results, see probe.py
    "checksum": str,  # xxh3_64 of the canonical JSON of every other field
}
CHECKSUM = "checksum"
_FIX = "the checkpoint is damaged or not one of ours: load an earlier checkpoint"


@functools.cache  # importlib.metadata takes milliseconds, and the answer never changes
def _versions() -> tuple[tuple[str, str], ...]:
    try:
        package = importlib.metadata.version("resumable-loader")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    return (
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("numpy", np.__version__),
        ("resumable_loader", package),
    )


def versions() -> dict[str, str]:
    """The versions that decide what a checkpoint contains and how it is read."""
    return dict(_versions())


def build(
    *,
    step: int,
    samples_seen: int | None,
    tokens_seen: int | None,
    world_size: int,
    data_parallel_size: int,
    components: dict[str, dict[str, str]],
    loaders: dict[str, dict[str, Any]],
    cuda_devices: int,
    metadata: dict[str, Any],
    optimizers: dict[str, dict[str, Any]],
    probe: dict[str, Any] | None,
) -> dict[str, Any]:
    """A manifest dict without its files and checksum (see :func:`seal`); CheckpointError if
    ``metadata`` is not plain JSON."""
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "step": step,
        "samples_seen": samples_seen,
        "tokens_seen": tokens_seen,
        "world_size": world_size,
        "data_parallel_size": data_parallel_size,
        "versions": versions(),
        "components": components,
        "loaders": loaders,
        "rng": {
            "files": [rng_name(rank) for rank in range(world_size)],
            "cuda_devices": cuda_devices,
        },
        "metadata": metadata,
        "optimizers": optimizers,
        "probe": probe,
    }
    try:
        json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"metadata {str(metadata)[:80]}: not plain JSON ({error}); pass only strings, "
            "numbers, booleans, None, lists and dicts with string keys"
        ) from None
    return manifest


def rng_name(rank: int) -> str:
    """Rank ``rank``'s RNG file, relative to the checkpoint."""
    return f"rng-rank-{rank:05d}.json"


def seal(manifest: dict[str, Any], files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``manifest`` with the checksums of the save's ``files`` and a checksum of itself."""
    sealed = json.loads(json.dumps({**manifest, "files": files}))  # as read back: str keys
    sealed[CHECKSUM] = integrity.of_json(sealed)
    return sealed


def write(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` (sealed) as ``directory/manifest.json`` (the save's last file)."""
    write_inside(
        directory / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode()
    )


def read(directory: Path) -> dict[str, Any]:
    """The manifest of the checkpoint in ``directory``, checked field by field.

    Raises:
        CheckpointError: missing or unreadable, another format, an unknown version, version 1
            with fields version 1 does not have (the version was edited or damaged), a field
            missing or of the wrong type, or a checksum that differs; the message names the
            file, the field and the fix.
    """
    path = directory / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing, so the save never completed; {_FIX}") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable ({error}); {_FIX}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise CheckpointError(f"{path}: field 'format' is {got!r}, expected {FORMAT!r}; {_FIX}")
    if manifest.get("version") not in READABLE:
        raise CheckpointError(
            f"{path}: field 'version' is {manifest.get('version')!r}, this release reads "
            f"versions {list(READABLE)}; load it with the resumable_loader release that wrote "
            f"it ({manifest.get('versions', {}).get('resumable_loader', 'unknown')}) or a newer one"
        )
    later = sorted(FIELDS_2.keys() & manifest.keys())
    if manifest["version"] == 1 and later:  # no release wrote these into a version-1 manifest
        raise CheckpointError(
            f"{path}: field 'version' is 1, but the manifest has fields {later}, which version "
            f"1 does not have: the manifest was edited or damaged after the save; {_FIX}"
        )
    fields = FIELDS if manifest["version"] == 1 else {**FIELDS, **FIELDS_2}
    for field, kind in fields.items():
        value = manifest.get(field)
        if field not in manifest or not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(
                f"{path}: field '{field}' is {str(value)[:60]!r}, expected "
                f"{getattr(kind, '__name__', kind)}; {_FIX}"
            )
    if manifest["version"] > 1:
        rest = {key: value for key, value in manifest.items() if key != CHECKSUM}
        if integrity.of_json(rest) != manifest[CHECKSUM]:
            raise CheckpointError(
                f"{path}: content checksum {integrity.ALGORITHM} {integrity.of_json(rest)}, "
                f"field '{CHECKSUM}' says {manifest[CHECKSUM]}: the manifest was edited or "
                f"damaged after the save; {_FIX}"
            )
    return manifest
