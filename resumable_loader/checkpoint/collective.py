"""The few collectives a checkpoint needs, which are no-ops without a process group.

Ranks must agree on every decision before anything collective runs: if one rank refused a load
and the others went on into ``dcp.load``, they would wait for it forever. So each check's
outcome is gathered and any rank's refusal is raised on all of them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist

from resumable_loader.errors import CheckpointError


def active() -> bool:
    """Whether a default process group is up (torchrun) rather than one process alone."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def barrier() -> None:
    if active():
        dist.barrier()


def all_gather(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    if not active():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def raise_if_any(error: BaseException | None, what: str = "refused the load") -> None:
    """Raise ``error`` here, or the first other rank's (as a CheckpointError saying the rank
    ``what``), if any has one; a collective: every rank goes on past it, or none."""
    if not active():
        if error is not None:
            raise error
        return
    messages = all_gather(None if error is None else str(error))
    if error is not None:
        raise error
    for other, message in enumerate(messages):
        if message is not None:
            raise CheckpointError(f"rank {other} {what}: {message}")


_NOTICE = "torch.distributed is .*unavailable or uninit"  # DCP's notice in one process


@contextlib.contextmanager
def single_process_quiet() -> Iterator[None]:
    """Silence DCP's notice that it runs in one process: that is what we asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOTICE)
        yield


def silence_single_process_notice() -> None:
    """The same, process-wide: DCP's async save gives the notice from its own thread, later."""
    warnings.filterwarnings("ignore", message=_NOTICE)
