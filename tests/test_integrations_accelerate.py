"""Accelerate on CPU: ``accelerate launch`` on 2 processes, killed mid-epoch, resumed on 1;
gradient accumulation over epochs that are no multiple of its steps, in this process.

Each launched run is tests/accelerate_job.py under ``accelerate launch`` (its torchrun
launcher; gloo on CPU). The loader goes through ``prepare_loader``, its cursor through
``save_state`` and ``load_state``.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("accelerate", reason="pip install -e '.[test-frameworks]' -c constraints.txt")
import torch
from accelerate import Accelerator
from accelerate_job import EPOCHS, N
from integration_harness import (
    Run,
    assert_covers_epochs,
    assert_kill_and_resume,
    assert_resumes,
    run_job,
)
from torch.utils.data import DataLoader, IterableDataset

from resumable_loader import ConfigError, ResumableDataLoader, ResumeWarning
from resumable_loader.integrations.accelerate import DeviceLoader, prepare_loader

JOB = Path(__file__).with_name("accelerate_job.py")


def launch(out: Path, processes: int, *args: str, killed: bool = False) -> list[dict]:
    with socket.socket() as s:  # a free port for this job's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu" if processes > 1 else "--cpu",
        f"--num_processes={processes}",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={port}",
        str(JOB),
        str(out),
        *args,
    ]
    return run_job(command, out, killed=killed, cwd=JOB.parent)


@pytest.fixture(scope="module")
def continuous(tmp_path_factory) -> Run:
    """The uninterrupted run: 2 processes, 4 samples each per step, no workers, 2 epochs; it
    saves its state every 3 steps as the killed runs do."""
    out = tmp_path_factory.mktemp("continuous") / "run"
    steps = launch(out, 2, "--batch-size=4")
    assert len(steps) == EPOCHS * N // 8
    assert_covers_epochs(steps, N, EPOCHS)
    return Run(out, steps)


def on_one(out: Path, *args: str) -> list[dict]:
    """One process, twice the batch: the same global batches."""
    return launch(out, 1, "--batch-size=8", *args)


@pytest.mark.slow
def test_two_processes_killed_mid_epoch_resume_on_one(tmp_path, continuous):
    """Killed with 2 workers per process, resumed with 1."""
    assert_kill_and_resume(
        lambda out, *args, **kwargs: launch(out, 2, "--batch-size=4", *args, **kwargs),
        on_one,
        continuous.steps,
        tmp_path,
        checkpoint="step3",
        head_workers=2,
        tail_workers=1,
    )


@pytest.mark.slow
def test_two_processes_without_workers_resume_on_one(tmp_path, continuous):
    """The continuous run's state of step 3 (no workers), resumed with none. A run killed
    after step 5 leaves the same state for step 3: the kill is the test above's."""
    assert_resumes(on_one, continuous, continuous.steps, tmp_path, "step3", 0)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_accelerates_own_prepare_path_killed_on_two_resumes_exactly_on_one(
    tmp_path, continuous, workers
):
    """``accelerator.prepare(model, optimizer, loader)`` with ``use_stateful_dataloader=True``:
    the prepared loader iterates our order's batches, each sample loaded under its own key (in
    the main process or a worker), and torchdata's saved batch count skips what was trained
    (the same global batch: 2 x 4 -> 1 x 8; torchdata keeps the number of workers). The stream
    equals ``prepare_loader``'s continuous run."""
    assert_kill_and_resume(
        lambda out, *args, **kwargs: launch(
            out, 2, "--standard", "--batch-size=4", *args, **kwargs
        ),
        lambda out, *args: launch(out, 1, "--standard", "--batch-size=8", *args),
        continuous.steps,
        tmp_path,
        checkpoint="step3",
        head_workers=workers,
        tail_workers=workers,
    )


class FakeAccelerator:
    process_index, num_processes, device, non_blocking = 0, 2, "cpu", False


def test_prepare_loader_refuses_a_loader_split_otherwise():
    loader = ResumableDataLoader(list(range(8)), batch_size=2, seed=1, rank=0, world_size=1)
    with pytest.raises(ConfigError, match="process 0 of 2"):
        prepare_loader(FakeAccelerator(), loader)
    with pytest.raises(ConfigError, match="takes a ResumableDataLoader"):
        prepare_loader(FakeAccelerator(), object())


def test_a_loader_replaced_by_accelerate_prepare_is_noticed():
    loader = ResumableDataLoader(list(range(8)), batch_size=2, shuffle=True, seed=1)
    replaced = Accelerator(cpu=True).prepare(loader)
    assert replaced is not loader  # Accelerate's own DataLoaderShard
    with pytest.warns(ResumeWarning, match="prepare_loader"):
        next(iter(replaced))
    with pytest.warns(ResumeWarning, match="another loader replaced"):
        state = loader.state_dict()
    assert state["position"] == 0  # our cursor never moved: resuming from it would repeat


def test_skip_first_batches_on_a_prepared_loader_says_to_skip_nothing():
    """Accelerate's usual recipe (load_state, then skip_first_batches) would rebuild a plain
    DataLoader; it fails saying why, not with a bare missing attribute."""
    accelerator = Accelerator(cpu=True)
    loader = ResumableDataLoader(list(range(8)), batch_size=2, shuffle=True, seed=1)
    prepared = prepare_loader(accelerator, loader)
    with pytest.raises(AttributeError, match=r"load_state\(\) already put this loader where"):
        accelerator.skip_first_batches(prepared, 3)
    assert len(list(prepared)) == 4


def test_iterating_the_loader_itself_is_not_noticed():
    loader = ResumableDataLoader(list(range(8)), batch_size=2, shuffle=True, seed=1)
    assert len(list(loader)) == 4  # pytest turns any warning into an error here


ACCUMULATE, BATCHES = 3, 7  # an epoch of 7 batches: no multiple of the accumulation steps
SAMPLES = 2 * BATCHES


def accumulating_loop(
    make_batches: Callable[[Accelerator], object],
    *,
    after_batch: Callable[[Accelerator], None] = lambda accelerator: None,
) -> tuple[list[tuple[int, list[int], bool]], int, list[torch.Tensor]]:
    """A user's two epochs under ``accelerator.accumulate``: per batch (epoch, ids, whether
    gradients synced), the optimizer steps taken, and the final weights."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATE)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    steps = []
    optimizer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    batches = make_batches(accelerator)
    records = []
    for epoch in range(2):
        batches.set_epoch(epoch)
        for batch in batches:
            with accelerator.accumulate(model):
                x = batch.float().unsqueeze(1) / SAMPLES
                loss = torch.nn.functional.mse_loss(model(x), 2 * x)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            records.append((epoch, batch.tolist(), accelerator.sync_gradients))
            after_batch(accelerator)
    assert not accelerator.gradient_state.in_dataloader  # each epoch's iteration ended it
    return records, len(steps), [p.detach().clone() for p in model.parameters()]


def ours(num_workers: int = 0, **kwargs) -> ResumableDataLoader:
    return ResumableDataLoader(
        list(range(SAMPLES)), batch_size=2, seed=5, num_workers=num_workers, **kwargs
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_gradient_accumulation_steps_at_each_epochs_end_as_with_accelerates_own_loader(
    num_workers,
):
    theirs = accumulating_loop(lambda a: a.prepare(DataLoader(list(range(SAMPLES)), batch_size=2)))
    records, steps, weights = accumulating_loop(lambda a: prepare_loader(a, ours(num_workers)))
    synced = [b for b, (_, _, sync) in enumerate(records[:BATCHES], 1) if sync]
    assert synced == [3, 6, 7]  # the epoch's last, short accumulation steps too
    assert records[BATCHES:] == [(1, ids, sync) for _, ids, sync in records[:BATCHES]]
    assert steps == 6 == theirs[1]
    assert records == theirs[0]  # the same batches, synced at the same batches
    assert all(torch.equal(w, t) for w, t in zip(weights, theirs[2], strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_cursor_after_batch_b_resumes_at_b_plus_1_under_accumulate(tmp_path, num_workers):
    """No look-ahead moves the cursor: a state taken as the loop holds batch b (the epoch's
    last too, when Accelerate's own loader has already fetched the next) continues at b + 1."""
    loader = ours(num_workers, shuffle=True)
    states, saved = [], {}

    def save(accelerator: Accelerator) -> None:
        states.append(loader.state_dict())
        if len(states) in (1, BATCHES):
            saved[len(states)] = tmp_path / f"batch{len(states)}"
            accelerator.save_state(str(saved[len(states)]))

    records, _, _ = accumulating_loop(lambda a: prepare_loader(a, loader), after_batch=save)
    stream = [(epoch, ids) for epoch, ids, _ in records]
    assert len({tuple(ids) for _, ids in stream}) > BATCHES  # epochs in other orders
    for b, state in enumerate(states[:-1], 1):
        assert resumed_stream(state=state) == stream[b:], f"state after batch {b}"
    for b, checkpoint in saved.items():
        assert resumed_stream(checkpoint=checkpoint) == stream[b:], f"save_state at batch {b}"


def resumed_stream(*, state: dict | None = None, checkpoint: Path | None = None) -> list:
    """The rest of the two epochs from a loader state or an ``accelerator.save_state`` dir."""
    accelerator = Accelerator(cpu=True)
    loader = ours(shuffle=True)
    batches = prepare_loader(accelerator, loader)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
    else:
        loader.load_state_dict(state)
    stream = []
    for epoch in range(loader.state_dict()["epoch"], 2):
        batches.set_epoch(epoch)
        stream.extend((epoch, batch.tolist()) for batch in batches)
    return stream


def test_remainder_keeps_the_real_samples_of_the_gathered_last_batch():
    """gather_for_metrics concatenates the ranks' last batches and keeps ``remainder`` of
    them: exactly the epoch's samples not yet seen, also after a resume with another batch
    size (where Accelerate's own ``length % total_batch_size`` would be wrong)."""
    length = 10

    def gathered_epoch(batch_size: int, state: dict | None = None) -> list[int]:
        per_rank = []
        for rank in range(2):
            loader = ResumableDataLoader(
                list(range(length)), batch_size=batch_size, seed=3, rank=rank, world_size=2
            )
            if state is not None:
                loader.load_state_dict(state)
            batches = DeviceLoader(loader, "cpu")
            per_rank.append([(b.tolist(), batches.remainder) for b in batches])
        gathered = []
        for (first, remainder), (second, _) in zip(*per_rank, strict=True):
            both = first + second
            gathered.extend(both[:remainder] if remainder > 0 else both)
        return gathered

    assert gathered_epoch(4) == list(range(length))  # 8, then 2 real of 4 + 4 padding
    head = ResumableDataLoader(list(range(length)), batch_size=2, seed=3, rank=0, world_size=2)
    next(iter(head))  # 4 samples delivered across both ranks
    tail = gathered_epoch(3, head.state_dict())  # 6 left: one full batch, remainder 0
    assert tail == list(range(4, length))
    assert gathered_epoch(3) == list(range(length))  # 6, then 4 real of 6 + 2 padding


def test_device_loader_refuses_an_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(4))

    loader = ResumableDataLoader(Stream(), batch_size=2, seed=1, rank=0, world_size=1)
    with pytest.raises(ConfigError, match="IterableDataset"):
        DeviceLoader(loader, "cpu")


def test_a_loop_that_breaks_out_leaves_no_active_loader():
    accelerator = Accelerator(cpu=True)
    batches = prepare_loader(accelerator, ours())
    for _ in batches:
        assert accelerator.gradient_state.active_dataloader is batches
        break
    assert not accelerator.gradient_state.in_dataloader
