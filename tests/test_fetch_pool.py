"""The fetch pool starts the fetch needed first, whatever the order it was submitted in."""

from __future__ import annotations

import threading

import pytest

from resumable_loader.storage.fetch_pool import FirstUsePool


def test_calls_run_in_order_of_first_use_not_of_submission() -> None:
    pool, gate, ran = FirstUsePool(1, "test"), threading.Event(), []
    pool.submit(0, gate.wait)  # holds the one thread while the rest queue up
    futures = [pool.submit(use, ran.append, use) for use in (50, 30, 90, 10, 30)]
    gate.set()
    for future in futures:
        future.result(timeout=5)
    assert ran == [10, 30, 30, 50, 90]
    pool.shutdown()


def test_errors_reach_the_caller_and_shutdown_cancels_what_has_not_started() -> None:
    pool, gate = FirstUsePool(1, "test"), threading.Event()
    running = pool.submit(0, gate.wait)
    failed = pool.submit(1, int, "not a number")
    later = pool.submit(2, int, "7")
    gate.set()
    with pytest.raises(ValueError, match="not a number"):
        failed.result(timeout=5)
    assert later.result(timeout=5) == 7 and running.result(timeout=5) is True
    gate2, started = threading.Event(), threading.Event()
    held = pool.submit(0, lambda: started.set() or gate2.wait())
    pending = pool.submit(1, int, "8")
    assert started.wait(timeout=5)
    pool.shutdown()
    gate2.set()
    assert held.result(timeout=5) is True and pending.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(0, int, "9")


def test_threads_grow_to_the_bound_with_the_work() -> None:
    pool, gate = FirstUsePool(3, "test"), threading.Event()
    started = threading.Semaphore(0)

    def hold() -> None:
        started.release()
        gate.wait()

    futures = [pool.submit(use, hold) for use in range(5)]
    for _ in range(3):
        assert started.acquire(timeout=5)
    assert not started.acquire(timeout=0.2)  # three threads, no more: two calls wait
    gate.set()
    for future in futures:
        future.result(timeout=5)
    pool.shutdown()
