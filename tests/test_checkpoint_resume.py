"""Continuous training vs SIGKILLed mid-epoch (during a save) and resumed: the same loss curve.

Three processes run tests/checkpoint_job.py: one trains 20 steps without stopping; one is
SIGKILLed inside the save of step 15 (mid-epoch 1), leaving step 10 as its newest complete
checkpoint; a third resumes from it through the Checkpointer. Spliced at step 10, the killed
and the resumed runs' losses equal the continuous run's as floats (max |delta loss| = 0.0), on
the same samples, and the final weights, optimizer moments and EMA are the same bits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resumable_loader.checkpoint.layout import CheckpointDirectory

JOB = Path(__file__).with_name("checkpoint_job.py")
STEPS, EVERY = 20, 5


def job(checkpoint: Path, out: Path, *args: str) -> int:
    command = [sys.executable, str(JOB), str(checkpoint), str(out)]
    command += [f"--steps={STEPS}", f"--save-every={EVERY}", *args]
    env = {**os.environ, "PYTHONWARNINGS": "error"}  # as pytest does here
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode in (0, -9), f"job failed:\n{done.stderr[-4000:]}"
    return done.returncode


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rank-0.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_killed_and_resumed_training_matches_continuous(tmp_path):
    assert job(tmp_path / "c1", tmp_path / "continuous") == 0
    killed = job(tmp_path / "c2", tmp_path / "killed", "--kill-in-save=15:3")
    assert killed == -9
    assert CheckpointDirectory(tmp_path / "c2").complete_steps() == [5, 10]
    assert job(tmp_path / "c2", tmp_path / "resumed", "--resume=strict") == 0

    continuous = lines(tmp_path / "continuous")
    killed = lines(tmp_path / "killed")
    resumed = lines(tmp_path / "resumed")
    decision = resumed[0]["decision"]
    assert decision["step"] == 10 and decision["rederived"] == []
    saved = {r["saved"]: r["digest"] for r in killed if "saved" in r}
    assert resumed[0]["loaded"] == saved[10]  # the state loaded is the state saved, bit for bit

    def steps(records: list[dict]) -> list[dict]:
        return [r for r in records if "step" in r]

    spliced = [r for r in steps(killed) if r["step"] <= 10] + steps(resumed)
    expected = steps(continuous)
    assert [r["step"] for r in spliced] == [r["step"] for r in expected] == list(range(1, 21))
    assert [r["entries"] for r in spliced] == [r["entries"] for r in expected]
    losses = [float.fromhex(r["loss"]) for r in spliced]
    reference = [float.fromhex(r["loss"]) for r in expected]
    assert max(abs(a - b) for a, b in zip(losses, reference, strict=True)) == 0.0
    assert resumed[-1]["final"] == continuous[-1]["final"]
