"""Iterating a ResumableDataLoader: advance the cursor per delivered batch, end failures cleanly.

The loader's iterator wraps torch's. Each batch handed to the caller moves the cursor by the
advance its index sampler recorded; StopIteration marks the epoch complete. Any other error
stops torch's workers at once, and a dead or hung worker becomes a WorkerError saying the state
is still exact.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from torch.utils.data._utils import signal_handling

from resumable_loader.errors import WorkerError
from resumable_loader.index_sampler import OrderedBatchSampler

if TYPE_CHECKING:
    from resumable_loader.loader import ResumableDataLoader

# torch's messages for a worker that died (signal, exit) or missed its timeout.
_WORKER_FAILURE = re.compile(r"DataLoader worker \(pids?|DataLoader timed out")


class ResumableIterator(Iterator[Any]):
    """Wraps torch's iterator; advances the loader's cursor for each batch handed out."""

    def __init__(self, loader: ResumableDataLoader, inner: Iterable[Any]) -> None:
        self._loader = loader
        self._inner = iter(inner)
        refs = loader._refs
        self._length = (
            refs.partition.num_batches(loader._position)
            if isinstance(refs, OrderedBatchSampler)
            else len(refs)
        )

    def __next__(self) -> Any:
        try:
            batch = next(self._inner)
        except StopIteration:
            self._loader._exhausted()
            raise
        except BaseException as error:
            raise self._stop_after(error)  # noqa: B904 (the cause is set by _stop_after)
        self._loader._delivered()
        return batch

    def _stop_after(self, error: BaseException) -> BaseException:
        """Stop torch's workers after ``error``; return what to raise.

        A failed fetch ends the iteration, so the workers stop now rather than when the iterator
        is garbage-collected (torch then waits for each in turn). A dead or hung worker becomes a
        WorkerError; its clean-up (torch terminates a hung worker only after a grace period)
        runs in the background so the error is raised at once.
        """
        shutdown = getattr(self._inner, "_shutdown_workers", lambda: None)
        num_workers = self._loader.num_workers
        _stop_watching_workers(self._inner)
        try:
            failure = _worker_failure(error, num_workers)
            if failure is None:
                shutdown()
                return error
        except RuntimeError as late:  # torch's SIGCHLD handler raises wherever we are
            failure = _worker_failure(late, num_workers)
            if failure is None:
                raise
            error = late
        threading.Thread(target=shutdown, name="resumable-loader-shutdown", daemon=True).start()
        worker_error = WorkerError(
            f"{failure}. No batch was lost: state_dict() still describes exactly what was "
            "delivered, so a new loader can resume from it"
        )
        worker_error.__cause__ = error
        return worker_error

    def __len__(self) -> int:
        """Batches this iteration yields in all (fewer than ``len(loader)`` after a resume)."""
        return self._length


def _stop_watching_workers(inner: Any) -> None:
    """Unregister an iterator's workers from torch's SIGCHLD check (as its own shutdown does).

    Once a failure is being handled, another worker's death must not raise a second
    RuntimeError from the signal handler in the middle of the clean-up.
    """
    if getattr(inner, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(inner))
        inner._worker_pids_set = False


def _worker_failure(error: BaseException, num_workers: int) -> str | None:
    """Describe ``error`` if it means a worker died or hung, else None."""
    if isinstance(error, RuntimeError) and _WORKER_FAILURE.search(str(error)):
        return str(error)
    if num_workers > 0 and isinstance(error, (ConnectionError, EOFError)):
        # The worker died while the main process was receiving a batch's shared tensors.
        return f"a DataLoader worker died while sending a batch ({type(error).__name__}: {error})"
    return None
