"""Worker failures: a clear error, no worker left behind, and an exact resume afterwards."""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest
from resume_harness import AugmentedDataset, run, split_batch
from torch.utils.data import default_collate, get_worker_info

from resumable_loader import ResumableDataLoader, WorkerError
from resumable_loader.loader import shutdown

N = 24
BAD_SAMPLE = 13

# When a worker dies mid-transfer, torch's own error path probes the open-file limit with
# NamedTemporaryFiles; a signal arriving meanwhile can leave those objects to the garbage
# collector, which then warns. They are torch's internals, not ours: tolerated in this module,
# and collected after each test so they cannot surface in another one.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test():
    yield
    gc.collect()


class Faulty(AugmentedDataset):
    """Fails at BAD_SAMPLE in the chosen way while ``armed``; records worker pids in a folder."""

    def __init__(self, mode: str, pid_dir: Path) -> None:
        super().__init__(N)
        self.mode = mode
        self.pid_dir = pid_dir
        self.armed = True

    def __getitem__(self, index):
        (self.pid_dir / str(os.getpid())).touch()
        if self.armed and index == BAD_SAMPLE:
            if self.mode == "raise":
                raise ValueError(f"cannot decode sample {index}")
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.mode == "hang":
                time.sleep(60)
            if self.mode == "exit":  # torch's worker loop takes it as a stop and exits
                raise KeyboardInterrupt
        return super().__getitem__(index)


def collate_failing_on_bad_sample(samples):
    if any(s["id"] == BAD_SAMPLE for s in samples):
        raise ValueError("collate cannot batch this")
    return default_collate(samples)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def wait_gone(pids: list[int], seconds: float = 15) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize(
    "mode,error,timeout",
    [
        ("raise", ValueError, 0),
        ("collate", ValueError, 0),
        # torch's SIGCHLD handler raises wherever the main thread is: inside our iterator that
        # becomes a WorkerError (a RuntimeError); between two next() calls it is torch's own.
        ("kill", RuntimeError, 0),
        # a worker gone with batches still queued: the main process's fetch of a batch's
        # shared tensors failed as a bare FileNotFoundError (or ConnectionResetError)
        ("exit", WorkerError, 0),
        ("hang", WorkerError, 2),
    ],
)
@pytest.mark.slow
def test_failure_is_raised_cleaned_up_and_resumable(tmp_path, mode, error, timeout):
    dataset = Faulty(mode, tmp_path)

    def loader():
        failing = mode == "collate" and dataset.armed
        return ResumableDataLoader(
            dataset,
            batch_size=2,
            shuffle=True,
            seed=3,
            num_workers=2,
            timeout=timeout,
            collate_fn=collate_failing_on_bad_sample if failing else None,
        )

    first = loader()
    delivered, state = [], first.state_dict()
    started = time.monotonic()
    try:  # as a training loop would: the error and its traceback are dropped after handling
        for batch in first:
            delivered.extend(split_batch(batch))
            state = first.state_dict()
    except error as caught:
        message = str(caught)
    else:
        pytest.fail(f"no {error.__name__} raised")
    elapsed = time.monotonic() - started
    assert first.state_dict() == state  # the failed batch is not counted as delivered
    if mode == "hang":
        assert "timed out" in message and elapsed < timeout + 3
    if mode in ("kill", "exit"):
        assert re.search("killed by signal|exited unexpectedly|worker died", message)
        assert "resume" in message
        if "No batch was lost" in message:  # ours (torch's own when its SIGCHLD handler fired)
            assert "load_state_dict(state) on a new loader, or on this one before" in message
    # A batch's exception leaves torch's iterator usable (the loop may go on, as with torch);
    # its workers stop when it is collected: torch's re-raise leaves a reference cycle.
    gc.collect()
    worker_pids = [int(p.name) for p in tmp_path.iterdir() if int(p.name) != os.getpid()]
    assert worker_pids and wait_gone(worker_pids) == []

    dataset.armed = False
    resumed = loader()
    resumed.load_state_dict(state)
    rest, _ = run(resumed, 1)
    expected, _ = run(loader(), 1)
    assert [(0, *x) for x in delivered] + rest == expected


@pytest.mark.parametrize("mode", ["raise", "collate"])
def test_workers_stop_as_soon_as_a_loop_that_caught_a_workers_error_lets_go(tmp_path, mode):
    # torch re-raises a worker's exception from a local variable: a cycle through its frames
    # that held the iterator until the garbage collector ran, whose weakref callbacks then
    # closed the index queues before the iterator's shutdown could use them, so the workers
    # were joined 5 s each. With the collector off, they must still go at once.
    dataset = Faulty(mode, tmp_path)
    collate = collate_failing_on_bad_sample if mode == "collate" else None
    loader = ResumableDataLoader(dataset, batch_size=2, num_workers=2, seed=0, collate_fn=collate)
    gc.disable()
    try:
        with pytest.raises(ValueError, match="Caught ValueError in DataLoader worker"):
            for _ in loader:
                pass
        worker_pids = [int(p.name) for p in tmp_path.iterdir() if int(p.name) != os.getpid()]
        assert worker_pids and wait_gone(worker_pids, seconds=3) == []
    finally:
        gc.enable()


def test_an_iterator_freed_by_the_garbage_collector_stops_its_workers_at_once(tmp_path):
    # The collector runs the queues' weakref callbacks (which stop their feeder threads)
    # before torch's __del__; its shutdown message then never reached the workers, and each
    # was joined for 5 s, then terminated.
    dataset = Faulty("raise", tmp_path)
    dataset.armed = False
    batches = iter(ResumableDataLoader(dataset, batch_size=2, num_workers=2, seed=0))
    next(batches)
    worker_pids = [int(p.name) for p in tmp_path.iterdir() if int(p.name) != os.getpid()]
    cycle = [batches]
    cycle.append(cycle)
    del batches, cycle
    started = time.monotonic()
    gc.collect()
    assert time.monotonic() - started < 3  # (two 5 s joins before)
    assert worker_pids and wait_gone(worker_pids, seconds=3) == []


def test_persistent_workers_keep_one_torch_iterators_queues_however_many_epochs(tmp_path):
    dataset = Faulty("raise", tmp_path)
    dataset.armed = False
    loader = ResumableDataLoader(
        dataset, batch_size=4, num_workers=2, seed=0, persistent_workers=True
    )

    def finalizers() -> int:  # those of torch iterators: others may come and go meanwhile
        held = (o.peek() for o in gc.get_objects() if type(o) is weakref.finalize)
        return sum(type(h[0]).__name__ == "_MultiProcessingDataLoaderIter" for h in held if h)

    list(loader)
    after_one = finalizers()
    for _ in range(4):
        list(loader)
    assert finalizers() == after_one


def test_main_process_failure_keeps_state_exact():
    class FailOnce(AugmentedDataset):
        armed = True

        def __getitem__(self, index):
            if self.armed and index == BAD_SAMPLE:
                raise OSError("disk hiccup")
            return super().__getitem__(index)

    dataset = FailOnce(N)
    loader = ResumableDataLoader(dataset, batch_size=3, shuffle=True, seed=8)
    seen = []
    with pytest.raises(OSError):
        for batch in loader:
            seen.extend(split_batch(batch))
    state = loader.state_dict()
    assert state["position"] == len(seen)
    dataset.armed = False
    fresh = ResumableDataLoader(dataset, batch_size=3, shuffle=True, seed=8)
    fresh.load_state_dict(state)
    rest, _ = run(fresh, 1)
    assert [(0, *x) for x in seen] + rest == run(
        ResumableDataLoader(dataset, batch_size=3, shuffle=True, seed=8), 1
    )[0]


class SlowAndHung(AugmentedDataset):
    """Worker 0 hangs at its second batch; worker 1 is healthy but slow."""

    def __getitem__(self, index):
        worker = get_worker_info().id
        if worker == 0 and index >= 4:
            time.sleep(60)
        if worker == 1:
            time.sleep(0.6)
        return super().__getitem__(index)


@pytest.mark.slow
def test_timeout_bounds_each_batch_even_behind_a_slow_healthy_worker():
    # torch alone restarts its timeout whenever the healthy worker sends a batch (one every
    # 1.2 s here), so it would notice the hung worker only after several timeouts.
    loader = ResumableDataLoader(
        SlowAndHung(N), batch_size=2, num_workers=2, timeout=2, prefetch_factor=8, seed=0
    )
    batches = iter(loader)
    next(batches)  # worker 0's first batch: samples 0 and 1
    asked = time.monotonic()
    with pytest.raises(WorkerError, match="timed out"):
        while True:
            next(batches)
            asked = time.monotonic()
    assert time.monotonic() - asked < 2 + 1


@pytest.mark.parametrize("raised", [EOFError, ConnectionResetError])
@pytest.mark.slow
def test_a_users_eof_or_connection_error_in_a_worker_is_not_a_dead_worker(raised):
    class Remote(AugmentedDataset):
        def __getitem__(self, index):
            raise raised("compressed file ended before the end-of-stream marker")

    loader = ResumableDataLoader(Remote(N), batch_size=2, num_workers=2, seed=0)
    with pytest.raises(raised, match=r"Caught \w+ in DataLoader worker process") as caught:
        next(iter(loader))
    assert not isinstance(caught.value, WorkerError)


@pytest.mark.slow
def test_persistent_workers_killed_mid_epoch_restart_at_the_next_iter(tmp_path):
    dataset = Faulty("kill", tmp_path)
    loader = ResumableDataLoader(
        dataset, batch_size=2, shuffle=True, seed=3, num_workers=2, persistent_workers=True
    )
    delivered, state = [], loader.state_dict()
    with pytest.raises(RuntimeError, match=r"exited unexpectedly|killed by signal|worker died"):
        for batch in loader:
            delivered.extend(split_batch(batch))
            state = loader.state_dict()
    assert loader.state_dict() == state
    old_workers = [int(p.name) for p in tmp_path.iterdir() if int(p.name) != os.getpid()]
    assert old_workers and wait_gone(old_workers) == []
    dataset.armed = False  # new workers get a fresh copy of the dataset
    loader.load_state_dict(state)
    rest, _ = run(loader, 1)
    dataset.armed = False
    expected, _ = run(ResumableDataLoader(dataset, batch_size=2, shuffle=True, seed=3), 1)
    assert [(0, *x) for x in delivered] + rest == expected


def test_an_abandoned_iterator_with_a_timeout_is_freed_at_once():
    # Its workers stop when torch's iterator is freed; no reference cycle may delay that.
    loader = ResumableDataLoader(
        AugmentedDataset(N), batch_size=2, num_workers=2, timeout=30, seed=0
    )
    batches = iter(loader)
    next(batches)
    inner = weakref.ref(batches._inner)
    gc.disable()
    try:
        del batches
        assert inner() is None
    finally:
        gc.enable()


def test_a_shutdown_still_running_at_exit_is_finished_not_torn_down(tmp_path):
    """A hung worker's shutdown waits 5 s in torch before it terminates it; the process's exit
    terminates the workers and joins the shutdown thread (a daemon thread torn down inside it
    aborted the process: "terminate called without an active exception", exit 134)."""
    loader = ResumableDataLoader(
        Faulty("hang", tmp_path), batch_size=2, num_workers=2, timeout=1, seed=0
    )
    with pytest.raises(WorkerError, match="timed out"):
        for _ in loader:
            pass
    threads = [t for t in threading.enumerate() if t.name == "resumable-loader-shutdown"]
    assert threads and all(t.is_alive() for t in threads)  # the hung worker: 5 s in torch
    started = time.monotonic()
    shutdown._finish_at_exit()  # what atexit runs
    assert not any(t.is_alive() for t in threads)
    assert time.monotonic() - started < 3
    assert not any(alive(int(pid.name)) for pid in tmp_path.iterdir())


def test_a_script_that_caught_a_timeout_exits_cleanly(tmp_path):
    script = tmp_path / "caught.py"
    script.write_text(
        textwrap.dedent(
            """
            import time, torch, resumable_loader
            class Hangs(torch.utils.data.Dataset):
                fingerprint = "hangs"
                def __len__(self): return 16
                def __getitem__(self, i):
                    if i == 5: time.sleep(1000)
                    return i
            loader = resumable_loader.DataLoader(
                Hangs(), batch_size=4, num_workers=2, timeout=1, seed=0
            )
            try:
                for batch in loader: pass
            except resumable_loader.WorkerError:
                print("caught")
            """
        )
    )
    for _ in range(3):  # it aborted in 1 to 5 runs of 14 before
        done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
        assert (done.returncode, done.stdout.strip()) == (0, b"caught"), done.stderr[-500:]
