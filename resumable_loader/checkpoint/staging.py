"""All or nothing: keep a copy of the current state, read, apply; on any failure, put it back.

``dcp.load`` reads into the tensors it is given, which for a model are its parameters: a read
that fails halfway, or a component whose ``load_state_dict`` raises, would leave the state half
old, half new. So before DCP reads, a copy of what every component holds is taken (tensors
cloned); DCP then reads in place, as it always does (a staging copy of the new state would cost
a second copy of fresh memory and its page faults, ~2x the read), the non-tensor values into
plain dicts that no component holds, and the components are set one after the other. If the
read fails, or a component's ``load_state_dict`` raises (even a ``BaseException``), every
component is put back from that copy before the error goes on. Every check of the checkpoint
(content checksums included) and of the state has passed before the copy is taken. The price
is memory: one more copy of the state for the length of the load.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from resumable_loader.checkpoint import collective

logger = logging.getLogger("resumable_loader.checkpoint")


def _tree(value: Any, leaf: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with its containers copied, tensors through ``leaf``, anything else deep-copied
    (so that DCP, which sets non-tensor entries in the containers, never reaches a live one)."""
    if isinstance(value, torch.Tensor):
        return leaf(value)
    if isinstance(value, Mapping):
        return {key: _tree(item, leaf) for key, item in value.items()}
    if isinstance(value, list):
        return [_tree(item, leaf) for item in value]
    if isinstance(value, tuple):
        return tuple(_tree(item, leaf) for item in value)
    return copy.deepcopy(value)


def previous(statefuls: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of what each of ``statefuls`` holds now (its state_dict(), tensors cloned)."""
    with torch.no_grad():
        return {name: _tree(s.state_dict(), torch.Tensor.clone) for name, s in statefuls.items()}


def read(checkpoint: Path, current: Mapping[str, Any], *, process_group: Any) -> None:
    """Read the checkpoint into ``current`` (each component's state_dict(), as validated):
    its tensors in place, its other values into those dicts."""
    with collective.single_process_quiet():
        dcp.load(
            dict(current),
            checkpoint_id=checkpoint,
            process_group=process_group,
            no_dist=not collective.active(),
        )


def apply(steps: list[tuple[str, Callable[[], None], Callable[[], None]]]) -> Callable[[], None]:
    """Run each ``(name, set, put_back)`` in order, and return what puts them all back; if a
    ``set`` raises, run ``put_back`` of it and of every one before it (newest first), then
    raise the error as it was. A ``put_back`` that raises too is logged, and the others still
    run."""
    done: list[tuple[str, Callable[[], None]]] = []

    def put_back() -> None:
        for name, undo in reversed(done):
            try:
                undo()
            except BaseException as error:  # the others must still be put back
                logger.error(
                    "component '%s' could not be put back after a failed load (%s: %s); its "
                    "state is undefined: rebuild it or load a checkpoint again",
                    name,
                    type(error).__name__,
                    error,
                )

    try:
        for name, setter, undo in steps:
            done.append((name, undo))
            setter()
    except BaseException:
        put_back()
        raise
    return put_back
