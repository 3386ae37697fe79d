"""User samplers: torch's own samplers resume exactly mid-epoch and at an epoch's end, on another
batch size, world size or num_workers where their index stream allows it; DCP keeps their state;
a sampler whose stream the loader cannot replay is refused, never silently replayed wrongly."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from distributed_harness import augmented, consume, global_stream, launch, unpack
from hypothesis import given, settings
from hypothesis import strategies as st
from resume_harness import epochs_left, transport
from torch.utils.data import (
    BatchSampler,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from resumable_loader import ConfigError, ResumableDataLoader, ResumeWarning, StateDictError
from resumable_loader.loader.cursor import make_cursor

N = 29
EPOCHS = 3
WEIGHTS = [1.0 + (i % 5) for i in range(N)]


def generator(seed=7):
    return torch.Generator().manual_seed(seed)


# Each factory makes a fresh sampler, as a restarted process would: its generator seeded anew.
SAMPLERS = {
    "sequential": lambda: SequentialSampler(range(N)),
    "random": lambda: RandomSampler(range(N), generator=generator()),
    "random_global_rng": lambda: RandomSampler(range(N)),
    "random_replacement": lambda: RandomSampler(
        range(N), replacement=True, num_samples=41, generator=generator()
    ),
    "subset": lambda: SubsetRandomSampler(list(range(3, N, 2)), generator=generator()),
    "subset_global_rng": lambda: SubsetRandomSampler(list(range(3, N, 2))),
    "weighted": lambda: WeightedRandomSampler(WEIGHTS, 37, generator=generator()),
    "weighted_no_replacement": lambda: WeightedRandomSampler(
        WEIGHTS, 20, replacement=False, generator=generator()
    ),
    "weighted_global_rng": lambda: WeightedRandomSampler(WEIGHTS, 37),
}
# Samplers whose stream is the same on every rank (an explicit generator, or none needed).
RANK_CONSISTENT = ["sequential", "random", "random_replacement", "subset", "weighted"]


def loader_for(
    name, *, batch_size=4, num_workers=0, batch_sampler=False, rank=0, world_size=1, **kwargs
):
    sampler = SAMPLERS[name]()
    if batch_sampler:
        kwargs.update(batch_sampler=BatchSampler(sampler, batch_size, drop_last=False))
    else:
        kwargs.update(sampler=sampler, batch_size=batch_size)
    return ResumableDataLoader(
        augmented(N),
        num_workers=num_workers,
        rank=rank,
        world_size=world_size,
        seed=11,
        **kwargs,
    )


def run(loaders, epochs, *, stop_after=None):
    """Every simulated rank's batches (in one process), then rank 0's state.

    torch's global RNG is saved with the loader's state and put back on resume, as a training
    loop that checkpoints its RNG does: a sampler without a generator draws from it.
    """
    per_rank = [consume(loader, epochs, stop_after) for loader in loaders]
    return per_rank, (loaders[0].state_dict(), torch.get_rng_state())


def resume(loaders, saved, epochs):
    state, rng = saved
    torch.set_rng_state(rng)
    for loader in loaders:
        loader.load_state_dict(transport(state, "msgpack"))
    return run(loaders, epochs_left(state, epochs))[0]


def stream(per_rank, length=10**9):
    """The global stream of simulated ranks' batches, without padding (positions >= length)."""
    return global_stream(per_rank, length)


def continuous(name, **kwargs):
    torch.manual_seed(0)
    return stream(run([loader_for(name, **kwargs)], EPOCHS)[0])


def interrupted(name, stop_after, first, second):
    """Stream of ranks made by ``first(rank, world_size)`` for ``stop_after`` batches, then
    ranks made by ``second`` resumed from rank 0's state."""
    torch.manual_seed(0)
    head, saved = run([first(r) for r in range(first.world_size)], EPOCHS, stop_after=stop_after)
    tail = resume([second(r) for r in range(second.world_size)], saved, EPOCHS)
    length = saved[0]["fingerprint"]["length"]  # the sampler's epoch
    return stream(head, length) + stream(tail, length)


class Ranks:
    """``Ranks(world_size, name, **kwargs)(rank)`` builds that rank's loader."""

    def __init__(self, world_size, name, **kwargs):
        self.world_size, self.name, self.kwargs = world_size, name, kwargs

    def __call__(self, rank):
        return loader_for(self.name, rank=rank, world_size=self.world_size, **self.kwargs)


class TestTorchSamplersResumeExactly:
    @pytest.mark.parametrize("name", list(SAMPLERS))
    @pytest.mark.parametrize("stop_after", [3, 8])  # mid-epoch; exactly at epoch 0's end
    def test_mid_epoch_and_epoch_end(self, name, stop_after):
        first = loader_for(name)
        stop_after = stop_after if stop_after == 3 else len(first)
        expected = continuous(name)
        workers = 2 if stop_after == 3 else 0  # worker start-ups are the slow part
        got = interrupted(name, stop_after, Ranks(1, name), Ranks(1, name, num_workers=workers))
        assert got == expected
        assert len({(e, p) for e, p, _, _ in got}) == len(got)  # every position once

    @pytest.mark.parametrize("name", ["random", "subset_global_rng", "weighted"])
    def test_under_a_batch_sampler(self, name):
        expected = continuous(name, batch_sampler=True)
        got = interrupted(
            name,
            3,
            Ranks(1, name, batch_sampler=True, num_workers=2),
            Ranks(1, name, batch_sampler=True),
        )
        assert got == expected

    def test_an_older_iterator_keeps_its_epoch(self):
        # As with torch: an iterator made before another iter() continues its own epoch.
        expected = [b["id"].tolist() for b in loader_for("random")]
        live = loader_for("random")
        older = iter(live)
        newer = iter(live)
        with pytest.warns(ResumeWarning, match="not counted in state_dict"):  # the cursor's
            assert [b["id"].tolist() for b in older] == expected  # the newer iterator's
        assert [b["id"].tolist() for b in newer] != expected

    def test_each_epoch_differs_as_under_torch(self):
        ids = [[i for e, _, i, _ in continuous("random") if e == epoch] for epoch in range(3)]
        assert ids[0] != ids[1] != ids[2]
        assert sorted(ids[0]) == list(range(N))

    def test_the_stream_is_torchs_own(self):
        # With the same generator state, torch's DataLoader yields the same index stream.
        sampler = RandomSampler(range(N), generator=generator())
        torch_loader = torch.utils.data.DataLoader(range(N), batch_size=4, sampler=sampler)
        torch_ids = [i for _ in range(2) for batch in torch_loader for i in batch.tolist()]
        ours = [i for e, _, i, _ in continuous("random") if e < 2]
        assert ours == torch_ids

    def test_generator_state_at_an_epochs_end_is_in_the_cursor(self):
        loader = loader_for("random")
        first_epoch = consume(loader, 1)
        state = loader.state_dict()
        fresh = loader_for("random")
        fresh.load_state_dict(transport(state, "json"))
        resumed = consume(fresh, 1)
        assert resumed == consume(loader, 1)  # the live loader's epoch 1
        assert [i for _, _, i, _ in resumed[0]] != [i for _, _, i, _ in first_epoch[0]]
        assert fresh.state_dict() == loader.state_dict()

    def test_persistent_workers_and_no_auto_batching(self):
        def ids(loader, epochs, stop_after=None):
            out = []
            for _ in range(epochs):
                for sample in loader:
                    out.append(
                        (loader.state_dict()["epoch"], int(sample["id"]), int(sample["pos"]))
                    )
                    if len(out) == stop_after:
                        return out
            return out

        expected = ids(loader_for("weighted", batch_size=None), EPOCHS)
        first = loader_for("weighted", num_workers=2, persistent_workers=True)
        head = [(e, i, p) for e, p, i, _ in stream([consume(first, EPOCHS, stop_after=13)])]
        resumed = loader_for("weighted", batch_size=None)
        state = first.state_dict()
        resumed.load_state_dict(state)
        assert head + ids(resumed, epochs_left(state, EPOCHS)) == expected


class TestAnotherBatchSizeOrWorldSize:
    @pytest.mark.parametrize("name", RANK_CONSISTENT)
    def test_world_size_and_batch_size_change(self, name):
        # The index stream is the sampler's; the loader splits it across ranks as it splits
        # its own order, so any layout continues the same samples with the same keys.
        expected = continuous(name)
        got = interrupted(name, 2, Ranks(2, name, batch_size=3), Ranks(3, name, batch_size=2))
        assert got == expected

    def test_batch_sampler_batch_size_change(self):
        expected = continuous("subset", batch_sampler=True)
        got = interrupted(
            "subset",
            3,
            Ranks(1, "subset", batch_sampler=True, batch_size=3),
            Ranks(2, "subset", batch_sampler=True, batch_size=5, num_workers=2),
        )
        assert got == expected

    @settings(max_examples=8, deadline=None)
    @given(
        name=st.sampled_from(RANK_CONSISTENT),
        layouts=st.lists(
            st.tuples(st.integers(1, 3), st.integers(1, 6), st.sampled_from([0, 2])),
            min_size=2,
            max_size=2,
        ),
        stop_after=st.integers(1, 12),
        batch_sampler=st.booleans(),
    )
    @pytest.mark.slow
    def test_any_layouts(self, name, layouts, stop_after, batch_sampler):
        (w1, b1, n1), (w2, b2, n2) = layouts
        expected = continuous(name)
        got = interrupted(
            name,
            stop_after,
            Ranks(w1, name, batch_size=b1, num_workers=n1, batch_sampler=batch_sampler),
            Ranks(w2, name, batch_size=b2, num_workers=n2, batch_sampler=batch_sampler),
        )
        assert got == expected

    @pytest.mark.parametrize("name", ["random", "random_replacement", "weighted"])
    @pytest.mark.parametrize("world_size", [1, 2])
    def test_a_layout_with_no_batch_left_of_the_saved_epoch_draws_the_next_from_its_start(
        self, name, world_size
    ):
        """drop_last and a larger global batch: the rest of the saved epoch makes no batch,
        so the resumed loader starts the next epoch. The sampler, restored to the saved
        epoch's start, draws that epoch first: it drew the saved epoch's order again as the
        next one's, silently."""
        size = len(SAMPLERS[name]())
        batch = (size - 3) // world_size  # one global batch an epoch; 4 taken leave less

        def ranks(batch_size: int, world_size: int) -> list[ResumableDataLoader]:
            return [
                loader_for(
                    name, batch_size=batch_size, drop_last=True, rank=r, world_size=world_size
                )
                for r in range(world_size)
            ]

        continuous = ranks(batch, world_size)
        [list(loader) for loader in continuous]  # epoch 0
        expected = [[unpack(b) for b in loader] for loader in continuous]  # epoch 1
        first = loader_for(name, batch_size=4, drop_last=True)
        next(iter(first))
        resumed = ranks(batch, world_size)
        for loader in resumed:
            loader.load_state_dict(first.state_dict())
        assert [[unpack(b) for b in loader] for loader in resumed] == expected
        assert resumed[0].state_dict()["epoch"] == 1

    @pytest.mark.parametrize("name", ["random_global_rng", "subset_global_rng"])
    def test_a_sampler_drawing_from_each_ranks_global_rng_is_refused_on_many_ranks(self, name):
        with pytest.raises(ConfigError, match=r"generator=torch\.Generator"):
            loader_for(name, rank=0, world_size=2)


def _generators_seeded_per_rank_job(rank, world_size):
    sampler = RandomSampler(range(N), generator=generator(rank))  # a common mistake
    loader = ResumableDataLoader(augmented(N), sampler=sampler, batch_size=4, seed=11)
    consume(loader, 1, stop_after=1)
    try:
        loader.state_dict(check_ranks=True)
    except StateDictError as error:
        return str(error)
    return None


def test_check_ranks_finds_generators_seeded_differently():
    errors = launch(2, _generators_seeded_per_rank_job)
    assert all(error and "sampler_state differs" in error for error in errors)


class StatefulShuffle(torch.utils.data.Sampler):
    """A custom sampler with its own generator and state_dict()."""

    def __init__(self, length=N):
        self.length = length
        self.generator = generator(3)

    def __len__(self):
        return self.length

    def __iter__(self):
        return iter(torch.randperm(self.length, generator=self.generator).tolist())

    def state_dict(self):
        return {"rng": self.generator.get_state().tolist()}

    def load_state_dict(self, state):
        self.generator.set_state(torch.tensor(state["rng"], dtype=torch.uint8))


class Stateless(torch.utils.data.Sampler):
    def __len__(self):
        return N

    def __iter__(self):
        return iter(range(N - 1, -1, -1))


class FixedBatches:
    """A custom batch_sampler: consecutive batches of ``size``; stateless, yet says so."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return -(-N // self.size)

    def __iter__(self):
        return (list(range(i, min(i + self.size, N))) for i in range(0, N, self.size))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def custom_loader(sampler, *, rank=0, world_size=1, batch_size=4, **kwargs):
    return ResumableDataLoader(
        augmented(N),
        sampler=sampler,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=11,
        **kwargs,
    )


def distributed(rank, world_size):
    return DistributedSampler(range(N), num_replicas=world_size, rank=rank, seed=5)


def per_rank_stream(first, second, *, first_ranks, second_ranks, stop_after, epochs=EPOCHS):
    head, (state, _) = run([first(r) for r in range(first_ranks)], epochs, stop_after=stop_after)
    resumed = [second(r) for r in range(second_ranks)]
    for loader in resumed:
        loader.load_state_dict(transport(state, "msgpack"))
    tail = [consume(loader, epochs_left(state, epochs)) for loader in resumed]
    return sorted(global_stream(head, N) + global_stream(tail, N))


class TestSamplersThatSplitAcrossRanksThemselves:
    """A DistributedSampler, or any custom sampler: each rank iterates its own."""

    @pytest.mark.parametrize("stop_after", [2, 4])  # mid-epoch; epoch 0's end (15 = 4 x 4)
    def test_distributed_sampler_resumes_with_another_batch_size(self, stop_after):
        def ranks(batch_size, num_workers=0):
            def make(rank):
                return custom_loader(
                    distributed(rank, 2),
                    rank=rank,
                    world_size=2,
                    batch_size=batch_size,
                    num_workers=num_workers,
                )

            return make

        expected = per_rank_stream(ranks(4), ranks(4), first_ranks=2, second_ranks=2, stop_after=0)
        got = per_rank_stream(
            ranks(4), ranks(3, 2), first_ranks=2, second_ranks=2, stop_after=stop_after
        )
        assert got == expected

    def test_distributed_sampler_epoch_is_in_the_cursor(self):
        first = custom_loader(distributed(0, 1))
        first.set_epoch(4)
        consume(first, 1, stop_after=2)
        state = first.state_dict()
        assert state["sampler_state"] == {"epoch": 4}
        fresh_sampler = distributed(0, 1)
        resumed = custom_loader(fresh_sampler)
        resumed.load_state_dict(state)
        assert fresh_sampler.epoch == 4

    def test_distributed_sampler_epoch_set_after_iter(self):
        # Lightning's order: iter(loader), then set_epoch on the sampler, then the batches.
        def loader():
            return custom_loader(distributed(0, 1))

        live = loader()
        batches = iter(live)
        live.sampler.set_epoch(3)
        head = [next(batches) for _ in range(2)]
        state = live.state_dict()
        assert state["sampler_state"] == {"epoch": 3}
        tail = list(batches)
        resumed = loader()
        resumed.load_state_dict(state)
        assert [b["id"].tolist() for b in resumed] == [b["id"].tolist() for b in tail]
        assert head  # the stream before the state was delivered

    def test_distributed_sampler_under_a_batch_sampler(self):
        def make(batch_size):
            return lambda rank: ResumableDataLoader(
                augmented(N),
                batch_sampler=BatchSampler(distributed(rank, 2), batch_size, drop_last=False),
                rank=rank,
                world_size=2,
                seed=11,
            )

        expected = per_rank_stream(make(4), make(4), first_ranks=2, second_ranks=2, stop_after=0)
        got = per_rank_stream(make(4), make(5), first_ranks=2, second_ranks=2, stop_after=2)
        assert got == expected

    def test_distributed_sampler_refuses_another_world_size_saying_why(self):
        first = custom_loader(distributed(0, 2), rank=0, world_size=2)
        consume(first, 1, stop_after=1)
        with pytest.raises(
            StateDictError, match=r"world_size.*saved 2, current 4.*DistributedSampler"
        ):
            custom_loader(distributed(0, 4), rank=0, world_size=4).load_state_dict(
                first.state_dict()
            )

    def test_custom_stateful_sampler_resumes_with_another_batch_size(self):
        expected = per_rank_stream(
            lambda r: custom_loader(StatefulShuffle()),
            lambda r: custom_loader(StatefulShuffle()),
            first_ranks=1,
            second_ranks=1,
            stop_after=0,
        )
        got = per_rank_stream(
            lambda r: custom_loader(StatefulShuffle(), batch_size=4),
            lambda r: custom_loader(StatefulShuffle(), batch_size=3, num_workers=2),
            first_ranks=1,
            second_ranks=1,
            stop_after=3,
        )
        assert got == expected

    def test_a_version_1_cursor_of_a_custom_sampler_still_loads(self):
        # Version 1 fingerprinted a user sampler's batch size, which may now change.
        first = custom_loader(StatefulShuffle())
        consume(first, 1, stop_after=2)
        state = first.state_dict()
        fingerprint = {
            "dataset": state["fingerprint"]["dataset"],
            "order": "user_sampler",
            "sampler": "StatefulShuffle",
            "length": N,
            "world_size": 1,
            "batch_size": 4,
            "drop_last": 0,
        }
        old = make_cursor(
            seed=11,
            epoch=0,
            position=8,
            fingerprint=fingerprint,
            sampler_state=state["sampler_state"],
        )
        from_old, from_new = custom_loader(StatefulShuffle()), custom_loader(StatefulShuffle())
        from_old.load_state_dict(old)
        from_new.load_state_dict(state)
        assert consume(from_old, 1) == consume(from_new, 1)

    def test_custom_sampler_refuses_another_world_size_saying_why(self):
        first = custom_loader(StatefulShuffle(), rank=0, world_size=2)
        consume(first, 1, stop_after=1)
        resumed = custom_loader(StatefulShuffle(), rank=0, world_size=1)
        with pytest.raises(StateDictError, match=r"world_size.*StatefulShuffle.*every rank"):
            resumed.load_state_dict(first.state_dict())

    def test_custom_sampler_without_state_refuses_mid_epoch(self):
        first = custom_loader(Stateless())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first.state_dict()  # at an epoch's start: resumable, no warning
        consume(first, 1, stop_after=1)
        # said when the state is taken (the first checkpoint), not only when it is loaded
        with pytest.warns(ResumeWarning, match=r"load_state_dict\(\) will refuse.*Stateless"):
            state = first.state_dict()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first.state_dict()  # said once
        with pytest.raises(StateDictError, match=r"Stateless.*state_dict"):
            custom_loader(Stateless()).load_state_dict(state)

    @pytest.mark.parametrize("kind", [list, tuple, range])
    def test_a_plain_sequence_as_sampler_resumes_mid_epoch_with_another_batch_size(self, kind):
        """torch takes a list, tuple or range as sampler=: a fixed order, so resumable."""
        order = kind(range(N - 1, 2, -3)) if kind is not range else range(3, N, 2)
        whole = stream([consume(custom_loader(order), EPOCHS)])
        first = custom_loader(order)
        head = consume(first, EPOCHS, stop_after=3)
        resumed = custom_loader(order, batch_size=3, num_workers=1)
        resumed.load_state_dict(transport(first.state_dict(), "msgpack"))
        tail = consume(resumed, epochs_left(first.state_dict(), EPOCHS))
        assert sorted(stream([head]) + stream([tail])) == sorted(whole)
        other = custom_loader(list(order)[::-1])
        with pytest.raises(StateDictError, match=r"fingerprint\.sampler.*crc="):
            other.load_state_dict(first.state_dict())

    def test_custom_batch_sampler_refuses_a_position_inside_its_batch(self):
        def make(size):
            return ResumableDataLoader(augmented(N), batch_sampler=FixedBatches(size), seed=11)

        first = make(4)
        consume(first, 1, stop_after=1)
        resumed = make(3)
        resumed.load_state_dict(first.state_dict())
        with pytest.raises(StateDictError, match=r"inside a batch.*batch_sampler"):
            consume(resumed, 1)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
class TestDistributedCheckpoint:
    @pytest.mark.parametrize("name", ["random", "random_global_rng", "weighted"])
    def test_dcp_keeps_the_sampler_state(self, name, tmp_path):
        torch.manual_seed(0)
        first = loader_for(name)
        head = consume(first, EPOCHS, stop_after=3)
        dcp.save({"loader": first}, checkpoint_id=str(tmp_path), no_dist=True)
        rng = torch.get_rng_state()
        resumed = loader_for(name)
        assert set(resumed.state_dict()) == set(first.state_dict())  # DCP's template
        dcp.load({"loader": resumed}, checkpoint_id=str(tmp_path), no_dist=True)
        torch.set_rng_state(rng)
        tail = consume(resumed, epochs_left(first.state_dict(), EPOCHS))
        assert stream([head]) + stream([tail]) == continuous(name)

    def test_a_mid_epoch_state_without_the_sampler_state_is_refused(self):
        first = loader_for("random")
        consume(first, 1, stop_after=2)
        state = first.state_dict()
        del state["sampler_state"]
        with pytest.raises(StateDictError, match="sampler_state"):
            loader_for("random").load_state_dict(state)


def test_streams_are_all_distinct_samplers():
    # The parametrized samplers really differ, so the tests above cover different streams.
    torch.manual_seed(0)
    firsts = {name: tuple(i for _, _, i, _ in continuous(name))[:8] for name in SAMPLERS}
    assert len(set(firsts.values())) == len(firsts)


class ListIndexed(torch.utils.data.Dataset):
    """``dataset[list]`` returns the list's ids: a dataset that reads a batch per index."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.tensor(index) * 10


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_a_batch_sampler_given_as_sampler_yields_a_list_an_index_as_in_torch(
    num_workers, batch_size
):
    """torch's idiom for batched reads: sampler=BatchSampler(...), each index a list."""

    def loaders():
        for kind in (torch.utils.data.DataLoader, ResumableDataLoader):
            sampler = BatchSampler(RandomSampler(range(10), generator=generator()), 4, False)
            extra = {"seed": 3} if kind is ResumableDataLoader else {}
            yield kind(
                ListIndexed(),
                sampler=sampler,
                batch_size=batch_size,
                num_workers=num_workers,
                **extra,
            )

    theirs, ours = ([b.tolist() for b in loader] for loader in loaders())
    assert ours == theirs
    assert len(ours) == (3 if batch_size is None else 2)


class Endless(torch.utils.data.Sampler):
    """An infinite sampler with a state (a stream cycling over the data from ``start``)."""

    def __init__(self) -> None:
        self.start = 0

    def __iter__(self):
        return itertools.islice(itertools.cycle(range(7)), self.start, None)

    def state_dict(self) -> dict:
        return {"start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.start = state["start"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_sampler_without_len_iterates_and_resumes_past_the_datasets_length(num_workers):
    """As torch's DataLoader allows (only len() raises); positions pass len(dataset)."""
    data = list(range(10))
    torch_batches = itertools.islice(
        torch.utils.data.DataLoader(data, sampler=Endless(), batch_size=3), 7
    )
    loader = ResumableDataLoader(
        data, sampler=Endless(), batch_size=3, seed=0, num_workers=num_workers
    )
    ours = itertools.islice(loader, 7)
    assert [b.tolist() for b in ours] == [b.tolist() for b in torch_batches]
    with pytest.raises(TypeError, match="has no len"):
        len(loader)
    iterator = iter(loader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResumeWarning)  # the superseded iteration's
        for _ in range(5):  # 15 samples: past the dataset's 10
            next(iterator)
    with pytest.raises(TypeError, match="has no len"):
        len(iterator)
    state = loader.state_dict()
    rest = [next(iterator).tolist() for _ in range(4)]
    resumed = ResumableDataLoader(data, sampler=Endless(), batch_size=3, seed=0)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in itertools.islice(resumed, 4)] == rest


@pytest.mark.parametrize("batch_size", [3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_an_iteration_resumed_mid_epoch_has_the_length_it_yields(batch_size, drop_last):
    """len(iter(loader)) after a resume: the batches left (a user's sampler too)."""

    def make(size):
        data = list(range(20))
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=False)
        return ResumableDataLoader(
            data, sampler=sampler, batch_size=size, drop_last=drop_last, seed=0
        )

    first = make(3)
    iterator = iter(first)
    next(iterator), next(iterator)
    resumed = make(batch_size)
    resumed.load_state_dict(first.state_dict())
    iterator = iter(resumed)
    assert len(iterator) == len(list(iterator)) < len(resumed)
