"""Which rank this process is and how many ranks share the data."""

from __future__ import annotations

import os

import torch.distributed as dist

from resumable_loader.errors import ConfigError


def resolve_topology(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): explicit arguments win, then an initialized process group, then the
    RANK and WORLD_SIZE environment variables (as torchrun sets them), then (0, 1).
    """
    if rank is None or world_size is None:
        if _group_initialized():
            default_rank, default_world = dist.get_rank(), dist.get_world_size()
        else:
            default_rank = _env_int("RANK", 0)
            default_world = _env_int("WORLD_SIZE", 1)
        rank = default_rank if rank is None else rank
        world_size = default_world if world_size is None else world_size
    for name, value in (("rank", rank), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an int, got {value!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(
            f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, "
            f"world_size={world_size}"
        )
    return rank, world_size


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


def agree_on_seed(seed: int, world_size: int) -> int:
    """The seed every rank uses when none was given: rank 0's draw, broadcast to the others.

    Each rank drawing its own default seed would give each rank a different order, and the
    ranks would deliver overlapping samples; so with several ranks the draw is shared through
    the process group, and without one an explicit seed is required.
    """
    if world_size == 1:
        return seed
    if not _group_initialized():
        raise ConfigError(
            f"world_size={world_size} but no torch.distributed process group is initialized, so "
            "the ranks cannot agree on a default seed: pass the same seed= on every rank"
        )
    holder = [seed]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_cursors(state: dict, world_size: int) -> list[dict]:
    """Every rank's cursor, all-gathered through the process group (a collective: all ranks
    must call it together), so that ``state_dict(check_ranks=True)`` can compare them.

    Raises ConfigError rather than torch's bare ValueError when no process group is
    initialized, since the fix is on the caller's side: initialize one, or skip the check; and
    when the group is not the loader's ``world_size`` ranks, since the gather would then
    compare other processes' cursors, or too few.
    """
    if not _group_initialized():
        raise ConfigError(
            "state_dict(check_ranks=True) with world_size > 1 all-gathers every rank's cursor, "
            "which needs an initialized torch.distributed process group, and none is: call "
            "torch.distributed.init_process_group() first (under torchrun), or call "
            "state_dict() without check_ranks"
        )
    if dist.get_world_size() != world_size:
        raise ConfigError(
            f"state_dict(check_ranks=True): the loader has world_size={world_size} but the "
            f"process group has {dist.get_world_size()} ranks, so their cursors cannot be "
            "compared; construct the loader with the group's world size (the default), or "
            "call state_dict() without check_ranks"
        )
    states: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(states, state)
    return states
