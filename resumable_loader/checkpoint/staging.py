"""All or nothing: read a checkpoint into staging copies, then apply every component or none.

``dcp.load`` reads into the tensors it is given, which for a model are its parameters: a read
that fails halfway, or a component whose ``load_state_dict`` raises, would leave the state half
old, half new. So DCP reads into fresh tensors of the same shapes (``empty_like``; every element
is overwritten, since the keys and shapes were checked before), while a copy of what each
component holds now is taken beside it; only then are the components set, one after the other,
and if one of them raises (even a ``BaseException``), the ones already set and the one that
raised are put back from that copy before the error goes on. The price is memory: for the
length of the load, two more copies of the state (staged and previous) besides the live one.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
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


def _previous(statefuls: Mapping[str, Any]) -> dict[str, Any]:
    with torch.no_grad():
        return {name: _tree(s.state_dict(), torch.Tensor.clone) for name, s in statefuls.items()}


def read(
    checkpoint: Path,
    current: Mapping[str, Any],
    statefuls: Mapping[str, Any],
    *,
    process_group: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(staged, previous): the checkpoint read into copies shaped like ``current`` (each
    component's state_dict(), as validated), and a copy of what ``statefuls`` hold now, taken
    while DCP reads. Nothing is applied."""
    staged = {name: _tree(state, torch.empty_like) for name, state in current.items()}
    with ThreadPoolExecutor(max_workers=1) as pool:
        before = pool.submit(_previous, statefuls)  # torch's copies release the GIL
        with collective.single_process_quiet():
            dcp.load(
                staged,
                checkpoint_id=checkpoint,
                process_group=process_group,
                no_dist=not collective.active(),
            )
        return staged, before.result()


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
