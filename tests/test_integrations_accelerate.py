"""Accelerate on CPU: ``accelerate launch`` on 2 processes, killed mid-epoch, resumed on 1.

Each run is tests/accelerate_job.py under ``accelerate launch`` (its torchrun launcher; gloo on
CPU). The loader goes through ``prepare_loader``, its cursor through ``save_state`` and
``load_state``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from accelerate import Accelerator
from accelerate_job import EPOCHS, N
from integration_harness import assert_covers_epochs, assert_same_run, run_job

from resumable_loader import ConfigError, ResumableDataLoader, ResumeWarning
from resumable_loader.integrations.accelerate import prepare_loader

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


@pytest.mark.slow
def test_two_processes_killed_mid_epoch_resume_on_one(tmp_path):
    continuous = launch(tmp_path / "continuous", 2, "--batch-size=4")
    assert len(continuous) == EPOCHS * N // 8
    assert_covers_epochs(continuous, N, EPOCHS)
    head = launch(tmp_path / "head", 2, "--batch-size=4", "--kill-at=5", killed=True)
    assert len(head) == 5
    checkpoint = tmp_path / "head" / "checkpoints" / "step3"
    tail = launch(tmp_path / "tail", 1, "--batch-size=8", f"--resume={checkpoint}")
    assert_same_run(head[:3] + tail, continuous)


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


def test_iterating_the_loader_itself_is_not_noticed():
    loader = ResumableDataLoader(list(range(8)), batch_size=2, shuffle=True, seed=1)
    assert len(list(loader)) == 4  # pytest turns any warning into an error here
