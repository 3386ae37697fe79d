"""A loader rebuilt from our visible sampler (Accelerate's prepare, a plain DataLoader over
``loader.batch_sampler``) still follows our order: the same sample ids, epoch by epoch, and
under Accelerate's batch sharding the same ids per process as our partition gives each rank."""

from __future__ import annotations

import functools
import gc
import warnings

import pytest

pytest.importorskip("accelerate", reason="pip install -e '.[test-frameworks]' -c constraints.txt")
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader

from resumable_loader import Mixture, ResumableDataLoader, ResumeWarning, ShardShuffle


class Ids(torch.utils.data.Dataset):
    """Sample i is i, so a batch shows its ids."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.shard_sizes = [length // 4] * 3 + [length - 3 * (length // 4)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


def ours(dataset, epoch: int = 0, **kwargs) -> list[int]:
    loader = ResumableDataLoader(dataset, batch_size=4, seed=7, **kwargs)
    loader.set_epoch(epoch)
    return [i for batch in loader for i in batch.tolist()]


def foreign(loader, epochs: int, make=None) -> list[list[int]]:
    """The ids of ``epochs`` iterations of a loader built from ``loader``'s visible parts."""
    other = (
        make(loader)
        if make
        else torch.utils.data.DataLoader(loader.dataset, batch_sampler=loader.batch_sampler)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResumeWarning)
        return [[i for batch in other for i in batch.tolist()] for _ in range(epochs)]


def sharded(rank: int):
    """Accelerate's prepare for process ``rank`` of 2 (its BatchSamplerShard), no process group."""
    return functools.partial(
        prepare_data_loader, num_processes=2, process_index=rank, put_on_device=False
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"shuffle": True}, {"shuffle": False}, {"shuffle": True, "shard_shuffle": ShardShuffle()}],
    ids=["shuffled", "sequential", "shard-local"],
)
def test_a_dataloader_over_the_visible_batch_sampler_yields_our_epochs(kwargs):
    dataset = Ids(50)
    loader = ResumableDataLoader(dataset, batch_size=4, seed=7, **kwargs)
    assert foreign(loader, 3) == [ours(dataset, e, **kwargs) for e in range(3)]


def test_the_first_foreign_iteration_warns_once():
    loader = ResumableDataLoader(Ids(12), batch_size=4, shuffle=True, seed=7)
    other = torch.utils.data.DataLoader(loader.dataset, batch_sampler=loader.batch_sampler)
    with pytest.warns(ResumeWarning, match="resumable order's sample ids"):
        list(other)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)
        list(other)  # once per sampler


def test_set_epoch_on_the_visible_sampler_picks_the_foreign_epoch_and_ours():
    dataset = Ids(30)
    loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7)
    loader.sampler.set_epoch(5)
    assert foreign(loader, 1) == [ours(dataset, 5, shuffle=True)]
    with pytest.warns(ResumeWarning, match="another loader replaced"):
        assert loader.state_dict()["epoch"] == 5  # the loader's own next epoch, too
    assert [i for b in loader for i in b.tolist()] == ours(dataset, 5, shuffle=True)


def test_the_foreign_epoch_starts_where_a_loaded_state_stands():
    dataset = Ids(30)
    source = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7)
    source.set_epoch(3)
    iterator = iter(source)
    next(iterator)
    state = source.state_dict()
    loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7)
    loader.load_state_dict(state)
    assert foreign(loader, 2) == [ours(dataset, e, shuffle=True) for e in (3, 4)]


def test_a_dropped_loader_is_freed_and_its_foreign_loader_runs_on():
    dataset = Ids(30)
    loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7)
    other = torch.utils.data.DataLoader(dataset, batch_sampler=loader.batch_sampler)
    alive = __import__("weakref").ref(loader)
    gc.disable()
    try:
        del loader
        assert alive() is None
    finally:
        gc.enable()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResumeWarning)
        assert [i for b in other for i in b.tolist()] == ours(dataset, 0, shuffle=True)


@pytest.mark.parametrize("length, drop_last", [(48, False), (48, True), (45, True)])
def test_accelerate_batch_sharding_gives_each_process_our_ranks_ids(length, drop_last):
    dataset = Ids(length)
    for rank in range(2):
        loader = ResumableDataLoader(
            dataset, batch_size=4, shuffle=True, seed=7, drop_last=drop_last
        )
        shard = foreign(
            loader,
            2,
            sharded(rank),
        )
        expected = [
            ours(dataset, e, shuffle=True, drop_last=drop_last, rank=rank, world_size=2)
            for e in range(2)
        ]
        assert shard == expected


def test_accelerator_prepare_yields_our_order_epoch_after_epoch():
    dataset = Ids(30)
    loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7)
    prepared = foreign(loader, 3, lambda loader: Accelerator(cpu=True).prepare(loader))
    assert prepared == [ours(dataset, e, shuffle=True) for e in range(3)]


def test_a_mixture_rebuilt_from_its_batch_sampler_yields_its_encoded_ids():
    mixture = Mixture({"a": Ids(10), "b": Ids(40)}, {"a": 1, "b": 3}, samples_per_epoch=24)
    loader = ResumableDataLoader(mixture, batch_size=4, seed=7)
    assert foreign(loader, 2) == [ours(mixture, e) for e in range(2)]


@pytest.mark.parametrize("length", [45, 42])
def test_a_short_last_global_batch_is_padded_otherwise_but_delivers_every_sample(length):
    """Accelerate pads a short last batch to full size from the epoch's start; our partition
    splits it evenly (ceil(R / W) each). The full global batches agree, and both deliver every
    sample of the tail."""
    dataset, full = Ids(length), length // 8 * 4
    theirs, mine = [], []
    for rank in range(2):
        loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7)
        theirs.append(foreign(loader, 1, sharded(rank))[0])
        mine.append(ours(dataset, 0, shuffle=True, rank=rank, world_size=2))
    assert [ids[:full] for ids in theirs] == [ids[:full] for ids in mine]
    tail = set(ours(dataset, 0, shuffle=True)[2 * full :])
    assert tail <= set(theirs[0][full:] + theirs[1][full:])
    assert tail <= set(mine[0][full:] + mine[1][full:])


def test_the_foreign_order_follows_a_loaded_seed():
    dataset = Ids(30)
    saved = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7).state_dict()
    loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True)  # a seed of its own
    loader.load_state_dict(saved)
    assert foreign(loader, 1) == [ours(dataset, 0, shuffle=True)]


class Augmenting(Ids):
    """Sample i is i and draws from the three global generators, as augmentations do."""

    def __getitem__(self, index: int) -> tuple[int, float]:
        import random

        import numpy as np

        return index, torch.rand(()).item() + float(np.random.rand()) + random.random()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_foreign_loader_loads_each_sample_under_its_key_and_keeps_the_loops_rng(num_workers):
    """Through ``loader.batch_sampler`` a foreign loader draws the augmentations ours draws,
    in workers or in the main process, whose global RNG state it leaves as it was."""
    dataset = Augmenting(20)
    loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7)
    mine = [(int(i), float(a)) for ids, augs in loader for i, a in zip(ids, augs, strict=True)]
    other = torch.utils.data.DataLoader(  # a generator: torch's iter() then draws from it
        loader.dataset,
        batch_sampler=loader.batch_sampler,
        num_workers=num_workers,
        generator=torch.Generator(),
    )
    before = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResumeWarning)
        loader.sampler.set_epoch(0)
        theirs = [(int(i), float(a)) for ids, augs in other for i, a in zip(ids, augs, strict=True)]
    assert theirs == mine
    assert torch.equal(torch.get_rng_state(), before)


def test_keyed_batches_pickle_as_their_ids_and_key():
    import pickle

    loader = ResumableDataLoader(Ids(10), batch_size=4, shuffle=True, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResumeWarning)
        batch = next(iter(loader.batch_sampler))
    copy = pickle.loads(pickle.dumps(batch))
    assert type(copy) is type(batch) and list(copy) == list(batch) and copy == batch
    assert (copy.seed, copy.epoch, copy.start) == (7, 0, 0)


def test_a_batch_sampler_rebuilt_around_another_sampler_is_torchs_again():
    """Lightning re-instantiates a batch sampler that is not torch's class around its own
    sampler: iterated, it batches that sampler as torch's BatchSampler would, and a loader
    given it as batch_sampler takes it as torch's arguments (sampler, batch size, drop_last)."""
    from torch.utils.data import BatchSampler, SequentialSampler

    from resumable_loader.loader.keyed_batches import WatchedBatchSampler

    loader = ResumableDataLoader(Ids(10), batch_size=4, shuffle=True, seed=7)
    rebuilt = type(loader.batch_sampler)(SequentialSampler(range(7)), 3, False)
    assert type(rebuilt) is WatchedBatchSampler
    assert list(rebuilt) == list(BatchSampler(SequentialSampler(range(7)), 3, False))
    again = ResumableDataLoader(Ids(10), batch_size=1, batch_sampler=rebuilt, seed=7)
    assert (again.batch_size, again.drop_last) == (3, False)
    assert [batch.tolist() for batch in again] == [[0, 1, 2], [3, 4, 5], [6]]
