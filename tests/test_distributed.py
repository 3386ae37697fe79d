"""Real multi-process jobs (gloo, CPU): identical cursors, elastic resume across world sizes."""

from __future__ import annotations

import functools

import pytest
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from distributed_harness import (
    augmented,
    consume,
    global_stream,
    launch,
    resume_job,
)

from resumable_loader import ConfigError, ResumableDataLoader, StateDictError
from resumable_loader.topology import resolve_topology

N = 53
EPOCHS = 2


def make_loader(dataset_factory=augmented, **kwargs):
    kwargs.setdefault("batch_size", 3)
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("seed", 99)
    return ResumableDataLoader(dataset_factory(N), **kwargs)


def continuous(dataset_factory=augmented):
    loader = make_loader(dataset_factory, world_size=1, rank=0)
    batches = consume(loader, EPOCHS)
    return global_stream([batches], N)


@pytest.mark.parametrize(
    "first,second",
    [
        ((4, 2, 0, 5), (2, 3, 2, None)),  # (world size, batch size, workers, batches per rank)
        ((2, 4, 1, 9), (3, 2, 0, None)),
        ((1, 5, 0, 14), (4, 1, 1, None)),
        ((3, 3, 2, 7), (1, 7, 2, None)),
    ],
)
def test_elastic_resume_continues_the_global_stream(first, second):
    world, batch_size, workers, stop_after = first
    make_first = functools.partial(make_loader, batch_size=batch_size, num_workers=workers)
    head = launch(world, resume_job, make_first, EPOCHS, stop_after, None)
    states = [state for _, state in head]
    assert all(state == states[0] for state in states)  # one identical cursor on every rank

    world2, batch_size2, workers2, _ = second
    make_second = functools.partial(make_loader, batch_size=batch_size2, num_workers=workers2)
    tail = launch(world2, resume_job, make_second, EPOCHS, None, states[0])
    stream = global_stream([b for b, _ in head], N) + global_stream([b for b, _ in tail], N)
    assert stream == continuous()


def _default_seed_job(rank, world_size):
    loader = ResumableDataLoader(augmented(N), batch_size=2, shuffle=True)  # seed drawn
    return loader.state_dict()["seed"]


def test_default_seed_is_agreed_by_all_ranks():
    seeds = launch(3, _default_seed_job)
    assert len(set(seeds)) == 1


def _disagreeing_job(rank, world_size):
    loader = make_loader()
    consume(loader, 1, stop_after=1 + rank)
    try:
        loader.state_dict(check_ranks=True)
    except StateDictError as error:
        return str(error)
    return None


def test_check_ranks_catches_ranks_that_disagree():
    errors = launch(2, _disagreeing_job)
    assert all(error and "different numbers of batches" in error for error in errors)


def _dcp_job(rank, world_size, checkpoint_dir, stop_after):
    loader = make_loader()
    if stop_after is None:
        dcp.load({"loader": loader}, checkpoint_id=checkpoint_dir)
        return consume(loader, 1)
    batches = consume(loader, 1, stop_after)
    dcp.save({"loader": loader}, checkpoint_id=checkpoint_dir)
    return batches


def test_distributed_checkpoint_round_trip(tmp_path):
    head = launch(2, _dcp_job, str(tmp_path), 4)
    tail = launch(3, _dcp_job, str(tmp_path), None)
    stream = global_stream(head, N) + global_stream(tail, N)
    assert stream == [e for e in continuous() if e[0] == 0]


def test_ranks_default_to_the_environment(monkeypatch):
    assert not dist.is_initialized()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_topology(None, None) == (2, 4)
    assert resolve_topology(1, None) == (1, 4)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_topology(None, None) == (0, 1)


def test_several_ranks_without_a_group_need_a_seed():
    with pytest.raises(ConfigError, match="seed="):
        ResumableDataLoader(augmented(N), batch_size=2, world_size=2, rank=0)
