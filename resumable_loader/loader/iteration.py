"""Iterating a ResumableDataLoader: move the cursor per batch handed out, turn failures into errors.

The loader's iterator wraps torch's. Each batch handed to the caller moves the cursor by the
advance its index sampler recorded; StopIteration marks the epoch complete. An exception from a
batch (the dataset or collate_fn raised) leaves torch's iterator usable, as in torch: the failed
batch is skipped if the caller goes on, and counted once the next batch is handed out, so a
``state_dict()`` taken in between still retries it. A dead or hung worker ends the iteration: the
workers stop in the background and the caller gets a WorkerError saying the state is exact.
With a ``timeout``, every batch must arrive within it of being asked for; a batch late by
``stall_warning`` is logged (see :mod:`resumable_loader.loader.watch`). Each batch torch hands
over may pass a check of the loader's before it is handed out (the bad-sample limit); a batch
that fails it is skipped as a failed batch is.
"""

from __future__ import annotations

import re
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from resumable_loader.errors import ConfigError, WorkerError
from resumable_loader.loader.shutdown import stop_workers
from resumable_loader.loader.watch import BatchWatch

# torch's messages for a worker that died (signal, exit) or missed its timeout.
_WORKER_FAILURE = re.compile(r"DataLoader worker \(pids?|DataLoader timed out")
# How torch re-raises an exception a worker caught in user code: never a worker failure.
_RERAISED = re.compile(r"^Caught \w+ in DataLoader worker process \d+")
# torch iterators whose queues are kept for their shutdown (see _keep_queues_for_shutdown).
_QUEUES_KEPT: weakref.WeakSet[Any] = weakref.WeakSet()


class ResumableIterator(Iterator[Any]):
    """Wraps torch's iterator; reports each batch handed out, so the loader moves its cursor.

    Args:
        inner: torch's iterator over the loader's refs.
        advances: the index sampler's record of this iteration (see ``refs._RefSampler``):
            per ref handed to torch, the cursor's advance once it is delivered, and whether it
            is the last.
        sent: the refs torch's iterator sent its workers before this wrapped it (its
            prefetch), in task order: what a stall warning names for them.
        length: what counts the batches this iteration yields in all, asked by ``len()`` only
            (a user's sampler without ``__len__`` iterates, as in torch; ``len()`` then raises
            torch's TypeError).
        delivered: called as ``delivered(self, samples, last=...)`` per batch handed out and
            at the end (``samples`` 0, ``last`` True).
        workers_failed: called with ``inner`` when its workers died or hung.
        num_workers, timeout, stall_warning: the loader's.
        received: called with each batch torch hands over, in order, in this process; returns
            the batch to hand out, or raises to fail it (``BadSamples.received``); None: as is.

    Attributes:
        latest: the batch handed out most recently, as ``(advance, last)``: its advance of
            the cursor (for the loader's own orders, the real samples of the whole global
            batch) and whether it is the iteration's last, known as it is handed out since the
            refs are read one ahead (Accelerate's gradient accumulation needs it); ``(0, False)``
            before the first.
    """

    def __init__(
        self,
        inner: Iterator[Any],
        *,
        advances: deque[tuple[int, bool]],
        sent: list[Any],
        length: Callable[[], int],
        delivered: Callable[..., None],
        workers_failed: Callable[[Any], None],
        num_workers: int,
        timeout: float,
        stall_warning: float,
        received: Callable[[Any], Any] | None,
    ) -> None:
        self._inner = inner
        self._received = received
        self._advances = advances
        self._delivered = delivered
        self._workers_failed = workers_failed
        self._num_workers = num_workers
        self._finished_refs = 0  # refs whose batch was handed out or failed
        self._skipped = 0  # samples of failed batches not yet added to the cursor
        self._length = length
        self._latest: tuple[int, bool] = (0, False)
        self._successor: ResumableIterator | None = None  # see begin_again()
        self._again: Callable[[], ResumableIterator | None] | None = None
        self.waited = 0.0  # seconds the caller spent in next() (waiting on the data)
        self.superseded_warned = False  # the loader warned of a batch it did not count
        self._superseded = False  # a later iteration reads the same torch iterator
        self._watch = BatchWatch.install(
            inner, timeout=timeout, stall_warning=stall_warning, sent=sent
        )
        _keep_queues_for_shutdown(inner)

    @property
    def latest(self) -> tuple[int, bool]:
        """The batch handed out most recently (see the class's attributes)."""
        return self._latest if self._successor is None else self._successor.latest

    def begin_again(self, successor: Callable[[], ResumableIterator | None]) -> None:
        """At the first ``next()``, yield the batches of ``successor()`` (None: keep these):
        this iteration delivered nothing before ``set_epoch`` asked for another epoch
        (Lightning creates the iterator, then sets the epoch), so it is begun again at that
        epoch. Its workers stop then, unless the successor reuses them (persistent workers:
        one torch iterator, reset)."""
        self._again = successor

    def superseded_by(self, newer: ResumableIterator) -> None:
        """A later ``iter()`` made ``newer``. If it reads the same torch iterator (persistent
        workers: torch resets the one it has and hands it back), that one's batches are
        ``newer``'s from now on, and a ``next()`` here raises instead of taking them (they
        would be missing from ``newer``'s stream and from the cursor)."""
        if newer._inner is self._inner:
            self._superseded = True

    def __next__(self) -> Any:
        if self._again is not None:
            again, self._again = self._again, None
            successor = again()
            if successor is not None:
                if successor._inner is not self._inner:
                    stop_workers(self._inner)
                self._successor = successor
        if self._successor is not None:
            return next(self._successor)
        if self._superseded:
            raise ConfigError(
                "this iterator was superseded by a later iter() of its loader, which with "
                "persistent_workers=True reuses the same workers (torch resets its iterator and "
                "hands it back), so its batches are the later iteration's: iterate the latest "
                "iterator, or finish this one before calling iter() again"
            )
        if self._watch is not None:
            self._watch.arm()
        began = time.perf_counter()
        try:
            batch = next(self._inner)
            if self._received is not None:
                batch = self._received(batch)
        except StopIteration:
            self._delivered(self, 0, last=True)
            raise
        except BaseException as error:
            failure = worker_failure(error, self._num_workers)
            if failure is None:
                self._skip_failed_batches()
                if self._num_workers and _RERAISED.match(str(error)):
                    _drop_cycle(error)
                raise
            raise self._stop_after(error, failure)  # noqa: B904 (the cause is set there)
        finally:
            self.waited += time.perf_counter() - began
            if self._watch is not None:
                self._watch.disarm()
        self._finished_refs += 1
        advance, last = self._latest = self._advances.popleft()
        self._delivered(self, self._skipped + advance, last=last)
        self._skipped = 0
        return batch

    def _skip_failed_batches(self) -> None:
        """Set aside the advance of every batch torch gave up on in the failed ``next()``.

        torch has finished with ``_rcvd_idx`` batches of a multi-process iteration (handed out
        or failed); a single-process one prefetches nothing, so every ref it took is finished.
        An interrupt while waiting for a worker's batch finishes none.
        """
        finished = getattr(self._inner, "_rcvd_idx", None)
        if finished is None:
            finished = self._finished_refs + len(self._advances)
        while self._finished_refs < finished and self._advances:
            self._skipped += self._advances.popleft()[0]
            self._finished_refs += 1

    def _stop_after(self, error: BaseException, failure: str) -> WorkerError:
        """Stop torch's workers (in the background) after a dead or hung worker."""
        self._workers_failed(self._inner)
        stop_workers(self._inner)
        worker_error = WorkerError(
            f"{failure}. No batch was lost: state_dict() still describes exactly what was "
            "delivered: resume from it with load_state_dict(state) on a new loader, or on this "
            "one before its next iter() (which otherwise starts the next epoch, as torch's "
            "does)"
        )
        worker_error.__cause__ = error
        return worker_error

    def __len__(self) -> int:
        """Batches this iteration yields in all (fewer than ``len(loader)`` after a resume)."""
        return self._length() if self._successor is None else len(self._successor)


def _keep_queues_for_shutdown(inner: Any) -> None:
    """Keep torch's iterator's queues alive until the iterator itself is collected.

    When the garbage collector frees a cycle that holds torch's iterator (one that a caught
    exception's traceback keeps, say), it first runs the weakref callbacks of everything in
    the cycle, among them each queue's, which stops the thread that feeds the queue's pipe;
    only then the iterator's ``__del__``, whose shutdown message to the workers then never
    leaves this process: torch waits 5 s for each worker, then terminates it. Held from here,
    the queues are not part of the cycle, so they still work when the iterator shuts down;
    this reference goes as soon as the iterator is collected.
    """
    if inner in _QUEUES_KEPT:  # persistent workers: one torch iterator for every epoch
        return
    queues = [*getattr(inner, "_index_queues", ()), getattr(inner, "_worker_result_queue", None)]
    queues = [queue for queue in queues if queue is not None]
    if queues:
        weakref.finalize(inner, queues.clear)
        _QUEUES_KEPT.add(inner)


def _drop_cycle(error: BaseException) -> None:
    """Clear the locals of torch's finished frames in the traceback of a worker's exception
    re-raised in this process, so the iterator is freed when the caller lets go of it.

    torch re-raises it from a local variable, so the exception, its traceback and their frames
    form a cycle that holds torch's iterator, and so its workers, until the garbage collector
    runs (with torch's own DataLoader that run then also waits 5 s a worker: see
    :func:`_keep_queues_for_shutdown`). Only torch's frames are there: the worker's own
    traceback is text, in the message. The frame still running (this module's) is skipped by
    ``clear_frames``.
    """
    traceback.clear_frames(error.__traceback__)


def worker_failure(error: BaseException, num_workers: int) -> str | None:
    """Describe ``error`` if it means a worker died or hung, else None."""
    if num_workers == 0 or _RERAISED.match(str(error)):
        return None
    if isinstance(error, RuntimeError) and _WORKER_FAILURE.search(str(error)):
        return str(error).strip().rstrip(".")  # the caller goes on with ". ..."
    if isinstance(error, (ConnectionError, EOFError)) or (
        isinstance(error, FileNotFoundError) and _in_resource_sharer(error)
    ):
        # The worker died while the main process was receiving a batch's shared tensors (the
        # FileNotFoundError: it had exited, its socket gone, with batches still queued).
        return f"a DataLoader worker died while sending a batch ({type(error).__name__}: {error})"
    return None


def _in_resource_sharer(error: BaseException) -> bool:
    """Whether ``error`` was raised in multiprocessing's resource_sharer, which fetches a
    shared tensor's file descriptor from the worker that sent it."""
    frames = traceback.extract_tb(error.__traceback__)
    return any(frame.filename.endswith("resource_sharer.py") for frame in frames)
