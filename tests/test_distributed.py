"""Real multi-process jobs (gloo, CPU): identical cursors, elastic resume across world sizes."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from distributed_harness import (
    PositionedDataset,
    augmented,
    consume,
    global_stream,
    launch,
    resume_job,
)
from shard_factory import write_parquet_shards, write_tar_shards

from resumable_loader import (
    ConfigError,
    ParquetDataset,
    ResumableDataLoader,
    ShardShuffle,
    StateDictError,
    TarShardDataset,
    sample_numpy_generator,
)
from resumable_loader.errors import TopologyWarning
from resumable_loader.loader import topology
from resumable_loader.loader.topology import resolve_topology

N = 55  # 5 shards of 11 samples for the shard sources
EPOCHS = 2


def _noisy(field):
    return lambda sample: repr(sample[field]) + repr(sample_numpy_generator().random(2))


class _Sharded(PositionedDataset):
    def __init__(self, inner, describe):
        super().__init__(inner, describe)
        self.shard_sizes = inner.shard_sizes


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    tar = write_tar_shards(root / "tar", num_shards=5, samples_per_shard=11)
    parquet = write_parquet_shards(root / "parquet", num_shards=5, rows_per_shard=11)
    return {
        "map": augmented,
        "tar": lambda n: _Sharded(TarShardDataset(tar), _noisy("bin")),
        "parquet": lambda n: _Sharded(ParquetDataset(parquet), _noisy("text")),
    }


def make_loader(dataset_factory=augmented, **kwargs):
    kwargs.setdefault("batch_size", 3)
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("seed", 99)
    return ResumableDataLoader(dataset_factory(N), **kwargs)


def continuous(dataset_factory=augmented, **kwargs):
    loader = make_loader(dataset_factory, world_size=1, rank=0, **kwargs)
    batches = consume(loader, EPOCHS)
    return global_stream([batches], N)


@pytest.mark.parametrize("source", ["map", "tar", "parquet"])
@pytest.mark.parametrize(
    "first,second",
    [
        ((4, 2, 0, 5), (2, 3, 2, None)),  # (world size, batch size, workers, batches per rank)
        ((2, 4, 1, 9), (3, 2, 0, None)),
        ((1, 5, 0, 14), (4, 1, 1, None)),
        ((3, 3, 2, 7), (1, 7, 2, None)),
    ],
)
def test_elastic_resume_continues_the_global_stream(sources, source, first, second):
    dataset_factory = sources[source]
    world, batch_size, workers, stop_after = first
    make_first = functools.partial(
        make_loader, dataset_factory, batch_size=batch_size, num_workers=workers
    )
    head = launch(world, resume_job, make_first, EPOCHS, stop_after, None)
    states = [state for _, state in head]
    assert all(state == states[0] for state in states)  # one identical cursor on every rank

    world2, batch_size2, workers2, _ = second
    make_second = functools.partial(
        make_loader, dataset_factory, batch_size=batch_size2, num_workers=workers2
    )
    tail = launch(world2, resume_job, make_second, EPOCHS, None, states[0])
    stream = global_stream([b for b, _ in head], N) + global_stream([b for b, _ in tail], N)
    assert stream == continuous(dataset_factory)


def test_shard_local_order_resumes_across_world_sizes(sources):
    shuffle = ShardShuffle(window=2, buffer_size=6)
    make = functools.partial(make_loader, sources["tar"], shard_shuffle=shuffle)
    head = launch(3, resume_job, make, EPOCHS, 4, None)
    tail = launch(2, resume_job, make, EPOCHS, None, head[0][1])
    stream = global_stream([b for b, _ in head], N) + global_stream([b for b, _ in tail], N)
    assert stream == continuous(sources["tar"], shard_shuffle=shuffle)


def _keys_job(rank, world_size):
    loader = make_loader(batch_size=2)
    return [e for batch in consume(loader, 1) for e in batch]


def test_augmentation_keys_do_not_depend_on_world_size():
    by_world = {}
    for world in (1, 2, 4):
        entries = [e for rank_entries in launch(world, _keys_job) for e in rank_entries]
        by_world[world] = {(epoch, pos): digest for epoch, pos, _, digest in entries if pos < N}
    assert by_world[1] == by_world[2] == by_world[4]
    assert len(by_world[1]) == N and np.unique(list(by_world[1].values())).size == N


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


def _other_world_size_job(rank, world_size):
    try:
        make_loader(world_size=4).state_dict(check_ranks=True)
    except ConfigError as error:
        return str(error)
    return None


def test_check_ranks_refuses_a_group_of_another_size():
    errors = launch(2, _other_world_size_job)
    assert all(error and "world_size=4 but the process group has 2" in error for error in errors)


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


def test_drop_last_resume_across_world_sizes_drops_the_last_global_batch():
    # The global batch stays 8 (4 ranks x 2, then 2 ranks x 4); 55 = 6 * 8 + 7, so each epoch
    # drops its last 7 positions. 8 batches stop in epoch 1: head and tail each cross a drop.
    first = functools.partial(make_loader, batch_size=2, drop_last=True)
    second = functools.partial(make_loader, batch_size=4, num_workers=1, drop_last=True)
    head = launch(4, resume_job, first, EPOCHS, 8, None)
    tail = launch(2, resume_job, second, EPOCHS, None, head[0][1])
    stream = global_stream([b for b, _ in head], N) + global_stream([b for b, _ in tail], N)
    assert stream == continuous(batch_size=8, drop_last=True)
    assert [(e, p) for e, p, _, _ in stream] == [(e, p) for e in range(EPOCHS) for p in range(48)]


PADDED_N = 53  # 4 ranks x 3: 4 full global batches of 12, then 5 positions left


def _padded(_length):
    return augmented(PADDED_N)


def _padding_job(rank, world_size):
    loader = make_loader(_padded, batch_size=3)
    return consume(loader, EPOCHS), len(loader)


def test_padding_wraps_to_the_epochs_start_and_evens_the_ranks():
    results = launch(4, _padding_job)
    per_rank = [batches for batches, _ in results]
    assert [n for _, n in results] == [5] * 4
    assert [len(batches) for batches in per_rank] == [5 * EPOCHS] * 4
    stream = global_stream(per_rank, PADDED_N)
    assert stream == continuous(_padded)
    for epoch in range(EPOCHS):
        # R = 5 left: ceil(5/4) = 2 per rank, so ceil(5/4)*4 - 5 = 3 padding positions (53..55)
        # repeating the epoch's first 3 samples, as docs/distributed.md says
        last = [batches[epoch * 5 + 4] for batches in per_rank]
        assert [[p for _, p, _, _ in batch] for batch in last] == [
            [48, 49],
            [50, 51],
            [52, 53],
            [54, 55],
        ]
        pads = [e for batch in last for e in batch if e[1] >= PADDED_N]
        starts = [e for e in stream if e[0] == epoch][:3]
        assert [(p - PADDED_N, i) for _, p, i, _ in pads] == [(p, i) for _, p, i, _ in starts]
        assert not {d for *_, d in pads} & {d for *_, d in starts}  # their own augmentation keys


def _topology_job(rank, world_size):
    os.environ.update(RANK="0", WORLD_SIZE="4")  # the process group must win over these
    loaders = [make_loader(), make_loader(world_size=4), make_loader(rank=0, world_size=1)]
    alone = global_stream([consume(loaders[-1], EPOCHS)], N)
    return [(loader.rank, loader.world_size) for loader in loaders], alone


def test_explicit_rank_and_world_size_win_over_the_process_group():
    results = launch(2, _topology_job)
    assert [topologies for topologies, _ in results] == [
        [(0, 2), (0, 4), (0, 1)],
        [(1, 2), (1, 4), (0, 1)],
    ]
    assert all(alone == continuous() for _, alone in results)


def test_ranks_default_to_the_environment(monkeypatch):
    assert not dist.is_initialized()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(topology, "_warned", set())  # warned once a process: forget earlier ones
    with pytest.warns(TopologyWarning, match="RANK and WORLD_SIZE"):
        assert resolve_topology(None, None) == (2, 4)
    with pytest.warns(TopologyWarning, match=r"\(WORLD_SIZE\)"):
        assert resolve_topology(1, None) == (1, 4)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_topology(None, None) == (0, 1)


def test_several_ranks_without_a_group_need_a_seed():
    with pytest.raises(ConfigError, match="seed="):
        ResumableDataLoader(augmented(N), batch_size=2, world_size=2, rank=0)


def test_check_ranks_without_a_group_is_a_config_error():
    assert not dist.is_initialized()
    loader = make_loader(world_size=2, rank=0)
    loader.state_dict()  # without check_ranks there is no collective, so no group is needed
    with pytest.raises(ConfigError, match=r"check_ranks=True.*init_process_group"):
        loader.state_dict(check_ranks=True)
