"""All or nothing: keep a copy of the current state, read, apply; on any failure, put it back.

DCP loads into the tensors it is given, which for a model are its parameters: a read that
fails halfway, or a component whose ``load_state_dict`` raises, would leave the state half old,
half new. So a copy of what every component holds is taken (tensors cloned, except an
optimizer's that had no state when the load began, which is emptied again instead), in a
thread of its own while the checkpoint is verified and checked (:class:`Previous`). Once every
check has passed and the copy is complete, the checkpoint is read in place (:mod:`direct_read`:
whole tensors straight from the file into their targets, so the copy replaces DCP's own
temporary tensors rather than adding to them), the non-tensor values into plain dicts that no
component holds, and the components are set one after the other. If the read fails, or a
component's ``load_state_dict`` raises (even a ``BaseException``), every component is put back
from that copy before the error goes on. The price is memory: one more copy of the state for
the length of the load, and the time to fault that memory in (see docs/checkpoint.md).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from resumable_loader.checkpoint import collective
from resumable_loader.checkpoint.direct_read import DirectReader
from resumable_loader.errors import CheckpointError

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


class Previous:
    """A copy of what each of ``statefuls`` holds now (its state_dict(), tensors cloned), taken
    in a thread of its own while the load goes on verifying and checking: the hashing waits on
    the disk, the copy on page faults, so they overlap.

    The ``state_dict()`` calls are made here, in the caller's thread; only the cloning runs in
    the other. The tensors of the ones named in ``discarded`` are not cloned: their values are
    thrown away on a failure anyway (an optimizer that had no state when the load began is
    emptied again), so only their other values need putting back; their state_dict() is
    taken by :meth:`result`, once the checks have made their state.
    """

    THREAD = "checkpoint-rollback-copy"

    def __init__(self, statefuls: Mapping[str, Any], *, discarded: Collection[str] = ()) -> None:
        self._statefuls = dict(statefuls)
        self._discarded = set(discarded)
        now = {n: s.state_dict() for n, s in statefuls.items() if n not in self._discarded}
        self._copies: dict[str, Any] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._copy, args=(now,), name=self.THREAD)
        self._thread.start()

    def _copy(self, now: dict[str, Any]) -> None:
        try:
            with torch.no_grad():
                self._copies = {
                    name: _tree(state, torch.Tensor.clone) for name, state in now.items()
                }
        except BaseException as error:  # raised by result(), in the load's thread
            self._error = error

    def result(self) -> dict[str, Any]:
        """The copy, in the order of ``statefuls`` (waits for the thread)."""
        self._thread.join()
        if self._error is not None:
            raise CheckpointError(
                f"copying the current state for the rollback failed ({type(self._error).__name__}"
                f": {self._error}); nothing was changed: free memory, or load with "
                "rollback=False (no copy; see its window in docs/checkpoint.md)"
            ) from self._error
        with torch.no_grad():
            return {
                name: _tree(stateful.state_dict(), _same)
                if name in self._discarded
                else self._copies[name]
                for name, stateful in self._statefuls.items()
            }

    def close(self) -> None:
        """Wait for the thread and drop the copy (after the load, or its refusal)."""
        self._thread.join()
        self._copies = {}


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
