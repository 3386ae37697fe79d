"""The three stages of a load: choose a sound checkpoint, check it against the state, apply it.

1. :func:`choose` inspects the candidates newest first (each rank hashes its share of the files;
   the ranks' findings are gathered, so all of them choose the same one); a damaged checkpoint
   is skipped with its problems when ``fallback`` is on, else refused.
2. :func:`check` compares the chosen one with the state it is loaded into (components, keys,
   shapes, loaders, layout, optimizers); anything found is refused, since an older checkpoint
   of the same run would not fit better.
3. :func:`apply` reads the checkpoint and sets every component; on any failure every component
   is put back from the copy :func:`keep_previous` began before the first stage, so it is all
   or nothing.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from resumable_loader.checkpoint import (
    collective,
    inspection,
    optimizers,
    rng_state,
    staging,
    validate,
)
from resumable_loader.checkpoint.components import LOADER, OPTIMIZER, Component
from resumable_loader.checkpoint.decision import REDERIVED, RESTORED
from resumable_loader.errors import CheckpointError, StateDictError


def choose(
    candidates: list[Path], *, checksums: bool, fallback: bool
) -> tuple[inspection.Inspection, list[dict[str, Any]], dict[str, Any]]:
    """(the newest sound candidate, the skipped ones with their problems, the checksum note).

    Raises:
        CheckpointError: no candidate is sound; the message lists each one's problems.
    """
    rank, world_size = collective.rank(), collective.world_size()
    skipped: list[dict[str, Any]] = []
    for path in candidates:
        start = time.perf_counter()
        found = inspection.inspect(path, checksums=checksums, rank=rank, world_size=world_size)
        gathered = collective.all_gather((found.problems, found.hashed_files, found.hashed_bytes))
        problems = [text for ranks_problems, _, _ in gathered for text in ranks_problems]
        if not problems:
            return found, skipped, _checksum_note(found, gathered, checksums, start)
        skipped.append({"checkpoint": str(path), "problems": sorted(set(problems))})
        if not fallback:
            break
    lines = "; ".join(
        f"{entry['checkpoint']}: {' | '.join(entry['problems'])}" for entry in skipped
    )
    advice = "" if fallback else " (load(..., fallback=True) tries the earlier ones)"
    raise CheckpointError(f"no sound checkpoint among the {len(skipped)} tried{advice}: {lines}")


def _checksum_note(
    found: inspection.Inspection, gathered: list[Any], checksums: bool, start: float
) -> dict[str, Any]:
    """What the decision says about the content checksums of the chosen checkpoint."""
    if found.manifest is not None and "files" not in found.manifest:
        return {"mode": "none recorded (a version-1 manifest)"}
    if not checksums:
        return {"mode": "trusted (not checked: checksums='trust')"}
    return {
        "mode": "verified",
        "files": sum(files for _, files, _ in gathered),
        "bytes": sum(size for _, _, size in gathered),
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


def apply(
    checkpoint: Path,
    components: dict[str, Component],
    plan: dict[str, Any],
    *,
    rederive: Any,
    process_group: Any,
    before: dict[str, Any] | None,
) -> dict[str, str]:
    """Read, set every component; on any failure put every one back from ``before``, the
    copy of the state :func:`keep_previous` took (see :mod:`staging`). Returns the actions
    taken.

    ``rederive`` re-derives this rank's RNG states when the saved ones do not apply.
    Without ``before`` (``rollback=False``) a failure of the read or of a
    ``load_state_dict`` leaves the components partly loaded (the loaders' cursors and the RNG
    states are still put back), and is logged as such.
    """
    saved, current = plan["manifest"], plan["current"]
    read = functools.partial(_read, checkpoint, current, process_group)
    if before is not None:
        steps = [("read", read, _restorer(components, before))]
    else:
        steps = [("read", read, _partly_loaded)]
    for name, component in components.items():
        if component.kind == LOADER:
            loader, cursor = component.obj, saved["loaders"][name]["state"]
            undo = _putter(loader, loader.state_dict())
            steps.append((name, _cursor_setter(name, loader, cursor), undo))
        else:  # put back by the read's step (the read itself changed its tensors)
            steps.append((name, _putter(component.stateful, current[name]), _nothing))
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


def keep_previous(components: dict[str, Component]) -> staging.Previous:
    """Start copying what every component but the loaders holds (an optimizer without state
    yet is emptied again on a failure instead)."""
    statefuls = {n: c.stateful for n, c in components.items() if c.kind != LOADER}
    fresh = {n for n, c in components.items() if c.fresh_optimizer}
    return staging.Previous(statefuls, discarded=fresh)


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
        staging.read(checkpoint, current, process_group=process_group)
    except (Exception, CheckpointException) as error:  # DCP's (a BaseException) or ours
        raise CheckpointError(
            f"{checkpoint}: reading the checkpoint failed ({type(error).__name__}: {error}); "
            "the state is put back as it was: load an earlier checkpoint"
        ) from error


def _restorer(components: dict[str, Component], before: dict[str, Any]) -> Any:
    def restore() -> None:
        for name, state in before.items():
            components[name].stateful.load_state_dict(state)
            components[name].undo()  # a fresh optimizer is fresh again

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
