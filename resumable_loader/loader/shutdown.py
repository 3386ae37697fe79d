"""Stops a failed torch iterator's workers in the background, and finishes that before exit.

torch's ``_shutdown_workers`` waits for each worker to exit (5 s for a hung one) before it
terminates it, so a loader that raises a worker's failure runs it on a thread of its own and
raises at once. A daemon thread still inside that shutdown when the interpreter exits is torn
down mid-call (the process aborts: "terminate called without an active exception"), so the
interpreter's exit first terminates the workers of every shutdown still running (they failed:
nothing of theirs is waited for) and joins its thread.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from torch.utils.data._utils import signal_handling

EXIT_JOIN_SECONDS = 10.0  # at most this long per shutdown still running at exit
_RUNNING: list[tuple[threading.Thread, Any]] = []  # (thread, torch's iterator)
_LOCK = threading.Lock()


def stop_workers(inner: Any) -> None:
    """Shut down a failed torch iterator's workers in the background.

    First unregister them from torch's SIGCHLD check (as its own shutdown does), so another
    worker's death cannot raise a second RuntimeError from the signal handler during the
    clean-up; torch terminates a hung worker only after a grace period, hence the thread.
    """
    if getattr(inner, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(inner))
        inner._worker_pids_set = False
    shutdown = getattr(inner, "_shutdown_workers", None)
    if shutdown is None:
        return
    thread = threading.Thread(target=shutdown, name="resumable-loader-shutdown", daemon=True)
    with _LOCK:
        if not _RUNNING:
            atexit.register(_finish_at_exit)  # runs before multiprocessing's (registered first)
        _RUNNING[:] = [(t, i) for t, i in _RUNNING if t.is_alive()]
        _RUNNING.append((thread, inner))
    thread.start()


def _finish_at_exit() -> None:
    """Terminate the workers of every shutdown still running, and wait for its thread."""
    with _LOCK:
        running, _RUNNING[:] = list(_RUNNING), []
    for thread, inner in running:
        if not thread.is_alive():
            continue
        for worker in getattr(inner, "_workers", ()):
            if worker.is_alive():
                worker.terminate()
        thread.join(EXIT_JOIN_SECONDS)
