"""Watches each batch's wait on torch's workers: a per-batch ``timeout``, a warning when stalled.

torch restarts its timeout whenever any worker sends a batch, so a hung worker behind a slow
healthy one is noticed only much later; and with torch's default ``timeout=0`` a hung worker
blocks forever, silently. A :class:`BatchWatch` stands in for the torch iterator's queue read
(``_try_get_data``): it gives up once the batch's own deadline has passed (torch then raises
its "DataLoader timed out" error), and every ``stall_warning`` seconds without the batch it
logs which worker is loading it, its positions and sample ids, and for how long. It also
records the ref torch sends with each task index, which is how it names the positions.
Outside ``next()`` (e.g. while persistent workers restart) torch's own timeout applies.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from typing import Any

from torch.utils.data import _utils

from resumable_loader.loader.keyed_fetch import BatchRef, SampleRef

logger = logging.getLogger("resumable_loader")
_SHOWN_IDS = 8  # sample ids a stall warning lists


class BatchWatch:
    """Bounds and watches the wait for each batch, counted from the ``next()`` that asks."""

    def __init__(self, inner: Any, timeout: float, stall_warning: float) -> None:
        # The class's functions and a weak reference: bound methods of ``inner`` stored on it
        # would make a reference cycle, keeping an abandoned iterator's workers alive until a
        # gc run.
        cls = type(inner)
        self._read, self._next_index = cls._try_get_data, cls._next_index
        self._inner = weakref.ref(inner)
        self._timeout, self._stall_warning = timeout, stall_warning
        self._sent: dict[int, Any] = {}  # torch's task index -> the ref it sent
        self._asked = self._expires = self._warn_at = math.inf

    @classmethod
    def install(
        cls, inner: Any, *, timeout: float, stall_warning: float, sent: list[Any]
    ) -> BatchWatch | None:
        """Watch ``inner``'s batch waits (once per torch iterator); None when there is nothing
        to watch (no workers, or neither a timeout nor a stall warning). ``sent``: the refs
        torch sent before this (its prefetch, in task order), for the stall warning."""
        read = getattr(inner, "_try_get_data", None)
        if read is None or (timeout <= 0 and stall_warning <= 0):
            return None
        watch = read if isinstance(read, BatchWatch) else cls(inner, timeout, stall_warning)
        watch._sent = dict(enumerate(sent))  # persistent workers: task indices restart at 0
        if watch is not read:
            inner._try_get_data = watch
            inner._next_index = watch.next_index
        return watch

    def next_index(self) -> Any:
        """torch's ``_next_index``, remembering the ref under the task index it is sent as."""
        inner = self._inner()
        ref = self._next_index(inner)
        for done in [task for task in self._sent if task < inner._rcvd_idx]:
            del self._sent[done]  # delivered (or failed) before now
        self._sent[inner._send_idx] = ref
        return ref

    def arm(self) -> None:
        now = self._asked = time.monotonic()
        self._expires = now + self._timeout if self._timeout > 0 else math.inf
        self._warn_at = now + self._stall_warning if self._stall_warning > 0 else math.inf

    def disarm(self) -> None:
        self._asked = self._expires = self._warn_at = math.inf

    def __call__(self, timeout: float = _utils.MP_STATUS_CHECK_INTERVAL) -> tuple[bool, Any]:
        now = time.monotonic()
        if now >= self._warn_at:
            self._warn(now - self._asked)
            self._warn_at = now + self._stall_warning
        if now >= self._expires:
            return False, None
        wait = min(timeout, self._expires - now, self._warn_at - now)
        return self._read(self._inner(), wait)

    def _warn(self, waited: float) -> None:
        inner = self._inner()
        task = inner._rcvd_idx
        info = inner._task_info.get(task, ())
        worker = f"worker {info[0]}" if info else "a worker"
        logger.warning(
            "no batch has arrived for %.0f s: %s is loading %s; it may be hung (a deadlock, a "
            "stuck read, a loop that never ends in __getitem__). Pass timeout= to raise a "
            "WorkerError instead, or stall_warning= to change when this is logged",
            waited,
            worker,
            _describe(self._sent.get(task)),
        )


def _describe(ref: Any) -> str:
    """Positions and sample ids of a ref, as a stall warning names them."""
    if isinstance(ref, SampleRef):
        return f"epoch {ref.epoch} position {ref.position} (sample id {ref.id})"
    if isinstance(ref, BatchRef) and ref.ids:
        last = ref.start + (len(ref.ids) - 1) * ref.key_stride
        ids = ref.ids[:_SHOWN_IDS] + (["..."] if len(ref.ids) > _SHOWN_IDS else [])
        shown = "[" + ", ".join(map(str, ids)) + "]"
        return f"epoch {ref.epoch} positions {ref.start}..{last} (sample ids {shown})"
    return "its next batch"
