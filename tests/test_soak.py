"""Short crash-and-resume soak (a few SIGKILLs); `python tests/soak.py drive` runs a long one."""

from __future__ import annotations

import random

import pytest
from soak import drive, write_soak_shards


@pytest.mark.slow
def test_killed_and_resumed_job_logs_the_continuous_stream(tmp_path):
    shard_dir = write_soak_shards(tmp_path / "shards")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    outcome = drive(shard_dir, state_dir, kills=3, rng=random.Random(2026))
    print(outcome)
    assert outcome["finished"]
    assert outcome["kills"] == 3, outcome["runs"]  # every run but the last died mid-run
    assert outcome["samples"] == outcome["expected"]
    assert outcome["match"]
