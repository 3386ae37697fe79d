"""The stages of a load: choose a sound checkpoint, check it against the state, stage it, apply it.

1. :func:`choose` inspects the candidates newest first (each rank hashes its share of the small
   files; the ranks' findings are gathered, so all of them choose the same one); a damaged
   checkpoint is skipped with its problems when ``fallback`` is on, else refused.
2. :func:`check` compares it with the state it is loaded into (components, keys, shapes,
   loaders, layout, optimizers); anything found is refused, since an older checkpoint of the
   same run would not fit better.
3. :func:`stage` reads it into a staged copy of the state, hashing each data file as it reads
   it (:mod:`staged_read`); a file whose checksum differs makes the checkpoint damaged (step 1
   goes on with the next candidate).
4. :func:`apply_staged` swaps the staged state in and sets every component; on any failure
   the old storages are swapped back and every component is put back, so it is all or nothing.
   Without staging (``rollback=False``) step 1 hashes the data files too, step 3 is skipped and
   :func:`apply_in_place` reads the checkpoint straight into the live state.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from resumable_loader.checkpoint import (
    collective,
    inspection,
    integrity,
    optimizers,
    rng_state,
    staged_read,
    staging,
    validate,
)
from resumable_loader.checkpoint.components import LOADER, OPTIMIZER, Component
from resumable_loader.checkpoint.decision import REDERIVED, RESTORED
from resumable_loader.errors import CheckpointError, StateDictError


@dataclass
class Prepared:
    """A checkpoint checked against the state (``plan``), and staged if the load stages:
    ``staged``, and what its read found (problems, files and bytes hashed by all ranks)."""

    plan: dict[str, Any]
    staged: staging.Staged | None = None
    problems: list[str] = field(default_factory=list)
    hashed_files: int = 0
    hashed_bytes: int = 0


def choose(
    candidates: list[Path],
    *,
    checksums: bool,
    fallback: bool,
    prepare: Callable[[inspection.Inspection], Prepared],
    staged: bool,
) -> tuple[inspection.Inspection, Prepared, list[dict[str, Any]], dict[str, Any]]:
    """(the newest sound candidate, its checks' plan (and staged state), the skipped ones with
    their problems, the checksum note).

    ``prepare`` checks a sound-looking candidate against the state (raising if it does not
    fit) and, with ``staged``, reads it into a staged state, hashing the data files; without
    ``staged`` the data files are hashed here, before ``prepare``.

    Raises:
        CheckpointError: no candidate is sound; the message lists each one's problems.
    """
    rank, world_size = collective.rank(), collective.world_size()
    skipped: list[dict[str, Any]] = []
    for path in candidates:
        start = time.perf_counter()
        found = inspection.inspect(
            path, checksums=checksums, data=not staged, rank=rank, world_size=world_size
        )
        gathered = collective.all_gather((found.problems, found.hashed_files, found.hashed_bytes))
        problems = [text for ranks_problems, _, _ in gathered for text in ranks_problems]
        if not problems:
            prepared = prepare(found)
            problems = prepared.problems
            if not problems:
                hashed = [(prepared.hashed_files, prepared.hashed_bytes)]
                hashed += [(files, size) for _, files, size in gathered]
                note = _checksum_note(found, hashed, checksums, start)
                return found, prepared, skipped, note
        skipped.append({"checkpoint": str(path), "problems": sorted(set(problems))})
        if not fallback:
            break
    lines = "; ".join(
        f"{entry['checkpoint']}: {' | '.join(entry['problems'])}" for entry in skipped
    )
    advice = "" if fallback else " (load(..., fallback=True) tries the earlier ones)"
    raise CheckpointError(f"no sound checkpoint among the {len(skipped)} tried{advice}: {lines}")


def _checksum_note(
    found: inspection.Inspection, hashed: list[tuple[int, int]], checksums: bool, start: float
) -> dict[str, Any]:
    """What the decision says about the content checksums of the chosen checkpoint."""
    if found.manifest is not None and "files" not in found.manifest:
        return {"mode": "none recorded (a version-1 manifest)"}
    if not checksums:
        return {"mode": "trusted (not checked: checksums='trust')"}
    return {
        "mode": "verified",
        "files": sum(files for files, _ in hashed),
        "bytes": sum(size for _, size in hashed),
        "seconds": round(time.perf_counter() - start, 3),
    }


def check(
    found: inspection.Inspection,
    components: dict[str, Component],
    *,
    mode: str,
    rank: int,
    world_size: int,
) -> dict[str, Any]:
    """Every check of the chosen checkpoint against ``components``; the plan to apply."""
    saved, metadata = found.manifest, found.metadata
    assert saved is not None and metadata is not None  # choose() returned a sound one
    validate.component_names(saved, components)
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    changed = validate.topology(saved, mode=mode, world_size=world_size, cuda_devices=cuda)
    for name, component in components.items():
        if component.kind == LOADER:
            entry = saved["loaders"][name]
            changed.update(validate.loader(name, entry, component.obj, mode=mode))
    changed.update(_optimizer_changes(saved, components, mode=mode))
    rng = None
    if not changed.keys() & {"world_size", "cuda_devices"}:
        rng = rng_state.read(found.checkpoint, rank)
    current = {n: c.stateful.state_dict() for n, c in components.items() if c.kind != LOADER}
    validate.tensors(metadata, current, components)
    return {"manifest": saved, "changed": changed, "rng": rng, "current": current}


def _optimizer_changes(
    saved: dict[str, Any], components: dict[str, Component], *, mode: str
) -> dict[str, tuple[Any, Any]]:
    changed: dict[str, tuple[Any, Any]] = {}
    for name, entry in saved.get("optimizers", {}).items():
        changed.update(optimizers.changes(name, entry, components[name].obj))
    if mode == "strict" and changed:
        field, (then, now) = next(iter(changed.items()))
        name, what = field.split(".", 1)
        raise CheckpointError(
            f"component '{name}' (optimizer), field '{what}': saved {then!r}, now {now!r} "
            f"({len(changed)} difference{'s' if len(changed) > 1 else ''}: "
            f"{sorted(changed)}); mode='strict' resumes the same optimizer: build it as it "
            "was saved, or load with mode='flexible' to apply the saved state to this one "
            "(its hyperparameters are then the checkpoint's per-group values)"
        )
    return changed


def stage(
    found: inspection.Inspection,
    components: dict[str, Component],
    plan: dict[str, Any],
    *,
    checksums: bool,
    process_group: Any,
) -> Prepared:
    """Read the checked checkpoint into a staged state (see :mod:`staging`), hashing each data
    file as it is read; every rank takes part, and all learn every rank's problems.

    Raises:
        CheckpointError: the read failed although every file is sound (nothing was changed).
    """
    checkpoint, saved = found.checkpoint, plan["manifest"]
    files = saved.get("files") if checksums else None
    error: BaseException | None = None
    try:  # fresh memory the size of the state: refused on every rank if one has no room
        staged = staging.Staged(components, plan["current"])
    except Exception as failure:
        error = CheckpointError(
            f"staging the checkpoint's state beside the current one failed "
            f"({type(failure).__name__}: {failure}); nothing was changed: free memory, or "
            "load with rollback=False (read in place; see its window in docs/checkpoint.md)"
        )
    collective.raise_if_any(error)
    reader = staged_read.StagingReader(checkpoint, files)
    try:
        staging.read_staged(checkpoint, staged, reader, process_group=process_group)
    except (Exception, CheckpointException) as failure:  # DCP's (a BaseException) or ours
        error = failure
    gathered = collective.all_gather((reader.problems, reader.hashed))
    problems = [text for ranks_problems, _ in gathered for text in ranks_problems]
    hashed: dict[str, int] = {}
    for _, ranks_hashed in gathered:
        hashed.update(ranks_hashed)
    rest = [] if files is None else [n for n in files if n not in hashed and _is_data(n)]
    if rest:  # data files no rank read whole (the same list on every rank): hashed by share
        rank, world_size = collective.rank(), collective.world_size()
        mine = integrity.share(rest, rank, world_size)
        for more in collective.all_gather(integrity.check_files(checkpoint, files, mine)):
            problems += more
        hashed.update({name: files[name]["bytes"] for name in rest})
    prepared = Prepared(plan, staged, problems, len(hashed), sum(hashed.values()))
    if not problems:  # (the same on every rank) a failed read of sound files is refused
        collective.raise_if_any(
            None
            if error is None
            else CheckpointError(
                f"{checkpoint}: reading the checkpoint failed ({type(error).__name__}: "
                f"{error}); every file's checksum is right and nothing was changed: load "
                "again, or an earlier checkpoint"
            )
        )
    return prepared


def _is_data(name: str) -> bool:
    return name.endswith(inspection.DATA_SUFFIX)


def apply_staged(
    components: dict[str, Component], plan: dict[str, Any], staged: staging.Staged, *, rederive: Any
) -> dict[str, str]:
    """Swap the staged state in, then set every component, each loader's cursor and the RNG
    states; on any failure (on any rank) swap the old storages back and put every one back.
    Returns the actions taken.

    ``rederive`` re-derives this rank's RNG states when the saved ones do not apply.
    """
    steps: list[tuple[str, Any, Any]] = [("swap", staged.swap_in, staged.swap_out)]
    for name, component in components.items():
        if component.kind != LOADER:  # its copies into swapped tensors are no-ops
            setter = _putter(component.stateful, staged.state[name])
            steps.append((name, setter, _restorer(component, staged.before[name])))
    return _run(steps, components, plan, rederive=rederive)


def apply_in_place(
    checkpoint: Path,
    components: dict[str, Component],
    plan: dict[str, Any],
    *,
    rederive: Any,
    process_group: Any,
) -> dict[str, str]:
    """``rollback=False``: read the checkpoint straight into the live state, then set every
    component; a failure of the read or of a ``load_state_dict`` leaves the components partly
    loaded (the loaders' cursors and the RNG states are still put back), and is logged as such.
    """
    current = plan["current"]
    read = functools.partial(_read, checkpoint, current, process_group)
    steps: list[tuple[str, Any, Any]] = [("read", read, _partly_loaded)]
    for name, component in components.items():
        if component.kind != LOADER:
            steps.append((name, _putter(component.stateful, current[name]), _nothing))
    return _run(steps, components, plan, rederive=rederive)


def _run(
    steps: list[tuple[str, Any, Any]],
    components: dict[str, Component],
    plan: dict[str, Any],
    *,
    rederive: Any,
) -> dict[str, str]:
    """``steps``, then the loaders' cursors and the RNG states, all or nothing across ranks."""
    saved = plan["manifest"]
    for name, component in components.items():
        if component.kind == LOADER:
            loader, cursor = component.obj, saved["loaders"][name]["state"]
            undo = _putter(loader, loader.state_dict())
            steps.append((name, _cursor_setter(name, loader, cursor), undo))
    rng_before = rng_state.capture(rank=0, world_size=1, step=0)
    restore_saved = _putter_rng(plan["rng"]) if plan["rng"] is not None else rederive
    steps.append(("rng", restore_saved, _putter_rng(rng_before)))
    error: BaseException | None = None
    put_back = None
    try:
        put_back = staging.apply(steps)
    except BaseException as failure:  # set back already; the other ranks must hear of it
        error = failure
    if error is not None and not collective.active():
        raise error
    try:
        collective.raise_if_any(error)
    except BaseException:
        if put_back is not None:  # this rank applied all, another failed: put back here too
            put_back()
        raise
    actions = {name: RESTORED for name in components}
    actions["rng"] = RESTORED if plan["rng"] is not None else REDERIVED
    return actions


def _putter(target: Any, state: Any) -> Any:
    return lambda: target.load_state_dict(state)


def _putter_rng(states: dict[str, Any]) -> Any:
    return lambda: rng_state.restore(states)


def _cursor_setter(name: str, loader: Any, cursor: dict[str, Any]) -> Any:
    def set_cursor() -> None:
        try:
            loader.load_state_dict(cursor)
        except StateDictError as refused:
            raise CheckpointError(f"component '{name}' (loader): {refused}") from None

    return set_cursor


def _read(checkpoint: Path, current: dict[str, Any], process_group: Any) -> None:
    try:
        staging.read_in_place(checkpoint, current, process_group=process_group)
    except (Exception, CheckpointException) as error:  # DCP's (a BaseException) or ours
        raise CheckpointError(
            f"{checkpoint}: reading the checkpoint failed ({type(error).__name__}: {error}); "
            "rollback=False, so the components may be partly loaded: load an earlier checkpoint"
        ) from error


def _restorer(component: Component, before: Any) -> Any:
    def restore() -> None:
        component.stateful.load_state_dict(before)
        component.undo()  # a fresh optimizer is fresh again

    return restore


def _nothing() -> None:
    return None


def _partly_loaded() -> None:
    staging.logger.error(
        "load(..., rollback=False) failed after the read began: the components may be partly "
        "loaded; rebuild them, or load again"
    )


def optimizer_entries(components: dict[str, Component]) -> dict[str, dict[str, Any]]:
    """The manifest's ``optimizers``: each optimizer's class and hyperparameters."""
    return {n: optimizers.entry(c.obj) for n, c in components.items() if c.kind == OPTIMIZER}
