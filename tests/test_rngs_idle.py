"""reseed_globals="auto": the stream of True, whole, for every transform that draws."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resume_harness import digest, interrupted_stream, run
from torch.utils.data import Dataset, default_collate

from resumable_loader import DataLoader
from resumable_loader.errors import ConfigError
from resumable_loader.loader.keyed_fetch import install_batch_sample_key
from resumable_loader.rngs.idle import GeneratorsInUse
from resumable_loader.rngs.process import NUMPY, PYTHON, TORCH, this_process

LENGTH = 60


def _words(values: Any) -> float:
    """A float that changes with any of many drawn words."""
    return float(int(np.asarray(values, dtype=np.uint64).sum()) % 2**52)


# What a transform draws: name -> function of nothing, returning a float.
DRAWS = {
    "python": random.random,
    "numpy": lambda: float(np.random.rand()),
    "torch": lambda: float(torch.rand(1)),
    # exactly 624 words: the MT position moves to 624 with no twist, its words unchanged
    "python624": lambda: _words([random.getrandbits(32) for _ in range(624)]),
    "numpy624": lambda: _words(np.random.randint(0, 2**32, 624, dtype=np.uint64)),
    "torch624": lambda: _words(torch.randint(0, 2**31, (624,)).numpy()),
    # one Gaussian each: the caches hold the second of the pair
    "python_gauss": lambda: random.gauss(0.0, 1.0),
    "numpy_gauss": lambda: float(np.random.standard_normal()),
    "torch_gauss": lambda: float(torch.randn(1)),
    # seeds the generator itself: its output does not depend on the entry state
    "python_seed": lambda: (random.seed(5), random.random())[1],
    "numpy_seed": lambda: (np.random.seed(5), float(np.random.rand()))[1],
    "torch_seed": lambda: float(torch.manual_seed(5).initial_seed() + torch.rand(1)),
}


class Draws(Dataset):
    """Sample i draws each of ``plan``'s (kind, probability) with that probability, decided by
    i alone; "aug" holds what it drew (0 where it did not)."""

    def __init__(self, plan: list[tuple[str, float]], length: int = LENGTH) -> None:
        self.plan, self.length = plan, length
        self.fingerprint = f"draws {plan} {length}"

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        decide = random.Random(index * 7919)
        drawn = [DRAWS[kind]() if decide.random() < p else 0.0 for kind, p in self.plan]
        return {"id": index, "aug": torch.tensor(drawn, dtype=torch.float64)}


class BatchedDraws(Draws):
    """The same samples read a batch at a time, each under its own key."""

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        samples = []
        for i, index in enumerate(indices):
            install_batch_sample_key(i)
            samples.append(self[index])
        return samples


def collate_drawing(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """default_collate, then a draw from torch into every sample (a collate_fn that draws)."""
    batch = default_collate(samples)
    batch["aug"] = batch["aug"] + torch.rand(1, dtype=torch.float64)
    return batch


def loader(dataset: Dataset, reseed: bool | str, workers: int = 0, batch: int = 4, **kw: Any):
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        seed=13,
        num_workers=workers,
        reseed_globals=reseed,
        **kw,
    )


def stream(dataset: Dataset, reseed: bool | str, workers: int = 0, batch: int = 4, **kw: Any):
    return run(loader(dataset, reseed, workers, batch, **kw), 2)[0]


PLANS = {
    "rare torch": [("torch", 1 / 50)],
    "each generator": [("python", 0.1), ("numpy", 0.1), ("torch", 0.1)],
    "624 words": [("python624", 0.1), ("numpy624", 0.1), ("torch624", 0.1)],
    "gaussians": [("python_gauss", 0.2), ("numpy_gauss", 0.2), ("torch_gauss", 0.2)],
    "seeds itself": [("python_seed", 0.1), ("numpy_seed", 0.1), ("torch_seed", 0.1)],
    "never": [],
}


@pytest.mark.parametrize("plan", PLANS)
def test_auto_loads_the_stream_of_true_at_zero_workers(plan):
    dataset = Draws(PLANS[plan])
    assert stream(dataset, "auto", batch=5) == stream(dataset, True)


@pytest.mark.parametrize(
    "plan, dataset_type",
    [("rare torch", Draws), ("each generator", BatchedDraws), ("624 words", Draws)],
)
def test_auto_at_two_workers_and_resumed_is_the_stream_of_true(plan, dataset_type):
    dataset = dataset_type(PLANS[plan])
    expected = stream(dataset, True)
    assert stream(dataset, "auto", workers=2, batch=7, persistent_workers=True) == expected
    resumed = interrupted_stream(
        lambda: loader(dataset, "auto", batch=6),
        lambda: loader(dataset, "auto", workers=2, batch=4),
        epochs=2,
        stop_after=7,
    )
    assert resumed == expected


def test_a_spawned_worker_loads_the_stream_of_true():
    dataset = Draws(PLANS["each generator"])  # the fetch, its reseeder unbound, pickled over
    spawned = stream(
        dataset,
        "auto",
        workers=1,
        batch=5,
        multiprocessing_context="spawn",
        persistent_workers=True,
    )
    assert spawned == stream(dataset, True)


def test_unbatched_samples_load_the_stream_of_true():
    def one(sample: dict[str, Any]) -> list[tuple[int, str]]:
        return [(int(sample["id"]), digest(sample["aug"]))]

    dataset = Draws(PLANS["each generator"])
    auto, true = (run(loader(dataset, r, batch=None), 2, per_sample=one)[0] for r in ("auto", True))
    assert auto == true


class FailsOnEntryDraw(Draws):
    """Raises for one value of torch.rand(1): the first draw from the entry state of (seed
    13, epoch 0), which no sample's own state gives."""

    def __init__(self) -> None:
        super().__init__([("torch", 0.1)])
        in_use = GeneratorsInUse()
        in_use.enter(13, 0)
        self.entry_draw = float(torch.rand(1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        if float(sample["aug"][0]) == self.entry_draw:
            raise ValueError("a value only the entry state gives")
        return sample


def test_a_batch_that_failed_after_changing_an_idle_generator_is_loaded_again():
    dataset = FailsOnEntryDraw()
    assert stream(dataset, "auto") == stream(dataset, True)


def test_a_collate_fn_that_draws_is_seen():
    dataset = Draws(PLANS["never"])
    auto = stream(dataset, "auto", collate_fn=collate_drawing)
    assert auto == stream(dataset, True, collate_fn=collate_drawing)


@pytest.mark.parametrize("first, second", [(True, "auto"), ("auto", True)])
def test_true_and_auto_resume_each_other(first, second):
    dataset = Draws(PLANS["each generator"])
    assert loader(dataset, first).fingerprint() == loader(dataset, second).fingerprint()
    resumed = interrupted_stream(
        lambda: loader(dataset, first), lambda: loader(dataset, second, batch=3), epochs=2,
        stop_after=5,
    )  # fmt: skip
    assert resumed == stream(dataset, True)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(sorted(DRAWS)), st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0])),
        max_size=3,
    ),
    batch=st.integers(1, 9),
)
def test_any_mix_of_draws_gives_the_stream_of_true(plan, batch):
    dataset = Draws(plan, length=30)
    assert stream(dataset, "auto", batch=batch) == stream(dataset, True, batch=4)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(sorted(DRAWS)), st.sampled_from([0.02, 0.1, 0.5])),
        min_size=1,
        max_size=3,
    ),
    first=st.tuples(st.sampled_from([0, 2]), st.integers(1, 8)),
    second=st.tuples(st.sampled_from([0, 2]), st.integers(1, 8)),
    stop_after=st.integers(1, 9),
)
def test_any_mix_of_draws_resumed_in_any_layout_gives_the_stream_of_true(
    plan, first, second, stop_after
):
    dataset = Draws(plan, length=30)
    resumed = interrupted_stream(
        lambda: loader(dataset, "auto", *first),
        lambda: loader(dataset, "auto", *second),
        epochs=2,
        stop_after=stop_after,
    )
    assert resumed == stream(dataset, True)


def test_generators_never_drawn_from_stay_idle_and_are_not_reseeded():
    numpy = loader(Draws([("numpy", 0.05)]), "auto")
    run(numpy, 1)
    assert numpy._fetch.in_use.live == 1 << NUMPY
    others = loader(Draws([("python_gauss", 0.05), ("torch_gauss", 0.05)]), "auto")
    run(others, 1)  # each loader its own: numpy's use by the first one is not this one's
    assert others._fetch.in_use.live == 1 << PYTHON | 1 << TORCH


def test_the_entry_state_is_one_per_seed_and_epoch_and_any_draw_is_seen():
    in_use, states = GeneratorsInUse(), []
    for seed, epoch in [(1, 0), (1, 1), (2, 0), (1, 0)]:
        assert in_use.enter(seed, epoch) == 0
        states.append((random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()))
        assert not in_use.went_live()
    assert states[0][0] == states[3][0] and torch.equal(states[0][2], states[3][2])
    assert len({repr(s[0]) for s in states[:3]}) == 3 and states[0][1] != states[2][1]
    for draw, generator in [
        (lambda: [random.getrandbits(32) for _ in range(624)], PYTHON),
        (lambda: np.random.randint(0, 2**32, 624, dtype=np.uint64), NUMPY),
        (lambda: torch.randint(0, 2**31, (624,)), TORCH),
        (lambda: random.setstate((*random.getstate()[:2], 0.5)), PYTHON),  # a cached Gaussian
    ]:
        in_use = GeneratorsInUse()
        in_use.enter(1, 0)
        draw()
        assert in_use.went_live() and in_use.live == 1 << generator


def test_fork_rng_is_not_seen_and_reads_one_entry_state_in_every_layout():
    """Documented: a generator read without being changed gives every sample the (seed,
    epoch) entry state under "auto" (per-sample states need True), in any layout."""

    def forked() -> float:
        with torch.random.fork_rng():
            return float(torch.rand(1))

    DRAWS["forked"] = forked
    try:
        dataset = Draws([("forked", 1.0)])
        first = loader(Draws([("torch", 0.2)]), "auto")
        run(first, 1)  # another loader's torch draws in this process change nothing below
        assert first._fetch.in_use.live == 1 << TORCH
        auto = stream(dataset, "auto")
        assert auto == stream(dataset, "auto", workers=2, batch=7)
        assert len({digest for epoch, _, digest in auto if epoch == 0}) == 1
        assert len({digest for _, _, digest in stream(dataset, True)}) == 2 * LENGTH
    finally:
        del DRAWS["forked"]


def test_the_training_loops_generators_are_left_alone_at_zero_workers():
    def loop(with_loader: bool) -> list[float]:
        torch.manual_seed(3), random.seed(3), np.random.seed(3)
        drawn = []
        for _ in loader(Draws(PLANS["each generator"]), "auto") if with_loader else range(15):
            drawn += [float(torch.rand(1)), random.random(), float(np.random.rand())]
        return drawn

    assert loop(True) == loop(False)


class Failing(Draws):
    """Draws, but samples 3 and 40 fail to load."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index in (3, 40):
            raise OSError(f"sample {index} is damaged")
        return super().__getitem__(index)


def test_substitute_mode_logs_each_bad_sample_once_and_loads_the_stream_of_true(tmp_path):
    from resumable_loader.loader.bad_samples import quarantine_file, read_quarantine

    def substituted(reseed: bool | str, directory: str) -> list:
        quarantine = tmp_path / directory
        got = run(
            loader(
                Failing([("torch", 0.05)]),
                reseed,
                on_sample_error="substitute",
                max_bad_fraction=0.5,
                quarantine_dir=str(quarantine),
            ),
            1,
        )[0]
        lines = quarantine_file(quarantine, 0).read_text().splitlines()
        assert sorted(read_quarantine(quarantine)) == [3, 40] and len(lines) == 2
        return got

    assert substituted("auto", "auto") == substituted(True, "true")


def test_packed_and_mixture_load_the_stream_of_true():
    from packing_factory import Texts, lengths, make, packs

    from resumable_loader.mixture import Mixture

    texts = Texts(lengths(40))
    runs = {
        r: [p for batch in make(texts, batch_size=3, reseed_globals=r) for p in packs(batch)]
        for r in (True, "auto")
    }
    assert runs["auto"] == runs[True]
    sources = {"a": Draws([("torch", 0.1)], 20), "b": Draws([("numpy", 0.1)], 30)}
    mixed = {
        r: run(DataLoader(Mixture(sources, {"a": 1, "b": 2}, samples_per_epoch=24), seed=4,
                          batch_size=5, reseed_globals=r), 2)[0]
        for r in (True, "auto")
    }  # fmt: skip
    assert mixed["auto"] == mixed[True]


@pytest.mark.parametrize("bad", ["yes", 1, None, "Auto"])
def test_reseed_globals_takes_true_false_or_auto(bad):
    with pytest.raises(ConfigError, match=r'reseed_globals must be True, False or "auto"'):
        loader(Draws([]), bad)


def test_a_process_whose_generators_cannot_be_watched_reseeds_all_of_them(monkeypatch):
    monkeypatch.setattr(type(this_process()), "watchable", property(lambda self: None))
    in_use = GeneratorsInUse()
    assert in_use.enter(1, 0) == 7 and not in_use.went_live()
    dataset = Draws(PLANS["each generator"])
    assert stream(dataset, "auto") == stream(dataset, True)
