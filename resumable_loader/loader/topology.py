"""Which data-parallel rank this process is, how many share the data, and the group they form."""

from __future__ import annotations

import math
import os
import warnings
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch.distributed as dist
from torch.utils.data import DistributedSampler

from resumable_loader.errors import ConfigError, TopologyWarning


class DataParallel(NamedTuple):
    """This process's place among the ranks that split the data, and where collectives run.

    ``group`` is the process group that ``state_dict(check_ranks=True)`` gathers over (None: the
    default group). ``job_wide`` marks coordinates taken from a ``dp_group`` or ``device_mesh``:
    the ranks that differ only in tensor, context or pipeline position must then share the seed
    as well as the position, so a default seed is broadcast over the whole job, and a
    multi-dimensional data-parallel mesh (no single group) compares the cursors of the whole job.
    """

    rank: int
    world_size: int
    group: Any = None
    job_wide: bool = False


class InjectedSampler(NamedTuple):
    """What a framework's injected ``DistributedSampler`` says: the coordinates, shuffle, seed
    and whether the epoch's tail is dropped (``drop_last``) rather than padded."""

    rank: int
    world_size: int
    shuffle: bool
    seed: int
    drop_last: bool


def injected_sampler(
    dataset: Any, sampler: Any, shuffle: bool | None, batch_sampler: Any
) -> InjectedSampler | None:
    """The coordinates of a ``DistributedSampler`` over the loader's own dataset, passed with
    ``shuffle=False`` and no batch_sampler: what Lightning's DDP puts into a rebuilt loader
    (``Trainer(use_distributed_sampler=True)``, the default). The loader then keeps its own
    order and takes rank, world size, shuffle, drop_last (the tail cut to a multiple of the
    world size, see ``Partition.trim``) and (unless seed= is given) the seed from it, so the
    run resumes exactly at any world size. Any other sampler (a subclass, a wrapper, one
    over another dataset) stays the user's sampler.
    """
    if type(sampler) is not DistributedSampler or sampler.dataset is not dataset:
        return None
    if shuffle is not False or batch_sampler is not None:
        return None
    return InjectedSampler(
        sampler.rank, sampler.num_replicas, sampler.shuffle, sampler.seed, sampler.drop_last
    )


def forward_set_epoch(sampler: Any, set_epoch: Callable[[int], None]) -> None:
    """Make ``sampler.set_epoch(e)`` (defined if the sampler has none) also call
    ``set_epoch(e)``, held weakly: frameworks set the epoch on the visible sampler only
    (Lightning's ``_set_sampler_epoch``), and a loader rebuilt every epoch
    (``reload_dataloaders_every_n_epochs``) must still run that epoch. A copy of the sampler
    (pickled, or deep-copied with its loader) forwards to no loader: the copied loader hooks
    its own copy again (``ResumableDataLoader.__setstate__``).
    """
    own = getattr(sampler, "set_epoch", None)
    if isinstance(own, EpochForwarder):  # hooked before (a copy's, or another loader's)
        own = own.own if own.target is None else own
    sampler.set_epoch = EpochForwarder(own, weakref.WeakMethod(set_epoch))


class EpochForwarder:
    """A sampler's ``set_epoch``: its own (if any), then the loader's (while it lives).

    Args:
        own: the sampler's own ``set_epoch``, or None.
        target: the loader's ``set_epoch``, weakly, or None (a copy's: forwards nowhere).
    """

    def __init__(self, own: Callable[[int], None] | None, target: Any) -> None:
        self.own, self.target = own, target

    def __call__(self, epoch: int) -> None:
        if self.own is not None:
            self.own(epoch)
        method = None if self.target is None else self.target()
        if method is not None:
            method(epoch)

    def __reduce__(self) -> tuple[Any, ...]:
        """A copy keeps the sampler's own ``set_epoch`` and forwards to no loader (a weak
        reference neither pickles nor should reach the original loader from a copy)."""
        return EpochForwarder, (self.own, None)


def resolve_data_parallel(
    rank: int | None,
    world_size: int | None,
    *,
    dp_group: Any = None,
    device_mesh: Any = None,
) -> DataParallel:
    """The loader's coordinates: from ``dp_group`` (a process group), else from ``device_mesh``
    (a DeviceMesh whose every dimension is data-parallel, such as ``mesh["dp"]``, or a
    ``(mesh, names)`` pair naming its data-parallel dimension(s)), else as
    :func:`resolve_topology` finds them.

    Raises:
        ConfigError: both or either of them with rank=/world_size=, no process group, this
            process outside the group or mesh, or a dimension name the mesh lacks.
    """
    if dp_group is None and device_mesh is None:
        return DataParallel(*resolve_topology(rank, world_size))
    given = "dp_group=" if dp_group is not None else "device_mesh="
    if dp_group is not None and device_mesh is not None:
        raise ConfigError("pass dp_group= or device_mesh=, not both: they name the same ranks")
    if rank is not None or world_size is not None:
        raise ConfigError(
            f"{given} decides rank and world_size; pass either it or rank=/world_size=, "
            f"not both (got rank={rank!r}, world_size={world_size!r})"
        )
    if not _group_initialized():
        raise ConfigError(
            f"{given} needs an initialized torch.distributed process group: call "
            "torch.distributed.init_process_group() first"
        )
    if dp_group is not None:
        group_rank = dist.get_rank(dp_group)
        if group_rank < 0:
            raise ConfigError(
                f"dp_group=: global rank {dist.get_rank()} is not a member of the group it was "
                "given; pass the data-parallel group this process belongs to"
            )
        return DataParallel(group_rank, dist.get_world_size(dp_group), dp_group, job_wide=True)
    return _from_mesh(device_mesh)


def _from_mesh(device_mesh: Any) -> DataParallel:
    """Row-major rank over the data-parallel dimensions, as ``DeviceMesh._flatten`` orders them."""
    from torch.distributed.device_mesh import DeviceMesh

    mesh, names = device_mesh if isinstance(device_mesh, tuple) else (device_mesh, None)
    if not isinstance(mesh, DeviceMesh):
        raise ConfigError(
            "device_mesh= takes a DeviceMesh whose dimensions are all data-parallel (e.g. "
            f'mesh["dp"]) or a (mesh, "dp") pair, got {type(mesh).__name__}'
        )
    if names is not None:
        try:
            mesh = mesh[names]
        except (KeyError, RuntimeError, ValueError) as error:
            raise ConfigError(
                f"device_mesh=: the mesh has dimensions {mesh.mesh_dim_names}, and {names!r} "
                f"does not name data-parallel dimension(s) of it ({error})"
            ) from None
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        raise ConfigError(
            f"device_mesh=: global rank {dist.get_rank()} is not part of {mesh}; pass the "
            "mesh this process belongs to"
        )
    rank = 0
    for size, index in zip(mesh.shape, coordinate, strict=True):
        rank = rank * size + index
    group = mesh.get_group(0) if mesh.ndim == 1 else None
    return DataParallel(rank, math.prod(mesh.shape), group, job_wide=True)


def resolve_topology(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): explicit arguments win, then an initialized process group, then the
    RANK and WORLD_SIZE environment variables (as torchrun sets them), then (0, 1).

    Values read from the environment without a process group are warned about once a process
    (a :class:`TopologyWarning`): under ``accelerate launch`` or a torchrun script that never
    initializes a group, each process would otherwise load its share of the data and train a
    model of its own, silently.
    """
    given = {"rank": rank, "world_size": world_size}
    if rank is None or world_size is None:
        read = [
            name for name, value in (("RANK", rank), ("WORLD_SIZE", world_size)) if value is None
        ]
        if _group_initialized():
            default_rank, default_world = dist.get_rank(), dist.get_world_size()
        else:
            default_rank = _env_int("RANK", 0)
            default_world = _env_int("WORLD_SIZE", 1)
            read = [name for name in read if os.environ.get(name)]
        rank = default_rank if rank is None else rank
        world_size = default_world if world_size is None else world_size
        if not _group_initialized() and read and world_size > 1:
            _warn_environment(read, rank, world_size)
    for name, value in (("rank", rank), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an int, got {value!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        found = ", ".join(
            f"{name}={value}" + ("" if given[name] is not None else f" ({_source(variable)})")
            for name, value, variable in (
                ("rank", rank, "RANK"),
                ("world_size", world_size, "WORLD_SIZE"),
            )
        )
        raise ConfigError(
            f"need world_size >= 1 and 0 <= rank < world_size, got {found}; give "
            "both rank= and world_size=, or neither (the process group's, or torchrun's)"
        )
    return rank, world_size


def _source(variable: str) -> str:
    """Where a value not given came from: the process group, the variable, or the default."""
    if _group_initialized():
        return "not given: the process group's"
    return f"not given: ${variable}" if os.environ.get(variable) else "not given: the default"


_warned: set[tuple[str, ...]] = set()  # the variables warned about, once per process


def _warn_environment(read: list[str], rank: int, world_size: int) -> None:
    if tuple(read) in _warned:
        return
    _warned.add(tuple(read))
    warnings.warn(
        f"resumable_loader: rank={rank}, world_size={world_size}, read from the environment "
        f"({' and '.join(read)}) while no torch.distributed process group is initialized: "
        f"this process loads 1/{world_size} of the data, and nothing keeps the "
        "processes' models in step. If they train one model, initialize the process group "
        "(or, under accelerate launch, create the Accelerator) before building the loader, or "
        "pass rank= and world_size= (or dp_group=); if each trains on its own, pass rank=0, "
        "world_size=1",
        TopologyWarning,
        stacklevel=4,
    )


def _group_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def agree_on_seed(seed: int, world_size: int, *, job_wide: bool = False) -> int:
    """The seed every rank uses when none was given: rank 0's draw, broadcast to the others.

    Each rank drawing its own default seed would give each rank a different order, and the
    ranks would deliver overlapping samples; so with several ranks the draw is shared through
    the process group, and without one an explicit seed is required. Coordinates from a
    ``dp_group`` or ``device_mesh`` broadcast over the whole job (a collective: every rank
    builds its loader at the same point), since tensor/pipeline peers in other data-parallel
    groups must draw the same augmentations too.
    """
    if job_wide:
        if dist.get_world_size() == 1:
            return seed
    elif world_size == 1:
        return seed
    elif not _group_initialized():
        raise ConfigError(
            f"world_size={world_size} but no torch.distributed process group is "
            "initialized, so the ranks cannot agree on a default seed: pass the same seed= on "
            "every rank"
        )
    holder = [seed]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_cursors(
    state: dict, world_size: int, *, group: Any = None, job_wide: bool = False
) -> list[dict]:
    """The cursors to compare for ``state_dict(check_ranks=True)``, all-gathered (a collective:
    every rank of the group must call it together): over the data-parallel group, or over the
    whole job for a multi-dimensional data-parallel mesh, whose ranks all hold one cursor.

    Raises ConfigError rather than torch's bare ValueError when no process group is
    initialized, since the fix is on the caller's side: initialize one, or skip the check; and
    when the default group is not the loader's ``world_size`` ranks, since the gather would then
    compare other processes' cursors, or too few.
    """
    if not _group_initialized():
        raise ConfigError(
            "state_dict(check_ranks=True) with world_size > 1 all-gathers every rank's cursor, "
            "which needs an initialized torch.distributed process group, and none is: call "
            "torch.distributed.init_process_group() first (under torchrun), or call "
            "state_dict() without check_ranks"
        )
    size = dist.get_world_size(group)
    if not job_wide and size != world_size:
        raise ConfigError(
            f"state_dict(check_ranks=True): the loader has world_size={world_size} "
            f"but the process group has {size} ranks, so their cursors cannot be compared; "
            "construct the loader with the group's world size (the default) or with dp_group=, "
            "or call state_dict() without check_ranks"
        )
    states: list[dict] = [{} for _ in range(size)]
    dist.all_gather_object(states, state, group=group)
    return states
