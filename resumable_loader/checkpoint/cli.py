"""``resumable-loader checkpoint inspect|verify DIR``: show a checkpoint, or check it is whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resumable_loader.checkpoint import inspection, integrity, manifest
from resumable_loader.checkpoint.components import LOADER
from resumable_loader.checkpoint.layout import MANIFEST_NAME, CheckpointDirectory
from resumable_loader.errors import CheckpointError


def resolve(path: str, step: int | None = None) -> Path:
    """A checkpoint folder: ``path`` itself if it has a manifest, else the newest under it."""
    folder = Path(path)
    if (folder / MANIFEST_NAME).is_file() and step is None:
        return folder
    return CheckpointDirectory(folder).find(step)


def component_sizes(checkpoint: Path) -> dict[str, tuple[int, int]]:
    """Per component: (entries, bytes on disk), from DCP's metadata."""
    metadata = inspection.read_metadata(checkpoint)
    sizes: dict[str, tuple[int, int]] = {}
    for index, info in (metadata.storage_data or {}).items():
        name = index.fqn.split(".", 1)[0]
        entries, size = sizes.get(name, (0, 0))
        sizes[name] = (entries + 1, size + info.length)
    return sizes


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def inspect(path: str, *, step: int | None = None, as_json: bool = False) -> int:
    """Print the manifest, the components with their sizes and the loaders' positions."""
    checkpoint = resolve(path, step)
    saved = manifest.read(checkpoint)
    if as_json:
        print(json.dumps(saved, indent=2, sort_keys=True))
        return 0
    sizes = component_sizes(checkpoint)
    seen = saved["samples_seen"], saved["tokens_seen"]
    rows = [
        ("checkpoint", str(checkpoint)),
        ("format", f"{saved['format']} version {saved['version']}, saved {saved['time']}"),
        ("step", f"{saved['step']} (samples seen {_or_dash(seen[0])}, tokens {_or_dash(seen[1])})"),
        ("world size", f"{saved['world_size']} (data parallel {saved['data_parallel_size']})"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(saved["versions"].items()))),
        ("rng", f"{len(saved['rng']['files'])} rank files, {saved['rng']['cuda_devices']} CUDA"),
    ]
    for label, value in rows:
        print(f"{label + ':':<12}{value}")
    print("components:")
    for name, entry in saved["components"].items():
        entries, size = sizes.get(name, (0, 0))
        where = "manifest" if entry["kind"] == LOADER else f"{entries} entries, {_human(size)}"
        print(f"  {name:<12}{entry['kind']:<10}{entry['type']}  ({where})")
    for name, loader in saved["loaders"].items():
        cursor = loader["state"]
        length = cursor["fingerprint"].get("length", "?")
        phase = "" if loader.get("schedule") is None else f", schedule {loader['schedule']}"
        print(
            f"loader {name}: epoch {cursor['epoch']}, position {cursor['position']} of "
            f"{length}, seed {cursor['seed']}, batch size {loader['batch_size']}, "
            f"workers {loader['num_workers']}, world size {loader['world_size']}{phase}"
        )
    if saved["metadata"]:
        print(f"metadata:   {json.dumps(saved['metadata'], sort_keys=True)}")
    return 0


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def verify(path: str, *, step: int | None = None) -> int:
    """Check the checkpoint is whole and unchanged; print every problem; 0 if none, else 1.
    Given a run's directory, also name every ``step-N`` folder newer than its newest complete
    checkpoint: committed whole, it has lost its manifest since (a load skips it)."""
    try:
        checkpoint = resolve(path, step)
    except CheckpointError as error:
        print(f"FAIL {error}")
        return 1
    found = inspection.inspect(checkpoint)
    problems = list(found.problems)
    if checkpoint != Path(path) and step is None:  # the newest of a run's directory
        directory = CheckpointDirectory(Path(path))
        newest = directory.complete_steps()[-1]
        problems += [
            f"{directory.step_dir(newer)}: no {MANIFEST_NAME}, so it is not a checkpoint any "
            f"more (load() skips it for step {newest}); delete it, or restore its manifest"
            for newer in directory.step_folders()
            if newer > newest
        ]
    for problem in problems:
        print(f"FAIL {problem}")
    if not problems:
        print(
            f"OK {checkpoint}: manifest, DCP metadata and RNG files consistent; "
            f"{found.hashed_files} files ({_human(found.hashed_bytes)}) match their "
            f"{integrity.ALGORITHM} checksums"
        )
    return 1 if problems else 0
