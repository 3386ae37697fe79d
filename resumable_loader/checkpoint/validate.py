"""Every check a load makes before it applies anything, against the manifest and DCP's metadata.

Each check raises :class:`~resumable_loader.errors.CheckpointError` naming the component, the
field, the saved and the current value and the fix, and none changes anything: a load that
fails here leaves the model, optimizer, loader and generators as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from resumable_loader.checkpoint.components import (
    LOADER,
    Component,
    mixture_phases,
    schedule_so_far,
)
from resumable_loader.errors import CheckpointError, ConfigError, StateDictError

_FLEXIBLE = "or load with mode='flexible' to resume with the new setting"


def component_names(manifest: dict[str, Any], found: dict[str, Component]) -> None:
    """The same components, of the same kinds, in the checkpoint and in ``state``."""
    saved = manifest["components"]
    missing, extra = sorted(set(saved) - set(found)), sorted(set(found) - set(saved))
    if missing:
        raise CheckpointError(
            f"components {missing}: in the checkpoint (kinds "
            f"{[saved[n]['kind'] for n in missing]}) but not in state; add them to the state "
            "passed to load(), or save a checkpoint without them"
        )
    if extra:
        raise CheckpointError(
            f"components {extra}: in state but not in the checkpoint (which has "
            f"{sorted(saved)}); remove them from the state passed to load(), since DCP would "
            "leave them as they are and the resume would not be complete"
        )
    for name, component in found.items():
        if saved[name]["kind"] != component.kind:
            raise CheckpointError(
                f"component '{name}': saved a {saved[name]['kind']} ({saved[name]['type']}), "
                f"state has a {component.kind} ({component.type_name}); pass the same kind of "
                "object under that name"
            )


def topology(
    manifest: dict[str, Any], *, mode: str, world_size: int, cuda_devices: int
) -> dict[str, tuple[Any, Any]]:
    """Old -> new process layout; in strict mode any change is refused."""
    changed = {}
    for field, now in (("world_size", world_size), ("cuda_devices", cuda_devices)):
        then = manifest["world_size"] if field == "world_size" else manifest["rng"]["cuda_devices"]
        if then != now:
            changed[field] = (then, now)
    if mode == "strict" and changed:
        field, (then, now) = next(iter(changed.items()))
        raise CheckpointError(
            f"field '{field}': saved {then}, now {now}; mode='strict' resumes the same "
            f"layout: run with {field} {then}, {_FLEXIBLE} (RNG states are then re-derived)"
        )
    return changed


def loader(name: str, saved: dict[str, Any], obj: Any, *, mode: str) -> dict[str, tuple[Any, Any]]:
    """The saved cursor is accepted by ``obj`` (every check its ``load_state_dict`` makes: the
    dataset, an explicit seed, a mixture's past, a sampler's state); old -> new loader
    settings (strict: none)."""
    try:
        obj.check_state_dict(saved["state"])
    except StateDictError as error:
        raise CheckpointError(f"component '{name}' (loader): {error}") from None
    changed = {}
    for field in ("world_size", "batch_size", "num_workers"):
        then, now = saved[field], getattr(obj, field)
        if then != now:
            changed[f"{name}.{field}"] = (then, now)
    past = saved.get("schedule")
    if past is not None:  # a mixture's schedule up to the saved place, as this loader has it
        cursor = saved["state"]
        try:
            now = schedule_so_far(obj.state_at(cursor["epoch"], cursor["position"]))
        except (StateDictError, ConfigError) as error:
            raise CheckpointError(f"component '{name}' (loader): {error}") from None
        if past != now:
            changed[f"{name}.schedule"] = (past, now)
    phases, now_phases = saved.get("phases"), mixture_phases(obj)
    if phases is not None and phases != now_phases:  # absent from manifests before it was kept
        changed[f"{name}.phases"] = (phases, now_phases)
    if mode == "strict" and changed:
        field, (then, now) = next(iter(changed.items()))
        raise CheckpointError(
            f"component '{name}' (loader), field '{field.split('.', 1)[1]}': saved {then}, "
            f"now {now}; mode='strict' resumes the same data stream and layout: use the saved "
            f"value, {_FLEXIBLE}"
        )
    return changed


def tensors(metadata: Metadata, current: Mapping[str, Any], found: dict[str, Component]) -> None:
    """Every key of every component in both places, tensors of the same shape and dtype.

    ``current`` is what DCP would load into (each component's state_dict()); flattened by
    DCP's own planner, so the keys are exactly the ones ``dcp.load`` would match.
    """
    planner = DefaultLoadPlanner()
    planner.set_up_planner(dict(current), metadata, True)
    saved = metadata.state_dict_metadata
    now = planner.state_dict

    def owner(key: str) -> str:
        return key.split(".", 1)[0]

    for name, component in found.items():
        if component.kind == LOADER:
            continue
        mine = {k for k in now if owner(k) == name}
        theirs = {k for k in saved if owner(k) == name}
        inner = len(name) + 1  # keys are named within the component
        for keys, where, fix in (
            (sorted(mine - theirs), "the current object has, but the checkpoint lacks", "saved"),
            (sorted(theirs - mine), "the checkpoint has, but the current object lacks", "built"),
        ):
            if keys:
                shown = [key[inner:] for key in keys[:5]]
                raise CheckpointError(
                    f"component '{name}': keys {shown}{' ...' if len(keys) > 5 else ''} "
                    f"({len(keys)}) {where}; pass the {component.kind} as it was {fix} "
                    "(same architecture, same parameter names)"
                )
        for key in sorted(mine):
            _same_tensor(name, key[inner:], saved[key], now[key])


def _same_tensor(name: str, key: str, saved: Any, value: Any) -> None:
    is_tensor = isinstance(value, torch.Tensor)
    if isinstance(saved, TensorStorageMetadata) != is_tensor:
        raise CheckpointError(
            f"component '{name}', key '{key}': saved {'a tensor' if not is_tensor else 'a value'}"
            f", current {'a tensor' if is_tensor else type(value).__name__}; pass the object "
            "as it was saved"
        )
    if not is_tensor:
        return
    if tuple(saved.size) != tuple(value.size()) or saved.properties.dtype != value.dtype:
        raise CheckpointError(
            f"component '{name}', key '{key}': saved shape {list(saved.size)} "
            f"{saved.properties.dtype}, current {list(value.size())} {value.dtype}; build the "
            "model with the saved architecture and dtype (or convert the checkpoint first)"
        )
