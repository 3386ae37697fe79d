"""Data-parallel coordinates: the environment warning, dp_group= and device_mesh= (2x2 on gloo)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch.distributed as dist
from distributed_harness import augmented, consume, global_stream
from topology_mesh_job import BATCH, STOP, N
from torchrun_harness import rank_pickles, torchrun

from resumable_loader import ConfigError, ResumableDataLoader
from resumable_loader.errors import TopologyWarning
from resumable_loader.loader import topology
from resumable_loader.loader.topology import resolve_data_parallel

JOB = Path(__file__).with_name("topology_mesh_job.py")


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which environment variables this process already warned about."""
    monkeypatch.setattr(topology, "_warned", set())


def test_world_size_from_the_environment_warns_once(monkeypatch, fresh_warnings):
    assert not dist.is_initialized()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(TopologyWarning, match=r"RANK and WORLD_SIZE.*rank=0, world_size=1"):
        loader = ResumableDataLoader(augmented(N), batch_size=2, shuffle=True, seed=3)
    assert (loader.rank, loader.world_size) == (1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second loader in the same process: no warning
        ResumableDataLoader(augmented(N), batch_size=2, shuffle=True, seed=3)


@pytest.mark.parametrize(
    ("environment", "kwargs"),
    [
        ({"RANK": "1", "WORLD_SIZE": "2"}, {"rank": 1, "world_size": 2}),  # explicit
        ({"RANK": "0", "WORLD_SIZE": "1"}, {}),  # one process
        ({}, {}),  # nothing set
    ],
)
def test_no_warning_when_nothing_is_guessed(monkeypatch, fresh_warnings, environment, kwargs):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ResumableDataLoader(augmented(N), batch_size=2, shuffle=True, seed=3, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dp_group": object(), "device_mesh": object()}, "not both"),
        ({"dp_group": object(), "rank": 0}, "rank=/world_size="),
        ({"device_mesh": object(), "world_size": 2}, "rank=/world_size="),
        ({"dp_group": object()}, "init_process_group"),
        ({"device_mesh": object()}, "init_process_group"),
    ],
)
def test_bad_data_parallel_arguments_are_config_errors(kwargs, message):
    assert not dist.is_initialized()
    rank, world_size = kwargs.pop("rank", None), kwargs.pop("world_size", None)
    with pytest.raises(ConfigError, match=message):
        resolve_data_parallel(rank, world_size, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 1}, r"got rank=1, world_size=1 \(not given: the default\); give both"),
        ({"rank": 3, "world_size": 2}, r"got rank=3, world_size=2; give both"),
    ],
)
def test_a_rank_outside_the_world_says_where_each_value_came_from(
    monkeypatch, fresh_warnings, kwargs, message
):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=message):
        ResumableDataLoader(augmented(N), batch_size=2, **kwargs)


@pytest.mark.slow
def test_mesh_and_group_coordinates_under_torchrun(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    torchrun(JOB, 4, out)
    results = rank_pickles(out, 4)
    assert [r["coordinate"] for r in results] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for form in ("pair", "slice", "group", "both_dims"):
        runs = [r[form] for r in results]
        seeds = {run["seed"] for run in runs}
        assert len(seeds) == 1  # rank 0's draw reached every rank, tensor peers included
        seed = seeds.pop()
        single = ResumableDataLoader(augmented(N), batch_size=BATCH, shuffle=True, seed=seed)
        expected = global_stream([consume(single, 1)], N)
        assert all(run["mid"] == runs[0]["mid"] for run in runs)
        world_size = 4 if form == "both_dims" else 2
        assert runs[0]["mid"]["position"] == min(STOP * world_size * BATCH, N)
        if form == "both_dims":
            assert [run["topology"] for run in runs] == [(rank, 4) for rank in range(4)]
            assert global_stream([run["batches"] for run in runs], N) == expected
            continue
        assert [run["topology"] for run in runs] == [(0, 2), (0, 2), (1, 2), (1, 2)]
        # tensor-parallel peers (same dp coordinate) receive identical batches
        assert runs[0]["batches"] == runs[1]["batches"]
        assert runs[2]["batches"] == runs[3]["batches"]
        assert runs[0]["batches"] != runs[2]["batches"]
        assert global_stream([runs[0]["batches"], runs[2]["batches"]], N) == expected
