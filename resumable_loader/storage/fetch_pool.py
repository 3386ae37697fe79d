"""A thread pool that starts the fetch needed first, not the one submitted first.

The reader submits fetches in order of first use, but not always: a block held back while the
cache was full of blocks still to be used is submitted later, behind spans needed long after
it. A first-in-first-out pool then ran it last: with a node cache of a tenth of the data, a
read waited 47-57 s behind thousands of later spans (``bench_prefetch.py``). Here each fetch
carries its first use and the pool's threads always take the earliest.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class FirstUsePool:
    """``threads`` threads (started as work arrives, daemons) running submitted calls in order
    of their ``first_use`` (ties: in order of submission)."""

    def __init__(self, threads: int, name: str) -> None:
        self._size, self._name = threads, name
        self._queue: list[tuple[int, int, Future, Callable[..., Any], tuple]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, first_use: int, call: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``call(*args)`` on a thread, before every call with a later ``first_use``."""
        future: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("FirstUsePool.submit after shutdown")
            heapq.heappush(self._queue, (first_use, next(self._order), future, call, args))
            if self._idle == 0 and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                self._idle += 1
                while not self._queue and not self._closed:
                    self._ready.wait()
                self._idle -= 1
                if not self._queue:
                    return  # shut down
                _, _, future, call, args = heapq.heappop(self._queue)
            _run(future, call, args)
            # an idle thread holds nothing: a call's object (a dataset's reader) is freed once
            # nothing else holds it, and with it this pool
            del future, call, args

    def shutdown(self) -> None:
        """Cancel what has not started; calls running finish; the threads then end."""
        with self._ready:
            self._closed = True
            waiting, self._queue = self._queue, []
            self._ready.notify_all()
        for _, _, future, _, _ in waiting:
            future.cancel()


def _run(future: Future, call: Callable[..., Any], args: tuple) -> None:
    """Run ``call(*args)`` for ``future``, unless it was cancelled."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = call(*args)
    except BaseException as error:  # handed to whoever waits on the future
        future.set_exception(error)
    else:
        future.set_result(result)
