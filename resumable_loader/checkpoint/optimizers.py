"""Each optimizer's class and hyperparameters, recorded at save and compared at load.

An optimizer state of one class loads into another of the same state shapes without a word
(Adam's moments into AdamW), and ``load_state_dict`` puts the saved hyperparameters over the
ones the new run was built with; either is another run than the one asked for. The manifest
keeps each optimizer's class and its ``defaults`` (the constructor's hyperparameters, which a
learning-rate schedule leaves alone: the scheduled per-group values are restored with the
state), and a load compares them: strict mode refuses a difference, flexible mode lists it.
"""

from __future__ import annotations

import json
from typing import Any

import torch


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists), or its repr if not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return repr(value)


def entry(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What the manifest keeps of ``optimizer``: its class and constructor hyperparameters."""
    kind = type(optimizer)
    defaults = {key: _plain(value) for key, value in sorted(optimizer.defaults.items())}
    return {"type": f"{kind.__module__}.{kind.__qualname__}", "defaults": defaults}


def changes(
    name: str, saved: dict[str, Any], optimizer: torch.optim.Optimizer
) -> dict[str, tuple[Any, Any]]:
    """Saved -> current class and each differing hyperparameter, keyed ``name.field``."""
    now = entry(optimizer)
    changed = {}
    if saved["type"] != now["type"]:
        changed[f"{name}.type"] = (saved["type"], now["type"])
    for key in sorted(saved["defaults"].keys() | now["defaults"].keys()):
        then, current = saved["defaults"].get(key), now["defaults"].get(key)
        if then != current:
            changed[f"{name}.{key}"] = (then, current)
    return changed
