"""A checkpoint checked on its own (no training state needed): every problem, not the first.

What ``load()`` checks before it looks at the state it would load into, and what ``checkpoint
verify`` prints: the manifest (format, version, fields, its own checksum), the folder's step
against the manifest's, the RNG files against the world size, DCP's metadata (readable, every
file it names long enough, the components with data the ones the manifest lists), the content
checksum of every file the save wrote, and no data or RNG file besides those the manifest
lists (a stray one means the folder was changed after the save; a file of another kind, e.g. a
note of the user's, is left alone). A failure here means the checkpoint is damaged,
so a load with ``fallback`` tries the one before it; anything found later is about the state
it is loaded into, and another checkpoint of the same run would not help.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata

from resumable_loader.checkpoint import integrity, manifest, rng_state
from resumable_loader.checkpoint.components import LOADER
from resumable_loader.errors import CheckpointError

METADATA_NAME = ".metadata"
DATA_SUFFIX = ".distcp"  # DCP's data files (the rest: .metadata, RNG files)
_SAVED_KIND = re.compile(rf".+{re.escape(DATA_SUFFIX)}|rng-rank-\d+\.json")  # what a save writes
_STEP_FOLDER = re.compile(r"step-(\d+)")
_DAMAGED = "the checkpoint is damaged: load an earlier one"


@dataclass
class Inspection:
    """What :func:`inspect` found: the manifest and DCP's metadata if readable, every problem,
    and the files whose content this rank hashed (how many, how many bytes)."""

    checkpoint: Path
    manifest: dict[str, Any] | None = None
    metadata: Metadata | None = None
    problems: list[str] = field(default_factory=list)
    hashed_files: int = 0
    hashed_bytes: int = 0


def read_metadata(checkpoint: Path) -> Metadata:
    """DCP's metadata of ``checkpoint``; CheckpointError if it cannot be read."""
    try:
        return FileSystemReader(checkpoint).read_metadata()
    except Exception as error:  # a missing or torn .metadata: pickle, OS or EOF errors
        raise CheckpointError(
            f"{checkpoint}/{METADATA_NAME}: unreadable ({type(error).__name__}: {error}); "
            f"{_DAMAGED}"
        ) from None


def data_files(metadata: Metadata) -> dict[str, int]:
    """Each data file DCP's metadata names -> the byte its data reaches."""
    sizes: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        sizes[info.relative_path] = max(sizes.get(info.relative_path, 0), end)
    return sizes


def inspect(
    checkpoint: Path,
    *,
    checksums: bool = True,
    data: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Inspection:
    """Check ``checkpoint`` on its own; this rank hashes and parses its share of the files
    (every ``world_size``-th), so the ranks of a load split the reading between them.
    ``data=False`` leaves DCP's data files unhashed (a staged load hashes them as it reads)."""
    found = Inspection(checkpoint)
    try:
        saved = found.manifest = manifest.read(checkpoint)
    except CheckpointError as error:
        found.problems.append(str(error))
        return found
    match = _STEP_FOLDER.fullmatch(checkpoint.name)
    if match and int(match.group(1)) != saved["step"]:
        found.problems.append(
            f"{checkpoint}/manifest.json: field 'step' is {saved['step']}, but the folder is "
            f"step {int(match.group(1))}; {_DAMAGED}"
        )
    rng_files = [manifest.rng_name(r) for r in range(saved["world_size"])]
    if saved["rng"]["files"] != rng_files:
        found.problems.append(
            f"{checkpoint}/manifest.json: field 'rng.files' lists {saved['rng']['files']}, but "
            f"'world_size' {saved['world_size']} needs {rng_files}; {_DAMAGED}"
        )
    try:
        found.metadata = read_metadata(checkpoint)
    except CheckpointError as error:
        found.problems.append(str(error))
    else:
        found.problems += _against_metadata(checkpoint, saved, found.metadata)
    files = saved.get("files")
    if files is not None:  # version 2: every file the save wrote has its checksum
        needed = set(rng_files) | {METADATA_NAME}
        if found.metadata is not None:
            needed |= set(data_files(found.metadata))
        for name in sorted(needed - set(files)):
            found.problems.append(
                f"{checkpoint}/{name}: no content checksum in the manifest, which lists "
                f"{sorted(files)}; {_DAMAGED}"
            )
        found.problems += _unlisted(checkpoint, files)
        if checksums:
            hashed = [n for n in files if data or not n.endswith(DATA_SUFFIX)]
            mine = integrity.share(hashed, rank, world_size)
            found.problems += integrity.check_files(checkpoint, files, mine)
            found.hashed_files = len(mine)
            found.hashed_bytes = sum(files[name]["bytes"] for name in mine)
    for saved_rank in range(rank, saved["world_size"], world_size):
        try:
            rng_state.read(checkpoint, saved_rank)
        except CheckpointError as error:
            found.problems.append(str(error))
    return found


def _unlisted(checkpoint: Path, files: dict[str, Any]) -> list[str]:
    """A problem per data or RNG file in ``checkpoint`` that the manifest's ``files`` (every
    file the save wrote) does not list: no save of this checkpoint wrote it."""
    return [
        f"{entry}: {'a data' if entry.name.endswith(DATA_SUFFIX) else 'an RNG'} file the manifest "
        f"does not list (it lists {sorted(files)}), so the folder was changed after the save; "
        "remove the file if it was put there by mistake, or load an earlier checkpoint"
        for entry in sorted(checkpoint.iterdir())
        if entry.name not in files and _SAVED_KIND.fullmatch(entry.name)
    ]


def _against_metadata(checkpoint: Path, saved: dict[str, Any], metadata: Metadata) -> list[str]:
    """Files named by DCP's metadata present in full; components with data = listed ones."""
    problems = []
    for name, needed in sorted(data_files(metadata).items()):
        path = checkpoint / name
        have = path.stat().st_size if path.is_file() else None
        if have is None or have < needed:
            problems.append(
                f"{path}: {'missing' if have is None else f'{have} bytes'}, but the metadata "
                f"places data up to byte {needed}; {_DAMAGED}"
            )
    in_dcp = {index.fqn.split(".", 1)[0] for index in (metadata.storage_data or {})}
    in_dcp |= {key.split(".", 1)[0] for key in metadata.state_dict_metadata}
    listed = {n for n, e in saved["components"].items() if e["kind"] != LOADER}
    for name in sorted(listed - in_dcp):
        problems.append(f"component '{name}': in the manifest but has no data in the checkpoint")
    for name in sorted(in_dcp - listed):
        problems.append(f"component '{name}': data in the checkpoint but not in the manifest")
    loaders = {n for n, e in saved["components"].items() if e["kind"] == LOADER}
    if loaders != set(saved["loaders"]):
        problems.append(f"loaders {sorted(loaders)} listed, cursors for {sorted(saved['loaders'])}")
    return problems
