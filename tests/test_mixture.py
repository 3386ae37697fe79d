"""Mixture core: schedule validation, exact proportions, per-source streams, resume checks."""

from __future__ import annotations

import ast
import logging
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resumable_loader import Packed, ResumableDataLoader
from resumable_loader.errors import ConfigError, StateDictError
from resumable_loader.mixture import Mixture, MixtureSource
from resumable_loader.mixture.allocation import PhaseAllocation
from resumable_loader.mixture.streams import source_seed
from resumable_loader.order.shard_local import ShardShuffle


class Sized:
    """A map-style dataset of ``length`` ids (what a sample is does not matter here)."""

    def __init__(self, length: int, fingerprint: str | None = None) -> None:
        self.length = length
        if fingerprint is not None:
            self.fingerprint = fingerprint

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


class Sharded(Sized):
    def __init__(self, shard_sizes: list[int]) -> None:
        super().__init__(sum(shard_sizes))
        self.shard_sizes = np.array(shard_sizes)


def mixture(**kwargs):
    defaults = dict(
        sources={"web": Sized(50), "code": Sized(20), "math": Sized(5)},
        weights={"web": 5, "code": 3, "math": 2},
        phases=[(40, {"web": 1, "math": 1}), (90, {"code": 1, "math": Fraction(1, 2)})],
        samples_per_epoch=60,
    )
    defaults.update(kwargs)
    return Mixture(**defaults)


def per_source_draws(order, stop):
    """For every source, the (draw number, sample id) of each of its draws before ``stop``."""
    draws = {name: [] for name in order.names}
    for where in range(stop):
        epoch, position = divmod(where, order.length)
        info = order.provenance(epoch, position)
        draws[info["source"]].append((info["draw"], info["sample_id"]))
    return draws


class TestSchedule:
    def test_float_weight_is_refused_with_the_fraction_to_pass(self):
        with pytest.raises(ConfigError, match=r"float 0\.3.*Fraction\(3, 10\)"):
            mixture(weights={"web": 0.3, "code": 1})

    @pytest.mark.parametrize(
        "value, suggested",
        [
            (np.float64(0.1), Fraction(1, 10)),  # numpy's repr is not a decimal literal
            (np.float32(0.3), Fraction(3, 10)),  # not a float subclass; 0.30000001192092896
            (1 / 3, Fraction(1, 3)),  # its 16-digit decimal would exceed the period
            (0.1 + 0.2, Fraction(3, 10)),
            (0.123456, Fraction(1929, 15625)),
        ],
    )
    def test_every_float_is_refused_with_a_fraction_that_is_accepted(self, value, suggested):
        text = rf"Fraction\({suggested.numerator}, {suggested.denominator}\)"
        with pytest.raises(ConfigError, match=rf"weights\['web'\] is the float .*pass {text}"):
            mixture(weights={"web": value, "code": 1})
        weights = (
            mixture(weights={"web": suggested, "code": 1}, phases=[]).schedule.phases[0].weights
        )
        assert Fraction(weights[0], sum(weights)) == suggested / (suggested + 1)

    def test_float_in_a_later_phase_names_the_phase(self):
        with pytest.raises(ConfigError, match=r"phase 1\['web'\].*Fraction\(1, 4\)"):
            mixture(phases=[(10, {"web": 0.25})])

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(weights={"web": 1, "books": 1}), "books"),
            (dict(weights={"web": -1, "code": 1}), ">= 0"),
            (dict(weights={"web": 0}), "every weight is 0"),
            (dict(phases=[(10, {"web": 1}), (10, {"code": 1})]), "increasing order"),
            (dict(phases=[(0, {"web": 1})]), "start"),
            (dict(phases=[(10, {"web": True})]), "int"),
            (dict(weights={"web": 70000, "code": 1}), r"Fraction|e\.g\."),
            (dict(samples_per_epoch=0), "samples_per_epoch"),
            (dict(sources={"": Sized(3)}, weights={"": 1}), "non-empty"),
            (dict(sources={"web": Sized(0)}, weights={"web": 1}, phases=()), "empty"),
        ],
    )
    def test_bad_schedules_are_refused(self, kwargs, message):
        with pytest.raises(ConfigError, match=message):
            mixture(**kwargs)

    @pytest.mark.parametrize(
        "weights",
        [
            {"web": 65536, "code": 1},
            {"web": 40000, "code": 30001, "math": 1},
            {"web": Fraction(1, 70000), "code": 1},
            {"web": 99991, "code": 99989, "math": 99961},
        ],
    )
    def test_weights_past_the_period_are_refused_with_weights_that_are_accepted(self, weights):
        with pytest.raises(ConfigError, match=r"more than 65536") as refused:
            mixture(weights=weights, phases=())
        suggested = ast.literal_eval(re.search(r"e\.g\. (\{.*?\})", str(refused.value))[1])
        assert suggested.keys() == weights.keys()  # every source drawn from still is
        accepted = mixture(weights=suggested, phases=()).schedule.phases[0].weights
        assert sum(accepted) <= 65536 and all(accepted[: len(weights)])
        for name, weight in suggested.items():  # and near its share
            share = Fraction(weights[name]) / sum(map(Fraction, weights.values()))
            assert abs(Fraction(weight, sum(suggested.values())) - share) < Fraction(1, 30000)

    def test_weights_reduce_to_coprime_integers(self):
        m = mixture(weights={"web": Fraction(1, 2), "code": Fraction(1, 3)}, phases=())
        assert m.schedule.phases[0].weights == (3, 2, 0)
        assert mixture(weights={"web": 4, "code": 2}, phases=()).schedule.phases[0].weights == (
            2,
            1,
            0,
        )


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(0, 40), min_size=1, max_size=9).filter(any),
    far=st.integers(0, 10**12),
)
def test_every_prefix_is_within_one_of_its_share(weights, far):
    allocation = PhaseAllocation(tuple(weights))
    total = sum(weights)
    span = 2 * total + 3
    sources = allocation.sources(0, span)
    counts = np.zeros((span + 1, len(weights)), dtype=np.int64)
    for i in range(len(weights)):
        counts[1:, i] = np.cumsum(sources == i)
    shares = np.arange(span + 1)[:, None] * np.array(weights)[None, :] / total
    deviation = np.abs(counts - shares).max()
    assert deviation < 1 and deviation <= allocation.bound + 1e-12
    for offset in (0, 1, total - 1, total, span):
        assert allocation.counts(offset) == counts[offset].tolist()
    # far into the phase: the same period, the same counts and sources
    base = far * total
    expected = [far * w + c for w, c in zip(weights, counts[5], strict=True)]
    assert allocation.counts(base + 5) == expected
    assert allocation.sources(base, base + span).tolist() == sources.tolist()


def test_the_tightest_bound_met_is_used():
    assert PhaseAllocation((1, 1)).bound == Fraction(1, 2)
    assert PhaseAllocation((5, 3, 2)).bound == Fraction(1, 2)
    assert PhaseAllocation((35, 20, 15, 10, 8, 6, 4, 2)).bound == Fraction(2, 3)


def test_a_heavy_period_is_exact_too():
    weights = (4096, 1, 3, 777, 2, 9000, 13, 60)
    allocation = PhaseAllocation(weights)
    sources = allocation.sources(0, sum(weights))
    counts = np.stack([np.cumsum(sources == i) for i in range(len(weights))], axis=1)
    shares = np.arange(1, sum(weights) + 1)[:, None] * np.array(weights) / sum(weights)
    assert np.abs(counts - shares).max() < 1
    assert counts[-1].tolist() == list(weights)


class TestStreams:
    def test_each_source_continues_its_own_stream_across_phases(self):
        order = mixture().loader_order(seed=7)
        draws = per_source_draws(order, 150)
        for name, stream in zip(order.names, order.streams, strict=True):
            numbers = [d for d, _ in draws[name]]
            assert numbers == list(range(len(numbers))), name  # no repeat, no gap
            ids = [i for _, i in draws[name]]
            n = stream.length
            for first in range(0, len(ids) - n + 1, n):  # every full source epoch: a permutation
                assert sorted(ids[first : first + n]) == list(range(n)), name

    def test_a_small_source_starts_fresh_epochs_while_a_large_one_carries_on(self):
        m = Mixture({"big": Sized(1000), "small": Sized(10)}, {"big": 1, "small": 1})
        order = m.loader_order(seed=3)
        draws = per_source_draws(order, 200)
        small = [i for _, i in draws["small"]]
        epochs = [small[e * 10 : (e + 1) * 10] for e in range(10)]
        assert all(sorted(e) == list(range(10)) for e in epochs)
        assert len({tuple(e) for e in epochs}) > 1  # a fresh permutation each epoch
        big = [i for _, i in draws["big"]]
        assert len(set(big)) == len(big) == 100

    def test_a_source_stream_is_keyed_by_seed_and_name_only(self):
        a = Mixture({"x": Sized(30), "y": Sized(40)}, {"x": 1, "y": 1}).loader_order(seed=5)
        b = Mixture({"y": Sized(40), "z": Sized(9), "x": Sized(30)}, {"x": 1}).loader_order(seed=5)
        assert a.streams[0].ids(0, 90).tolist() == b.streams[2].ids(0, 90).tolist()
        assert source_seed(5, "x") != source_seed(5, "y")
        assert source_seed(5, "x") != source_seed(6, "x")

    def test_shard_local_and_sequential_sources(self):
        sharded = MixtureSource(Sharded([7, 5, 9]), shard_shuffle=ShardShuffle(2, 4))
        m = Mixture({"s": sharded, "q": MixtureSource(Sized(6), shuffle=False)}, {"s": 2, "q": 1})
        order = m.loader_order(seed=11)
        stream = order.streams[0]
        whole = stream.ids(0, 63).tolist()
        pieces = stream.ids(0, 10).tolist() + stream.ids(10, 30).tolist()
        assert pieces + stream.ids(30, 63).tolist() == whole
        assert stream.ids(25, 40).tolist() == whole[25:40]  # out of turn: a fresh replay
        assert all(sorted(whole[e * 21 : (e + 1) * 21]) == list(range(21)) for e in range(3))
        assert order.streams[1].ids(0, 13).tolist() == [i % 6 for i in range(13)]

    def test_shard_shuffle_needs_shuffle(self):
        with pytest.raises(ConfigError, match="shuffle=True"):
            MixtureSource(Sharded([3]), shuffle=False, shard_shuffle=ShardShuffle())


class TestOrder:
    def test_chunks_ids_and_provenance_agree(self):
        m = mixture()
        order = m.loader_order(seed=1)
        whole = order.ids(1, 0, 60)
        assert np.concatenate(list(order.iter_ids(1, 0, chunk_size=7))).tolist() == whole.tolist()
        assert np.concatenate(list(order.iter_ids(1, 13, chunk_size=64))).tolist() == (
            whole[13:].tolist()
        )
        for position in (0, 19, 30, 59):
            info = order.provenance(1, position)
            assert info["id"] == whole[position]
            assert m.decode(info["id"]) == (m.names.index(info["source"]), info["sample_id"])

    def test_phase_changes_are_logged_once_each(self, caplog):
        order = mixture().loader_order(seed=1)
        with caplog.at_level(logging.INFO, logger="resumable_loader"):
            for epoch in range(3):
                list(order.iter_ids(epoch, 0, chunk_size=16))
        lines = [r.getMessage() for r in caplog.records if "phase" in r.getMessage()]
        assert len(lines) == 2
        assert "phase 1 starts at position 40" in lines[0]
        assert "phase 2 starts at position 90" in lines[1]

    def test_endless_mixture(self):
        m = Mixture({"a": Sized(3), "b": Sized(4)}, {"a": 1, "b": 1})
        order = m.loader_order(seed=0)
        assert len(order) == len(m) == 2**63 - 1
        assert order.ids(0, 10**9, 10**9 + 4).shape == (4,)
        with pytest.raises(ConfigError, match=r"past the 2\*\*32 epochs"):
            order.ids(0, 10**15, 10**15 + 4)


class TestResumeCheck:
    def saved_at(self, where, **kwargs):
        order = mixture(**kwargs).loader_order(seed=2)
        return order.resume_state(*divmod(where, 60))

    def check(self, state, where, **kwargs):
        mixture(**kwargs).loader_order(seed=2).check_resume(state, *divmod(where, 60))

    SAVED_FUTURE = "saved [(90, {'code': 2, 'math': 1})]"

    @pytest.mark.parametrize(
        "future, said",
        [
            ([(40, {"web": 1, "math": 1})], f"changed: {SAVED_FUTURE}, now []"),  # removed
            (
                [(40, {"web": 1, "math": 1}), (70, {"web": 2})],  # moved and re-weighted
                f"changed: {SAVED_FUTURE}, now [(70, {{'web': 1}})]",
            ),
            (
                [(40, {"web": 1, "math": 1}), (50, {"code": 1})],  # new weights from the position
                f"changed: {SAVED_FUTURE}, now [(50, {{'code': 1}})]",
            ),
            (
                [(40, {"web": 1, "math": Fraction(1)}), (90, {"code": 1, "math": Fraction(1, 2)})],
                "as saved: [(90, {'code': 2, 'math': 1})]",
            ),
        ],
    )
    def test_a_changed_future_is_accepted_and_logged(self, future, said, caplog):
        state = self.saved_at(50)
        with caplog.at_level(logging.INFO, logger="resumable_loader"):
            self.check(state, 50, phases=future)
        (line,) = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
        assert "resuming at position 50 in phase" in line and "past schedule unchanged" in line
        assert line.endswith(f"phases from here on {said}")

    def test_a_cursor_without_the_saved_future_still_loads(self, caplog):
        state = self.saved_at(50)
        del state["future"]  # as written before the future was recorded
        with caplog.at_level(logging.INFO, logger="resumable_loader"):
            self.check(state, 50)
        (line,) = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
        assert "(the cursor predates recording the saved ones)" in line

    def test_a_new_source_in_a_new_phase_is_accepted(self):
        state = self.saved_at(50)
        sources = {"web": Sized(50), "code": Sized(20), "math": Sized(5), "books": Sized(8)}
        phases = [(40, {"web": 1, "math": 1}), (50, {"books": 1, "web": 1})]
        self.check(state, 50, sources=sources, phases=phases)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (
                dict(weights={"web": 5, "code": 2, "math": 2}),
                r"phases\[0\]' \(start 0\), source 'code': saved weight 3, current 2",
            ),
            (
                dict(phases=[(41, {"web": 1, "math": 1})]),
                r"phases\[1\]\.start': saved 40, current 41",
            ),
            (
                dict(phases=[(30, {"web": 1}), (40, {"web": 1, "math": 1})]),
                r"phases\[1\]\.start': saved 40, current 30",
            ),
            (
                dict(
                    sources={"web": Sized(50), "code": Sized(20), "maths": Sized(5)},
                    weights={"web": 5, "code": 3, "maths": 2},
                    phases=[(40, {"web": 1})],
                ),
                r"source 'math': saved with 13 draws, but the current mixture has no such source "
                r"\(removed or renamed",
            ),
            (
                dict(
                    sources={"web": Sized(50), "code": Sized(20)},
                    weights={"web": 5, "code": 3},
                    phases=[(40, {"web": 1})],
                ),
                r"source 'math': saved with 13 draws, .* no such source "
                r"\(removed or renamed; sources now: \['web', 'code'\]\)",
            ),
            (
                dict(sources={"web": Sized(51), "code": Sized(20), "math": Sized(5)}),
                r"source 'web': saved fingerprint \w+, current \w+",
            ),
            (  # the same sources listed in another order: another interleaving
                dict(
                    sources={"web": Sized(50), "math": Sized(5), "code": Sized(20)},
                    weights={"web": 5, "math": 2, "code": 3},
                ),
                r"listed its sources as \['web', 'code', 'math'\], the current one as "
                r"\['web', 'math', 'code'\]; .* in their saved order",
            ),
        ],
    )
    def test_a_rewritten_past_is_refused_naming_the_field(self, kwargs, message):
        state = self.saved_at(50)
        with pytest.raises(StateDictError, match=message):
            self.check(state, 50, **kwargs)

    def test_an_undrawn_source_may_change(self):
        state = self.saved_at(50, phases=[(40, {"web": 1, "code": 1})])  # math drew 10 by 40
        sources = {"web": Sized(50), "code": Sized(20), "math": Sized(5), "x": Sized(3)}
        self.check(state, 50, sources=sources, phases=[(40, {"web": 1, "code": 1})])
        zero = self.saved_at(0)
        self.check(zero, 0, weights={"code": 1})  # nothing drawn yet: anything goes

    @pytest.mark.parametrize(
        "state",
        [None, {"sources": "x", "phases": []}, {"sources": [["web", "f", 1]], "phases": [[0]]}],
    )
    def test_a_malformed_state_is_refused(self, state):
        with pytest.raises(StateDictError, match="order_state"):
            self.check(state, 50)

    def test_re_weighting_continues_every_stream_without_repeat_or_gap(self):
        old = mixture(phases=[(40, {"web": 1, "math": 1})])
        new = mixture(phases=[(40, {"web": 1, "math": 1}), (75, {"code": 3, "math": 1})])
        before = per_source_draws(old.loader_order(seed=4), 75)
        after = per_source_draws(new.loader_order(seed=4), 180)
        for name in old.names:
            head = before[name]
            assert after[name][: len(head)] == head  # the saved past, unchanged
            assert [d for d, _ in after[name]] == list(range(len(after[name])))


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(3))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (Stream(), "is an IterableDataset, not a map-style dataset"),
        (42, "is 42, not a map-style dataset"),
        (
            Mixture({"x": Sized(4), "y": Sized(4)}, {"x": 1, "y": 3}),
            "is a Mixture, which supplies its own order: it cannot be a source",
        ),
        (Packed(Sized(4), max_tokens=8, lengths=[1] * 4), "is a Packed, which supplies"),
    ],
)
def test_a_source_a_mixture_cannot_draw_from_by_id_is_refused(source, message):
    """A nested Mixture's weights (or a Packed's packs) were silently lost: its ids are its
    order's codes, not 0 to its length; a bare TypeError for MixtureSource(non-dataset)."""
    with pytest.raises(ConfigError, match=rf"Mixture source 'inner' {re.escape(message)}"):
        Mixture({"inner": source, "z": Sized(4)}, {"inner": 1, "z": 1})
    with pytest.raises(ConfigError, match=rf"MixtureSource's dataset {re.escape(message)}"):
        MixtureSource(source)


@pytest.mark.parametrize("given", ["sampler", "batch_sampler"])
@pytest.mark.parametrize("kind", ["Mixture", "Packed"])
def test_a_sampler_on_a_dataset_with_its_own_order_is_refused(given, kind):
    """Its indices were taken as the Mixture's ids (its weights silently ignored) or pack ids."""
    mixture = Mixture({"a": Sized(10), "b": Sized(10)}, {"a": 1, "b": 9}, samples_per_epoch=10)
    dataset = mixture if kind == "Mixture" else Packed(Sized(10), max_tokens=4, lengths=[1] * 10)
    sampler = torch.utils.data.RandomSampler(range(10))
    argument = (
        torch.utils.data.BatchSampler(sampler, 2, False) if given == "batch_sampler" else sampler
    )
    with pytest.raises(ConfigError, match=rf"{given}= does not apply to a {kind}"):
        ResumableDataLoader(dataset, **{given: argument})
