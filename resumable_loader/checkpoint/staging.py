"""All or nothing: keep a copy of the current state, read, apply; on any failure, put it back.

DCP loads into the tensors it is given, which for a model are its parameters: a read that
fails halfway, or a component whose ``load_state_dict`` raises, would leave the state half old,
half new. So before the read, a copy of what every component holds is taken (tensors cloned,
except an optimizer's that had no state when the load began, which is emptied again instead);
then the checkpoint is read in place (:mod:`direct_read`: whole tensors straight from the file
into their targets, so the copy replaces DCP's own temporary tensors rather than adding to
them), the non-tensor values into plain dicts that no component holds, and the components are
set one after the other. If the read fails, or a component's ``load_state_dict`` raises (even a
``BaseException``), every component is put back from that copy before the error goes on. Every
check of the checkpoint (content checksums included) and of the state has passed before the
copy is taken. The price is memory: one more copy of the state for the length of the load, and
the time to fault that memory in (see docs/checkpoint.md for the figures).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from resumable_loader.checkpoint import collective
from resumable_loader.checkpoint.direct_read import DirectReader

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


def previous(statefuls: Mapping[str, Any], *, discarded: Collection[str] = ()) -> dict[str, Any]:
    """A copy of what each of ``statefuls`` holds now (its state_dict(), tensors cloned).

    The tensors of the ones named in ``discarded`` are kept by reference, not cloned: their
    values are thrown away on a failure anyway (an optimizer that had no state when the load
    began is emptied again), so only their other values need putting back."""

    def leaf(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return _same if name in discarded else torch.Tensor.clone

    with torch.no_grad():
        return {name: _tree(s.state_dict(), leaf(name)) for name, s in statefuls.items()}


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def read(checkpoint: Path, current: Mapping[str, Any], *, process_group: Any) -> None:
    """Read the checkpoint into ``current`` (each component's state_dict(), as validated):
    its tensors in place, its other values into those dicts."""
    with collective.single_process_quiet():
        dcp.load(
            dict(current),
            checkpoint_id=checkpoint,
            storage_reader=DirectReader(checkpoint),
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
