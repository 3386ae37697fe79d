"""All or nothing: stage the checkpoint beside the live state, check it, then swap it in.

DCP loads into the tensors it is given, which for a model are its parameters: a read that
fails halfway, or a component whose ``load_state_dict`` raises, would leave the state half old,
half new. So the default load reads the checkpoint into a *staged* state instead (:class:`Staged`:
one fresh tensor per tensor of each component's state_dict(), same shape, dtype and strides;
the other values deep-copied), hashing every file as it reads it (:mod:`staged_read`). Only
once every checksum and check has passed is it applied: each live tensor that owns its memory
(a model's parameter or buffer, an optimizer's state tensor) is pointed at its staged storage
(``live.set_(staged)`` under ``no_grad``: the Python objects stay, so optimizers and modules
hold the same Parameters, with their ``grad`` and ``requires_grad``), then every component's
``load_state_dict`` runs on the staged state (its copies into swapped tensors are no-ops; it
sets the non-tensor values). The old storages are the rollback: if anything raises, every
swapped tensor is pointed back at its old storage and every component's ``load_state_dict``
runs on the state it had, so nothing is copied for the rollback. A tensor that cannot be
swapped (a view into a bigger storage, a non-contiguous or non-CPU tensor, two parameters or
buffers of a model over one storage, a DTensor/FSDP2
shard, a CUDA tensor, memory shared with other processes or pinned, a tensor of a component
other than a model or an optimizer, whose ``load_state_dict`` may copy into memory we cannot
see) is staged as well and copied in by ``load_state_dict``; its current values are cloned for
the rollback. An optimizer that had no state when the load began (a process that starts by
loading) is read into directly: its state was made by the checks (DCP's zero-lr step) and is
emptied again on a failure. A view that someone else holds of a swapped tensor
(``w = model.weight[0]``, a NumPy array over it) keeps showing the old values: hold the tensor,
not a view.

``load(..., rollback=False)`` stages nothing (for a state too large to hold twice): the files
are hashed first, then read in place (:func:`read_in_place`, :mod:`direct_read`), and a failure
after the read began leaves the components partly loaded.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from resumable_loader.checkpoint import collective
from resumable_loader.checkpoint.components import MODEL, OPTIMIZER, Component
from resumable_loader.checkpoint.direct_read import DirectReader, plain

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


class Staged:
    """The state a checkpoint is read into, beside the live one, and how to swap it in and out.

    Args:
        components: the load's components.
        current: each non-loader component's state_dict() (as the checks took it).

    Attributes:
        state: what ``dcp.load`` reads into: ``current`` with a fresh tensor per tensor.
        before: what puts each component back: ``current``'s tensors (the old storages; a
            clone for those that cannot be swapped), its other values deep-copied.
        swaps: (live tensor, staged tensor, the live tensor's old storage) per swappable one.
    """

    def __init__(self, components: dict[str, Component], current: dict[str, Any]) -> None:
        self.swaps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.state: dict[str, Any] = {}
        self.before: dict[str, Any] = {}
        claimed: set[int] = set()  # live tensors already swapped (tied weights: only once)
        for name, state in current.items():
            self._stage(name, components[name], state, claimed)

    def _stage(self, name: str, component: Component, state: Any, claimed: set[int]) -> None:
        """Stage one component's state_dict() ``state``: fresh tensors, swaps, what to keep."""
        find = _live_finder(component)
        fresh: dict[int, torch.Tensor] = {}
        keep: dict[int, torch.Tensor] = {}

        def stage(tensor: torch.Tensor) -> torch.Tensor:
            if id(tensor) in fresh:  # the same tensor twice in one state_dict()
                return fresh[id(tensor)]
            if component.fresh_optimizer:  # made by the checks, emptied again on a failure:
                keep[id(tensor)] = fresh[id(tensor)] = tensor  # read into, nothing to stage
                return tensor
            fresh[id(tensor)] = staged = _fresh(tensor)
            live = find(tensor) if _owns_storage(tensor) else None
            if live is not None and id(live) not in claimed:
                claimed.add(id(live))
                self.swaps.append((live, staged, live.detach()))
                keep[id(tensor)] = tensor  # its storage is the old one, left untouched
            else:  # copied into by load_state_dict: its values are kept
                keep[id(tensor)] = tensor.detach().clone()
            return staged

        with torch.no_grad():
            self.state[name] = _tree(state, stage)
        self.before[name] = _tree(state, lambda tensor: keep[id(tensor)])

    def swap_in(self) -> None:
        """Point every swappable live tensor at its staged storage.

        Through ``.data`` (``set_data``), which keeps a parameter's autograd node: ``set_``
        gave it a new gradient accumulator, and the hooks on the old one (DDP's gradient
        all-reduce: the ranks' weights drifted apart after a load) never fired again."""
        for live, staged, _ in self.swaps:
            live.data = staged

    def swap_out(self) -> None:
        """Point every swappable live tensor back at its old storage (a no-op for those not
        swapped in yet)."""
        for live, _, old in reversed(self.swaps):
            live.data = old


def _fresh(tensor: torch.Tensor) -> torch.Tensor:
    """New memory shaped like ``tensor`` (a DTensor keeps its mesh and placements)."""
    local = getattr(tensor, "_local_tensor", None)
    if local is not None:  # a DTensor: a fresh local shard of the same layout
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(
            torch.empty_like(local),
            tensor.device_mesh,
            tensor.placements,
            run_check=False,
            shape=tensor.shape,
            stride=tensor.stride(),
        )
    return torch.empty_like(tensor)


def _owns_storage(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a plain CPU tensor that is the whole of its storage."""
    return (
        plain(tensor)
        and tensor.device.type == "cpu"
        and tensor.numel() > 0
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    )


def _live_finder(component: Component) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """What gives, for a tensor of ``component``'s state_dict(), the live tensor that holds
    that memory (None: not known, so not swapped).

    A model's state_dict() holds detached aliases of its parameters and buffers: the live one
    is the parameter or buffer with the same storage and layout. Two of them sharing one
    storage (tied with ``b.data = a.data``, or one a view of the other) are not swapped: a swap
    would point one at fresh memory and untie them, and the other's copy-in would write into
    the old storage, the rollback's; they are copied into, which keeps the tie. An
    optimizer's holds its state tensors themselves, which its ``load_state_dict`` replaces
    (never copies into). Anything else's ``load_state_dict`` may copy into memory of its own:
    not swapped."""
    if component.kind == MODEL:
        model = component.obj
        sharing: dict[int, list[torch.Tensor]] = {}
        for t in itertools.chain(model.parameters(), model.buffers()):
            try:
                pointer = t.untyped_storage().data_ptr()
            except RuntimeError:  # a DTensor (an FSDP2 shard): no storage of its own to ask
                continue
            sharing.setdefault(pointer, []).append(t)
        by_storage = {
            pointer: tensors[0]
            for pointer, tensors in sharing.items()
            if len(tensors) == 1 and _swappable(tensors[0])
        }

        def of_model(tensor: torch.Tensor) -> torch.Tensor | None:
            live = by_storage.get(tensor.untyped_storage().data_ptr())
            same = live is not None and (live.shape, live.stride(), live.dtype) == (
                tensor.shape,
                tensor.stride(),
                tensor.dtype,
            )
            return live if same else None

        return of_model
    if component.kind == OPTIMIZER:
        held = {
            id(value)
            for per_param in component.obj.state.values()
            for value in per_param.values()
            if isinstance(value, torch.Tensor)
        }
        return lambda tensor: tensor if id(tensor) in held and _swappable(tensor) else None
    return lambda tensor: None


def _swappable(live: torch.Tensor) -> bool:
    """Whether a live tensor may be pointed at other memory: it owns its storage, which is
    neither shared with other processes (``share_memory_()``: they would no longer see it)
    nor pinned (the new memory is not)."""
    if not _owns_storage(live.detach()):  # (a Parameter is a subclass: plain() asks for none)
        return False
    if live.is_shared():
        return False
    return not (torch.cuda.is_available() and live.is_pinned())


def read_staged(
    checkpoint: Path, staged: Staged, reader: FileSystemReader, *, process_group: Any
) -> None:
    """Read the checkpoint into ``staged.state`` through ``reader``."""
    _dcp_load(checkpoint, staged.state, reader, process_group)


def read_in_place(checkpoint: Path, current: Mapping[str, Any], *, process_group: Any) -> None:
    """Read the checkpoint into ``current`` (each component's state_dict(), as validated):
    its tensors in place, its other values into those dicts (``rollback=False``)."""
    _dcp_load(checkpoint, current, DirectReader(checkpoint), process_group)


def _dcp_load(
    checkpoint: Path, state: Mapping[str, Any], reader: FileSystemReader, process_group: Any
) -> None:
    with collective.single_process_quiet():
        dcp.load(
            dict(state),
            checkpoint_id=checkpoint,
            storage_reader=reader,
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
