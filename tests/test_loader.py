"""ResumableDataLoader: exact resume across workers, batch sizes, serializations; torch parity."""

from __future__ import annotations

import functools
import gc
import itertools
import json
import random
import warnings

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resume_harness import AugmentedDataset, interrupted_stream, run, transport
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    get_worker_info,
)

import resumable_loader
from resumable_loader import ResumableDataLoader, StateDictError
from resumable_loader.loader.cursor import make_cursor
from resumable_loader.rngs.sample import sample_place

N = 29


def make(**kwargs):
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("seed", 1234)
    dataset = kwargs.pop("dataset", None) or AugmentedDataset(N)
    return lambda: ResumableDataLoader(dataset, **kwargs)


def continuous(epochs=3, **kwargs):
    return run(make(**kwargs)(), epochs)[0]


@functools.cache
def continuous_two_epochs():
    return continuous(epochs=2)


class Flaky(AugmentedDataset):
    """Sample 3 raises while ``armed``."""

    armed = True

    def __getitem__(self, index):
        if self.armed and index == 3:
            raise ValueError("sample 3 is unreadable")
        return super().__getitem__(index)


def deliveries(loader):
    """One epoch's batch ids, with "error" where a batch raised and the loop went on."""
    seen, batches = [], iter(loader)
    while True:
        try:
            seen.append(next(batches)["id"].tolist())
        except ValueError:
            seen.append("error")
        except StopIteration:
            return seen


class StatefulShuffle(torch.utils.data.Sampler):
    """A user sampler with its own generator, checkpointed through state_dict()."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self):
        return N

    def __iter__(self):
        return iter(torch.randperm(N, generator=self.generator).tolist())

    def state_dict(self):
        return {"rng": self.generator.get_state().tolist()}

    def load_state_dict(self, state):
        self.generator.set_state(torch.tensor(state["rng"], dtype=torch.uint8))


class StatelessShuffle(torch.utils.data.Sampler):
    """A custom sampler drawing from torch's global RNG, without state_dict()."""

    def __len__(self):
        return N

    def __iter__(self):
        return iter(torch.randperm(N).tolist())


class TestStreamIdentity:
    def test_alias_is_the_same_class(self):
        assert resumable_loader.DataLoader is ResumableDataLoader

    def test_zero_and_two_workers_give_the_same_stream(self):
        assert continuous(num_workers=0) == continuous(num_workers=2)

    def test_batch_size_does_not_change_the_stream(self):
        assert continuous(batch_size=1) == continuous(batch_size=7)

    def test_different_seeds_give_different_streams(self):
        a, b = continuous(seed=1), continuous(seed=2)
        assert [r[1] for r in a] != [r[1] for r in b]
        assert [r[2] for r in a] != [r[2] for r in b]

    def test_epochs_differ_and_each_is_a_permutation(self):
        stream = continuous(epochs=2)
        first = [r[1] for r in stream if r[0] == 0]
        second = [r[1] for r in stream if r[0] == 1]
        assert sorted(first) == sorted(second) == list(range(N))
        assert first != second

    def test_no_shuffle_is_sequential(self):
        assert [r[1] for r in continuous(epochs=1, shuffle=False)] == list(range(N))

    def test_default_seed_is_recorded_and_resumable(self):
        first = ResumableDataLoader(AugmentedDataset(N), batch_size=4, shuffle=True)
        head, state = run(first, 2, stop_after=3)
        second = ResumableDataLoader(AugmentedDataset(N), batch_size=4, shuffle=True)
        second.load_state_dict(state)
        tail, _ = run(second, 2)
        reference = ResumableDataLoader(
            AugmentedDataset(N), batch_size=4, shuffle=True, seed=state["seed"]
        )
        assert head + tail == run(reference, 2)[0]


class TestResume:
    @pytest.mark.parametrize("stop_after", [0, 3, 8, 9, 12])  # 8 batches/epoch at B=4, N=29
    def test_resume_points(self, stop_after):
        expected = continuous()
        got = interrupted_stream(make(), make(batch_size=3), epochs=3, stop_after=stop_after)
        assert got == expected

    @pytest.mark.parametrize("before,after", list(itertools.product([0, 1, 2, 3], repeat=2)))
    def test_every_pair_of_worker_counts(self, before, after):
        got = interrupted_stream(
            make(num_workers=before, batch_size=3),
            make(num_workers=after, batch_size=5),
            epochs=2,
            stop_after=13,  # in epoch 1 (10 batches of 3 per epoch)
        )
        assert got == continuous_two_epochs()

    def test_state_at_is_the_state_after_that_many_samples(self):
        _, real = run(make()(), 2, stop_after=11)  # 3 batches into epoch 1
        assert make()().state_at(1, 12) == real
        resumed = make()()
        resumed.load_state_dict(make()().state_at(1, 12))
        assert run(resumed, 1)[0] == continuous(epochs=2)[N + 12 :]

    @pytest.mark.parametrize("epoch,position", [(0, -1), (0, N + 1), (2**32, 0), (0, 1.5)])
    def test_state_at_refuses_a_place_outside_the_epochs(self, epoch, position):
        with pytest.raises(resumable_loader.ConfigError, match=r"position|epoch"):
            make()().state_at(epoch, position)

    @pytest.mark.parametrize("how", ["msgpack", "json", "torch"])
    def test_state_survives_serialization(self, how):
        got = interrupted_stream(make(), make(), epochs=2, stop_after=5, how=how)
        assert got == continuous(epochs=2)

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )
    @given(
        workers=st.tuples(st.sampled_from([0, 1, 2, 3]), st.sampled_from([0, 1, 2, 3])),
        batch_sizes=st.tuples(st.integers(1, 9), st.integers(1, 9)),
        persistent=st.tuples(st.booleans(), st.booleans()),
        shuffle=st.booleans(),
        stop_fraction=st.floats(0, 1),
        how=st.sampled_from(["msgpack", "json", "torch"]),
    )
    @pytest.mark.slow
    def test_random_configurations(
        self, workers, batch_sizes, persistent, shuffle, stop_fraction, how
    ):
        def loader(i):
            return make(
                num_workers=workers[i],
                batch_size=batch_sizes[i],
                persistent_workers=persistent[i] and workers[i] > 0,
                shuffle=shuffle,
            )

        epochs = 2
        total_batches = epochs * -(-N // batch_sizes[0])
        stop_after = round(stop_fraction * total_batches)
        expected = continuous(epochs=epochs, shuffle=shuffle)
        got = interrupted_stream(
            loader(0), loader(1), epochs=epochs, stop_after=stop_after, how=how
        )
        assert got == expected

    def test_resume_does_not_touch_consumed_samples(self):
        loaded = []

        class Spy(AugmentedDataset):
            def __getitem__(self, index):
                loaded.append(index)
                return super().__getitem__(index)

        head, state = run(make(dataset=Spy(N))(), 1, stop_after=5)
        loaded.clear()
        resumed = make(dataset=Spy(N))()
        resumed.load_state_dict(state)
        next(iter(resumed))
        assert len(loaded) == 4
        assert set(loaded).isdisjoint(r[1] for r in head)

    def test_state_after_last_batch_starts_next_epoch(self):
        loader = make()()
        for _ in loader:
            state = loader.state_dict()
        assert (state["epoch"], state["position"]) == (0, N)
        resumed = make()()
        resumed.load_state_dict(state)
        stream, after = run(resumed, 1)
        assert len(stream) == N and after["epoch"] == 1

    def test_drop_last_state_at_epoch_end_reports_full_length(self):
        loader = make(drop_last=True)()
        batches = list(loader)
        assert len(batches) == N // 4
        assert loader.state_dict()["position"] == N

    def test_an_epoch_without_batches_is_at_position_0_until_iterated(self):
        # drop_last with a dataset smaller than a batch: no batch an epoch. Before the first
        # iter() the cursor names position 0 (design.md), so a loader given it runs epoch 0 as
        # a fresh one does, not the epoch after; once iterated, the epoch's end.
        loader = make(dataset=AugmentedDataset(3), batch_size=4, drop_last=True)()
        state = loader.state_dict()
        assert (state["epoch"], state["position"]) == (0, 0)
        assert list(loader) == []
        assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (0, 3)
        resumed = make(dataset=AugmentedDataset(3), batch_size=4, drop_last=True)()
        resumed.load_state_dict(state)
        assert resumed.state_dict() == state
        assert list(resumed) == [] and resumed.state_dict()["epoch"] == 0

    def test_set_epoch_selects_the_epoch(self):
        loader = make()()
        loader.set_epoch(5)
        stream, state = run(loader, 1)
        assert state["epoch"] == 5
        reference = make()()
        for _ in range(6):
            expected, _ = run(reference, 1)
        assert stream == expected

    def test_set_epoch_of_the_saved_epoch_keeps_the_position(self):
        head, state = run(make()(), 2, stop_after=10)
        resumed = make()()
        resumed.load_state_dict(state)
        resumed.set_epoch(state["epoch"])
        tail, _ = run(resumed, 1)
        assert head + tail == continuous(epochs=2)

    def test_state_after_breaking_out_continues_the_epoch_live_or_resumed(self):
        live = make()()
        head, state = run(live, 1, stop_after=3)  # the loop breaks out after 3 batches
        resumed = make()()
        resumed.load_state_dict(state)
        live.load_state_dict(live.state_dict())  # to continue the epoch on this loader too
        assert head + run(resumed, 2)[0] == head + run(live, 2)[0] == continuous(epochs=2)

    def test_set_epoch_loop_resumed_after_an_epochs_last_batch_runs_each_epoch_once(self):
        def epochs_seen(loader, first_epoch, state=None):
            if state is not None:
                loader.load_state_dict(state)
            seen = []
            for epoch in range(first_epoch, 3):
                loader.set_epoch(epoch)
                seen += [(loader.state_dict()["epoch"], r) for r in run(loader, 1)[0]]
            return seen

        loader = make()()
        loader.set_epoch(0)
        for _ in loader:
            state = loader.state_dict()  # checkpoint at the epoch's last step
        expected = epochs_seen(make()(), 0)
        head = [(0, r) for r in continuous(epochs=1)]
        assert head + epochs_seen(make()(), state["epoch"], state) == expected

    def test_state_dict_after_load_and_set_epoch_is_what_iter_runs(self):
        _, state = run(make()(), 1, stop_after=3)
        loader = make()()
        loader.load_state_dict(state)
        loader.set_epoch(5)
        assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (5, 0)
        with pytest.warns(resumable_loader.ResumeWarning, match="discards"):
            iter(loader)

    @pytest.mark.parametrize("num_workers", [0, 2])
    def test_only_the_latest_iterator_moves_the_cursor(self, num_workers):
        loader = make(num_workers=num_workers)()
        older = iter(loader)
        next(older)
        newer = iter(loader)
        with pytest.warns(resumable_loader.ResumeWarning, match="not counted in state_dict"):
            rest_of_older = list(older)  # said once, not for each of its batches
        assert len(rest_of_older) == len(loader) - 1
        assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (1, 0)
        next(newer)
        assert loader.state_dict()["position"] == 4

    def test_an_older_iterator_over_persistent_workers_is_refused_not_robbing_the_newer(self):
        """torch resets its persistent workers' one iterator for each iter(): the older
        wrapper read the newer iteration's batches (missing from its stream and the cursor)
        and then failed with a bare IndexError. It raises at its next next() instead."""
        loader = make(num_workers=2, persistent_workers=True, prefetch_factor=1)()
        older = iter(loader)
        next(older)
        newer = iter(loader)
        first = next(newer)
        with pytest.raises(resumable_loader.ConfigError, match="superseded by a later iter"):
            next(older)
        continuous = make()()
        list(continuous)  # epoch 0
        expected = list(continuous)  # epoch 1: all of it, in order
        got = [first, *newer]
        assert [b["id"].tolist() for b in got] == [b["id"].tolist() for b in expected]
        assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (1, N)

    def test_in_order_false_state_after_the_last_batch(self):
        loader = make(num_workers=2, in_order=False)()
        batches = iter(loader)
        for _ in range(len(loader)):
            next(batches)
        assert loader.state_dict()["position"] == N

    def test_state_before_first_batch_and_size(self):
        loader = make()()
        state = loader.state_dict()
        assert (state["epoch"], state["position"]) == (0, 0)
        assert len(msgpack.packb(state)) <= 1024

    def test_largest_cursor_fits_in_a_kilobyte(self):
        def loader():
            return ResumableDataLoader(
                AugmentedDataset(2**62), batch_size=4, shuffle=True, seed=2**64 - 1
            )

        saved = loader().state_dict()
        far = make_cursor(
            seed=saved["seed"],
            epoch=2**32 - 1,
            position=2**62 - 8,
            fingerprint=saved["fingerprint"],
        )
        resumed = loader()
        resumed.load_state_dict(far)
        next(iter(resumed))
        state = resumed.state_dict()
        assert (state["epoch"], state["position"]) == (2**32 - 1, 2**62 - 4)
        assert len(msgpack.packb(state)) <= 1024 and len(json.dumps(state)) <= 1024

    def test_persistent_workers_across_epochs(self):
        assert continuous(num_workers=2, persistent_workers=True) == continuous()


class TestPerSampleRandomness:
    @pytest.mark.slow
    def test_sample_generators_replay(self):
        class GeneratorDataset(Dataset):
            def __len__(self):
                return N

            def __getitem__(self, index):
                rng = resumable_loader.sample_numpy_generator()
                gen = resumable_loader.sample_torch_generator()
                aug = torch.from_numpy(rng.random(2)).float() + torch.rand(2, generator=gen)
                return {"id": index, "aug": aug}

        kwargs = dict(dataset=GeneratorDataset(), reseed_globals=False)
        expected = continuous(**kwargs)
        got = interrupted_stream(
            make(**kwargs), make(num_workers=2, batch_size=5, **kwargs), epochs=3, stop_after=4
        )
        assert got == expected

    def test_sample_key_outside_a_fetch_is_an_error(self):
        with pytest.raises(resumable_loader.ResumableLoaderError, match="sample_key"):
            resumable_loader.sample_key()
        with pytest.raises(resumable_loader.ResumableLoaderError, match="sample_place"):
            sample_place()

    def test_sample_place_is_the_keys_coordinates(self):
        class Places(Dataset):
            def __len__(self):
                return N

            def __getitem__(self, index):
                key = resumable_loader.sample_key()
                return torch.tensor([*sample_place(), key.seed, key.epoch, key.position])

        loader = make(dataset=Places(), batch_size=4)()
        loader.set_epoch(2)
        rows = torch.cat(list(loader)).tolist()
        assert [row[:3] for row in rows] == [row[3:] for row in rows]
        assert [row[2] for row in rows] == list(range(N)) and {row[1] for row in rows} == {2}

    def test_collate_runs_under_the_batch_key(self):
        def collate(samples):
            return {
                "id": torch.tensor([s["id"] for s in samples]),
                "aug": torch.rand(len(samples), 2),
            }

        expected = continuous(collate_fn=collate)
        got = interrupted_stream(
            make(collate_fn=collate),
            make(collate_fn=collate, num_workers=2),
            epochs=3,
            stop_after=5,
        )
        assert got == expected

    def test_main_process_rng_is_left_alone(self):
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        loader = make()()
        list(loader)
        after_loading = torch.rand(1), random.random(), np.random.rand()
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        iter(make()())  # torch draws one base seed per iterator, as DataLoader does
        assert (torch.rand(1), random.random(), np.random.rand()) == after_loading

    def test_reseed_off_leaves_globals_to_the_user(self):
        a = continuous(epochs=1, reseed_globals=False)
        b = continuous(epochs=1, reseed_globals=False)
        assert [r[1] for r in a] == [r[1] for r in b]
        assert [r[2] for r in a] != [r[2] for r in b]


class TestTorchParity:
    @pytest.mark.parametrize(
        "kwargs",
        [
            dict(num_workers=-1),
            dict(timeout=-1),
            dict(prefetch_factor=2),
            dict(persistent_workers=True),
            dict(batch_sampler=[[0]], batch_size=2),
            dict(sampler=SequentialSampler(range(3)), shuffle=True),
            dict(batch_size=None, drop_last=True),
        ],
    )
    def test_same_argument_errors_as_torch(self, kwargs):
        with pytest.raises(ValueError) as theirs:
            DataLoader(AugmentedDataset(3), **kwargs)
        with pytest.raises(ValueError) as ours:
            ResumableDataLoader(AugmentedDataset(3), **kwargs)
        assert str(ours.value) == str(theirs.value)

    @pytest.mark.parametrize("batch_size,drop_last", [(4, False), (4, True), (1, False)])
    def test_len_matches_torch(self, batch_size, drop_last):
        kwargs = dict(batch_size=batch_size, drop_last=drop_last)
        assert len(ResumableDataLoader(AugmentedDataset(N), **kwargs)) == len(
            DataLoader(AugmentedDataset(N), **kwargs)
        )

    def test_unshuffled_batches_equal_torch(self):
        ours = [b["id"].tolist() for b in ResumableDataLoader(AugmentedDataset(N), batch_size=4)]
        theirs = [b["id"].tolist() for b in DataLoader(AugmentedDataset(N), batch_size=4)]
        assert ours == theirs

    def test_attributes_stay_torchs(self):
        dataset = AugmentedDataset(N)
        loader = ResumableDataLoader(dataset, batch_size=4, drop_last=True)
        assert loader.dataset is dataset
        assert (loader.batch_size, loader.drop_last) == (4, True)

    def test_batch_size_none_yields_samples(self):
        loader = ResumableDataLoader(AugmentedDataset(5), batch_size=None, shuffle=True, seed=3)
        items = list(loader)
        assert sorted(item["id"] for item in items) == list(range(5))

    def test_worker_info_inside_workers(self):
        class WorkerAware(AugmentedDataset):
            def __getitem__(self, index):
                info = get_worker_info()
                return {"id": index, "aug": torch.tensor([info.num_workers, info.dataset.length])}

        batches = list(ResumableDataLoader(WorkerAware(6), batch_size=2, num_workers=2))
        assert all(b["aug"][:, 0].tolist() == [2, 2] for b in batches)
        assert all(b["aug"][:, 1].tolist() == [6, 6] for b in batches)

    def test_worker_init_fn_sees_the_users_dataset(self):
        class Handle(Dataset):
            handle = 0

            def __len__(self):
                return 4

            def __getitem__(self, index):
                return type(get_worker_info().dataset).__name__, self.handle + index

        def init(worker_id):
            get_worker_info().dataset.handle = 100

        def batches(loader):
            return [(list(names), values.tolist()) for names, values in loader]

        kwargs = dict(batch_size=2, num_workers=2, worker_init_fn=init)
        ours = batches(ResumableDataLoader(Handle(), seed=0, **kwargs))
        assert ours == batches(DataLoader(Handle(), **kwargs))
        assert ours == [(["Handle"] * 2, [100, 101]), (["Handle"] * 2, [102, 103])]

    # With workers, torch's re-raise of a worker's error leaves a reference cycle around its
    # iterator, whose workers then stop only at a gc run (as with torch): such tests collect
    # at their end, so that they are the ones that wait, and are marked slow. At that gc run
    # the index queues' finalizers have already stopped their feeder threads, so the workers
    # never receive the stop message and torch joins each for MP_STATUS_CHECK_INTERVAL (5 s)
    # before it terminates it: `prompt_join` makes that wait 0.2 s.
    WITH_WORKERS = pytest.param(2, marks=pytest.mark.slow)

    @pytest.fixture
    def prompt_join(self, monkeypatch):
        """Torch's join timeout for workers that miss their stop message: 0.2 s, not 5."""
        monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)

    @pytest.mark.parametrize("num_workers", [0, WITH_WORKERS])
    def test_iteration_goes_on_after_a_batch_error_as_torchs(self, prompt_join, num_workers):
        theirs = deliveries(DataLoader(Flaky(8), batch_size=2, num_workers=num_workers))
        loader = ResumableDataLoader(Flaky(8), batch_size=2, num_workers=num_workers, seed=0)
        assert deliveries(loader) == theirs == [[0, 1], "error", [4, 5], [6, 7]]
        assert loader.state_dict()["position"] == 8
        del loader
        gc.collect()

    @pytest.mark.parametrize("num_workers", [0, WITH_WORKERS])
    def test_state_after_a_batch_error_retries_it_until_the_loop_goes_past(
        self, prompt_join, num_workers
    ):
        loader = ResumableDataLoader(Flaky(8), batch_size=2, num_workers=num_workers, seed=0)
        batches = iter(loader)
        next(batches)
        with pytest.raises(ValueError):
            next(batches)
        assert loader.state_dict()["position"] == 2  # a resume retries the failed batch
        next(batches)
        assert loader.state_dict()["position"] == 6  # went on: the failed batch is skipped
        del batches, loader
        gc.collect()

    @pytest.mark.slow
    def test_persistent_workers_go_on_after_a_caught_batch_error(self, prompt_join):
        kwargs = dict(batch_size=2, num_workers=2, persistent_workers=True)
        theirs = DataLoader(Flaky(8), **kwargs)
        ours = ResumableDataLoader(Flaky(8), seed=0, **kwargs)
        for _ in range(2):
            assert deliveries(ours) == deliveries(theirs) == [[0, 1], "error", [4, 5], [6, 7]]
        del theirs, ours
        gc.collect()

    @pytest.mark.parametrize("num_workers", [0, WITH_WORKERS])
    def test_worker_errors_reach_the_main_process(self, prompt_join, num_workers):
        class Broken(AugmentedDataset):
            def __getitem__(self, index):
                if index == 3:
                    raise KeyError("sample 3 is broken")
                return super().__getitem__(index)

        loader = ResumableDataLoader(Broken(8), batch_size=2, num_workers=num_workers)
        with pytest.raises(KeyError, match="sample 3 is broken"):
            list(loader)
        del loader
        gc.collect()


class TestStateErrors:
    def test_iterable_dataset_iterates_but_has_no_state(self):
        class Stream(IterableDataset):
            def __iter__(self):
                return iter(range(5))

        loader = ResumableDataLoader(Stream(), batch_size=2)
        assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4]]
        with pytest.raises(StateDictError, match="IterableDataset"):
            loader.state_dict()

    def test_a_loader_over_an_iterable_dataset_has_no_cursor_methods_as_torchs(self):
        """Frameworks save whatever is Stateful (Lightning's checkpoints): over an
        IterableDataset the loader is not, as torch's DataLoader is not, instead of raising at
        their first save."""
        from torch.distributed.checkpoint.stateful import Stateful

        from resumable_loader import NotResumableError

        class Stream(IterableDataset):
            def __iter__(self):
                return iter(range(5))

        loader = ResumableDataLoader(Stream(), batch_size=2, num_workers=1)
        assert isinstance(loader, ResumableDataLoader) and [len(b) for b in loader] == [2, 2, 1]
        assert not isinstance(loader, Stateful) and not hasattr(loader, "load_state_dict")
        with pytest.raises(NotResumableError, match=r"load_state_dict\(\) needs a map-style"):
            loader.load_state_dict({})
        assert isinstance(ResumableDataLoader(list(range(5)), seed=1), Stateful)

    def test_other_dataset_length_is_named(self):
        state = make()().state_dict()
        with pytest.raises(StateDictError, match=r"fingerprint\.length.*29.*30"):
            make(dataset=AugmentedDataset(30))().load_state_dict(state)

    def test_cursor_from_another_permutation_algorithm_is_refused(self):
        saved = make()().state_dict()
        fingerprint = dict(saved["fingerprint"], algorithm="feistel-v1")
        state = make_cursor(seed=saved["seed"], epoch=0, position=0, fingerprint=fingerprint)
        with pytest.raises(StateDictError, match=r"fingerprint\.algorithm.*feistel-v1"):
            make()().load_state_dict(state)

    def test_other_shuffle_setting_is_named(self):
        state = make()().state_dict()
        with pytest.raises(StateDictError, match=r"fingerprint\.order"):
            make(shuffle=False)().load_state_dict(state)

    def test_explicit_other_seed_is_named(self):
        state = make(seed=1)().state_dict()
        with pytest.raises(StateDictError, match=r"'seed': saved 1, current loader 2"):
            make(seed=2)().load_state_dict(state)

    @pytest.mark.parametrize(
        "mutate,match",
        [
            (lambda s: s.update(version=99), "version"),
            (lambda s: s.update(format="torchdata"), "format"),
            (lambda s: s.pop("position"), "position.*missing"),
            (lambda s: s.update(epoch="1"), "epoch.*str"),
            (lambda s: s.update(position=-1), "position"),
            (lambda s: s.update(position=N), "checksum"),
            (lambda s: s.update(seed=2**64), "seed"),
        ],
    )
    def test_malformed_states(self, mutate, match):
        state = make()().state_dict()
        mutate(state)
        with pytest.raises(StateDictError, match=match):
            make()().load_state_dict(state)

    def test_not_a_dict(self):
        with pytest.raises(StateDictError, match="got list"):
            make()().load_state_dict([1, 2])

    def test_in_order_false_mid_epoch_refuses(self):
        loader = make(num_workers=2, in_order=False)()
        iterator = iter(loader)
        next(iterator)
        with pytest.raises(StateDictError, match="in_order"):
            loader.state_dict()
        del iterator


class TestUserSamplers:
    def test_sequential_sampler_resumes(self):
        def loader(batch_size):
            return lambda: ResumableDataLoader(
                AugmentedDataset(N),
                batch_size=batch_size,
                sampler=SequentialSampler(range(N)),
                seed=5,
            )

        expected = run(loader(4)(), 2)[0]
        assert interrupted_stream(loader(4), loader(4), epochs=2, stop_after=3) == expected

    def test_stateful_sampler_is_checkpointed(self):
        def loader():
            return ResumableDataLoader(
                AugmentedDataset(N), batch_size=4, sampler=StatefulShuffle(), seed=5
            )

        expected = run(loader(), 3)[0]
        assert interrupted_stream(loader, loader, epochs=3, stop_after=10) == expected

    @pytest.mark.parametrize("sampler", ["sequential", "stateful"])
    def test_state_after_the_last_batch_starts_the_next_epoch(self, sampler):
        def loader():
            source = SequentialSampler(range(N)) if sampler == "sequential" else StatefulShuffle()
            return ResumableDataLoader(AugmentedDataset(N), batch_size=4, sampler=source, seed=5)

        expected = run(loader(), 2)[0]
        got = interrupted_stream(loader, loader, epochs=2, stop_after=len(loader()))
        assert got == expected

    def test_stateless_custom_sampler_resumes_at_an_epoch_boundary(self):
        def loader():
            return ResumableDataLoader(
                AugmentedDataset(N), batch_size=4, sampler=StatelessShuffle(), seed=5
            )

        first = loader()
        with pytest.warns(resumable_loader.ResumeWarning, match="will refuse"):  # mid-epoch
            for _ in first:
                state = first.state_dict()
            resumed = loader()
            resumed.load_state_dict(state)
            stream, after = run(resumed, 1)
        assert sorted(r[1] for r in stream) == list(range(N))
        # A user sampler's epoch length is its own: a finished epoch is recorded as the next.
        assert (state["epoch"], state["position"]) == (1, 0)
        assert (after["epoch"], after["position"]) == (2, 0)

    def test_state_at_needs_a_place_of_two_numbers(self):
        # A generator decides RandomSampler's epochs: (epoch, position) alone cannot place it.
        generator = torch.Generator().manual_seed(0)
        sampler = RandomSampler(range(N), generator=generator)
        loader = ResumableDataLoader(AugmentedDataset(N), batch_size=4, sampler=sampler, seed=5)
        with pytest.raises(StateDictError, match="RandomSampler"):
            loader.state_at(0, 4)
        for source in (StatelessShuffle(), StatefulShuffle()):
            with pytest.raises(StateDictError, match=type(source).__name__):
                ResumableDataLoader(AugmentedDataset(N), sampler=source, seed=5).state_at(0, 4)

    def test_state_at_places_a_sequential_sampler(self):
        def loader():
            sampler = SequentialSampler(range(N))
            return ResumableDataLoader(AugmentedDataset(N), batch_size=4, sampler=sampler, seed=5)

        expected = run(loader(), 1)[0]
        resumed = loader()
        resumed.load_state_dict(resumed.state_at(0, 8))
        assert run(resumed, 1)[0] == expected[8:]

    def test_stateless_custom_sampler_refuses_mid_epoch_resume(self):
        def loader():
            return ResumableDataLoader(
                AugmentedDataset(N), batch_size=4, sampler=StatelessShuffle(), seed=5
            )

        with pytest.warns(resumable_loader.ResumeWarning, match="will refuse.*StatelessShuffle"):
            _, state = run(loader(), 1, stop_after=2)  # said when the state is taken
        with pytest.raises(StateDictError, match="StatelessShuffle"):
            loader().load_state_dict(state)


def test_state_dict_through_transport_is_plain():
    state = transport(make()().state_dict(), "msgpack")
    assert set(state) == {
        "format",
        "version",
        "seed",
        "epoch",
        "position",
        "fingerprint",
        "checksum",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make()().load_state_dict(state)
