"""Mixture resume properties: a 100x smaller source, changed futures, progress and logs."""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from resume_harness import interrupted_stream, run, transport
from test_mixture_loader import Plain, Tagged, records

from resumable_loader import Mixture, MixtureSource, ResumableDataLoader
from resumable_loader.errors import StateDictError

SEED = 13


def tagged_samples(batch):
    """((source tag, its sample id), "data digest/augmentation digest") per sample."""
    return (((tag, i), f"{data}/{aug}") for tag, i, data, aug in records(batch))


def ids_of(stream, tag: int) -> list[int]:
    """The sample ids one source delivered, in stream order."""
    return [i for _, (t, i), _ in stream if t == tag]


def stream_run(loader, epochs: int, stop_after: int | None = None) -> list:
    return run(loader, epochs, stop_after=stop_after, per_sample=tagged_samples)[0]


# 1. A 100x smaller source, interrupted and resumed through the loader.

SKEWED_EPOCH = 60


def skewed_loader(**kwargs) -> ResumableDataLoader:
    mixture = Mixture(
        {
            "big": Tagged(Plain(400), 0),
            "small": Tagged(Plain(4), 1),
            "mid": MixtureSource(Tagged(Plain(29), 2), shuffle=False),
        },
        {"big": 3, "small": 1, "mid": 1},
        phases=[(50, {"big": 1, "small": 2}), (115, {"big": 2, "small": 1, "mid": 2})],
        samples_per_epoch=SKEWED_EPOCH,
    )
    kwargs.setdefault("batch_size", 8)
    return ResumableDataLoader(mixture, seed=SEED, **kwargs)


@pytest.fixture(scope="module")
def skewed_continuous() -> list:
    return stream_run(skewed_loader(), 3)


def test_the_small_source_runs_many_epochs_without_repeat(skewed_continuous):
    small = ids_of(skewed_continuous, 1)
    epochs = len(small) // 4
    assert epochs >= 12
    for e in range(epochs):  # every epoch of the small source: each sample once
        assert sorted(small[e * 4 : (e + 1) * 4]) == [0, 1, 2, 3], e
    assert len({tuple(small[e * 4 : (e + 1) * 4]) for e in range(epochs)}) > 1  # reshuffled
    big = ids_of(skewed_continuous, 0)
    assert len(big) == len(set(big)) and 0 < len(big) < 400  # inside its first epoch
    mid = ids_of(skewed_continuous, 2)
    assert mid == [k % 29 for k in range(len(mid))]  # sequential, across its epoch's end
    assert len(mid) > 29


@pytest.mark.parametrize(
    "stop_after, first, second, how",
    [
        (3, dict(), dict(num_workers=2, batch_size=7), "msgpack"),  # inside phase 0
        (10, dict(num_workers=2, batch_size=5), dict(batch_size=9), "json"),  # at 50
        (15, dict(), dict(num_workers=2, batch_size=11), "torch"),  # epoch 1, past 115
        (29, dict(num_workers=2, batch_size=6), dict(batch_size=4), "msgpack"),  # epoch 2
    ],
)
def test_a_skewed_mixture_resumes_exactly(skewed_continuous, stop_after, first, second, how):
    stream = interrupted_stream(
        lambda: skewed_loader(**first),
        lambda: skewed_loader(**second),
        epochs=3,
        stop_after=stop_after,
        how=how,
        per_sample=tagged_samples,
    )
    assert stream == skewed_continuous


# 2. Changed futures accepted, rewritten pasts refused: hypothesis at the order level.


def global_ids(order, start: int, stop: int) -> list[int]:
    """Encoded ids at global positions [start, stop), across the order's epochs."""
    out, length = [], len(order)
    while start < stop:
        epoch, position = divmod(start, length)
        end = min(stop, (epoch + 1) * length)
        out.extend(order.ids(epoch, position, position + end - start).tolist())
        start = end
    return out


def by_source(mixture: Mixture, encoded: list[int]) -> dict[str, list[int]]:
    """Each source's sample ids among ``encoded``, in order."""
    out = {name: [] for name in mixture.names}
    for value in encoded:
        source, sample_id = mixture.decode(value)
        out[mixture.names[source]].append(sample_id)
    return out


def own_stream(order, name: str, count: int) -> list[int]:
    """Draws 0..count-1 of source ``name``: position k mod n of its own epoch k // n."""
    stream = order.streams[order.names.index(name)]
    n = stream.length
    ids: list[int] = []
    for epoch in range(-(-count // n)):
        ids.extend(stream.order.ids(epoch, 0, n).tolist())
    return ids[:count]


def build(sizes, shuffles, phases, length):
    """A Mixture of ``Plain`` sources; ``phases`` is [(start, weights by name)], start 0 first."""
    sources = {
        name: MixtureSource(Plain(size), shuffle=shuffle)
        for (name, size), shuffle in zip(sizes.items(), shuffles, strict=True)
    }
    return Mixture(sources, phases[0][1], phases=phases[1:], samples_per_epoch=length)


def weights_of(draw, names) -> dict[str, int]:
    values = draw(st.lists(st.integers(0, 9), min_size=len(names), max_size=len(names)))
    if not any(values):
        values[draw(st.integers(0, len(names) - 1))] = draw(st.integers(1, 9))
    return dict(zip(names, values, strict=True))


def append_start(draw, phases, save: int) -> int:
    return max(save, phases[-1][0] + 1, 1) + draw(st.integers(0, 25))


FUTURES = ["append", "reweight", "remove", "new source"]


def future_change(draw, kind, sizes, shuffles, phases, save):
    """A schedule that keeps every phase started before ``save`` and changes what follows:
    ``kind`` is one of FUTURES (reweight and remove need a phase 1+ starting at ``save`` on)."""
    names = list(sizes)
    later = [i for i, (start, _) in enumerate(phases) if i and start >= save]
    if kind == "reweight":
        index = draw(st.sampled_from(later))
        weights = weights_of(draw, names)
        phases = [*phases[:index], (phases[index][0], weights), *phases[index + 1 :]]
    elif kind == "remove":
        index = draw(st.sampled_from(later))
        phases = phases[:index] + phases[index + 1 :]
    elif kind == "new source":
        sizes = {**sizes, "new": draw(st.integers(1, 50))}
        shuffles = [*shuffles, draw(st.booleans())]
        weights = {**weights_of(draw, names), "new": draw(st.integers(1, 9))}
        phases = [*phases, (append_start(draw, phases, save), weights)]
    else:
        phases = [*phases, (append_start(draw, phases, save), weights_of(draw, names))]
    return sizes, shuffles, phases


PASTS = ["weights", "start", "remove source"]


def movable(phases, save: int) -> list[int]:
    """The phases 1+ started before ``save`` whose start can move by one, order kept."""
    return [
        i
        for i, (start, _) in enumerate(phases)
        if i > 0 and start < save
        if (i + 1 == len(phases) or phases[i + 1][0] > start + 1) or start - 1 > phases[i - 1][0]
    ]


def with_a_movable_phase(draw, phases, save: int):
    """``phases`` and ``save``, with a phase 1+ started before ``save`` that can move."""
    if movable(phases, save):
        return phases, save
    save = max(save, 3)
    start = draw(st.integers(2, save - 1))
    assume(start not in [p[0] for p in phases])
    phases = sorted([*phases, (start, weights_of(draw, [*phases[0][1]]))], key=lambda p: p[0])
    assume(movable(phases, save))
    return phases, save


def past_change(draw, kind, sizes, shuffles, phases, save, drawn):
    """A schedule that rewrites the past before ``save`` > 0 (``kind``: one of PASTS), and a
    pattern of the field its refusal must name."""
    names = list(sizes)
    if kind == "start":
        index = draw(st.sampled_from(movable(phases, save)))
        start = phases[index][0]
        later = index + 1 == len(phases) or phases[index + 1][0] > start + 1
        phases = list(phases)
        phases[index] = (start + 1 if later else start - 1, phases[index][1])
        return sizes, shuffles, phases, rf"field 'order_state\.phases\[{index}\]\.start'"
    if kind == "remove source":
        gone = draw(st.sampled_from(drawn))
        keep = [n for n in names if n != gone]
        sizes = {n: sizes[n] for n in keep}
        shuffles = [s for n, s in zip(names, shuffles, strict=True) if n != gone]
        rewritten = []
        for start, weights in phases:
            left = {n: weights[n] for n in keep}
            if not any(left.values()):
                left[keep[0]] = 1
            rewritten.append((start, left))
        return sizes, shuffles, rewritten, rf"field 'order_state\.sources', source '{gone}': saved"
    index = draw(st.sampled_from([i for i, (start, _) in enumerate(phases) if start < save]))
    weights = dict(phases[index][1])
    zero = [n for n in names if not weights[n]]
    weights[zero[0] if zero else names[0]] += 1  # never proportional to the old weights
    phases = [*phases[:index], (phases[index][0], weights), *phases[index + 1 :]]
    return sizes, shuffles, phases, rf"field 'order_state\.phases\[{index}\]' \(start "


@st.composite
def configurations(draw):
    count = draw(st.integers(2, 5))
    names = [f"s{i}" for i in range(count)]
    sizes = {name: draw(st.integers(1, 50)) for name in names}
    shuffles = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    starts = sorted(draw(st.sets(st.integers(1, 100), max_size=3)))
    phases = [(start, weights_of(draw, names)) for start in [0, *starts]]
    length = draw(st.sampled_from([None, 16, 45]))
    save = draw(st.integers(0, phases[-1][0] + 30))  # before, inside or after the last phase
    return sizes, shuffles, phases, length, save


@pytest.mark.parametrize("past", PASTS)
@pytest.mark.parametrize("future", FUTURES)
@settings(max_examples=8, deadline=None)
@given(config=configurations(), data=st.data())
def test_a_changed_future_is_accepted_and_a_rewritten_past_refused(future, past, config, data):
    sizes, shuffles, phases, length, save = config
    if past == "start":
        phases, save = with_a_movable_phase(data.draw, phases, save)
    if future in ("reweight", "remove") and phases[-1][0] < max(save, 1):
        phases = [*phases, (append_start(data.draw, phases, save), weights_of(data.draw, sizes))]
    first = build(sizes, shuffles, phases, length)
    order = first.loader_order(seed=SEED)
    where = divmod(save, len(order))
    state = order.resume_state(*where)
    head = by_source(first, global_ids(order, 0, save))
    assert order.draws_before(save) == [len(head[n]) for n in first.names]

    changed = future_change(data.draw, future, sizes, shuffles, phases, save)
    second = build(*changed, length)
    resumed = second.loader_order(seed=SEED)
    resumed.check_resume(state, *where)  # accepted
    tail = by_source(second, global_ids(resumed, save, save + 60))
    for name in second.names:
        drawn = head.get(name, []) + tail[name]  # a new source: nothing before save
        assert drawn == own_stream(order if name in head else resumed, name, len(drawn)), name
        n = changed[0][name]
        for e in range(len(drawn) // n):  # no repeat inside a source epoch
            assert sorted(drawn[e * n : (e + 1) * n]) == list(range(n)), name

    if save == 0:
        return  # nothing has started: no past to rewrite
    drawn_from = [n for n in first.names if head[n]]
    *rewritten, message = past_change(data.draw, past, sizes, shuffles, phases, save, drawn_from)
    refused = build(*rewritten, length).loader_order(seed=SEED)
    with pytest.raises(StateDictError, match=message):
        refused.check_resume(state, *where)


# 3 and 4. mixture_progress and the log lines, on a small mixture with exact counts.

SMALL_EPOCH = 12  # batch 3: the loader stops only at positions 3k


def small_loader(**kwargs) -> ResumableDataLoader:
    """a (4 samples) and b (5): 2:1 on [0, 9), 1:3 on [9, 33), a only from 33.

    Each checked position ends a whole period of its phase, so every count is exact.
    """
    mixture = Mixture(
        {"a": Tagged(Plain(4), 0), "b": Tagged(Plain(5), 1)},
        {"a": 2, "b": 1},
        phases=[(9, {"a": 1, "b": 3}), (33, {"a": 1})],
        samples_per_epoch=SMALL_EPOCH,
    )
    kwargs.setdefault("batch_size", 3)
    return ResumableDataLoader(mixture, seed=SEED, **kwargs)


def progress(position, phase, weights, next_phase_start, *, a, b) -> dict:
    """The whole mixture_progress() dict; ``a``, ``b``: (draws, epochs completed, fraction)."""
    return {
        "position": position,
        "phase": phase,
        "weights": weights,
        "next_phase_start": next_phase_start,
        "sources": {
            name: {"draws": d, "epochs_completed": e, "epoch_fraction": f, "length": n}
            for name, (d, e, f), n in (("a", a, 4), ("b", b, 5))
        },
    }


@pytest.mark.parametrize(
    "batches, expected",
    [
        (0, progress(0, 0, {"a": 2, "b": 1}, 9, a=(0, 0, 0.0), b=(0, 0, 0.0))),
        (3, progress(9, 1, {"a": 1, "b": 3}, 33, a=(6, 1, 0.5), b=(3, 0, 0.6))),
        (7, progress(21, 1, {"a": 1, "b": 3}, 33, a=(9, 2, 0.25), b=(12, 2, 0.4))),
        (12, progress(36, 2, {"a": 1}, None, a=(15, 3, 0.75), b=(21, 4, 0.2))),
    ],
)
def test_mixture_progress_literal_values(batches, expected):
    loader = small_loader()
    stream = stream_run(loader, 3, stop_after=batches) if batches else []
    assert len(stream) == expected["position"]
    delivered = Counter(t for _, (t, _), _ in stream)
    assert [delivered[0], delivered[1]] == [
        expected["sources"][name]["draws"] for name in ("a", "b")
    ]
    if batches == 7:  # the phase in force, as delivered: [9, 21) drew a 3, b 9
        assert Counter(t for _, (t, _), _ in stream[9:]) == {0: 3, 1: 9}
    assert loader.mixture_progress() == expected
    resumed = small_loader(batch_size=4)
    resumed.load_state_dict(transport(loader.state_dict(), "json"))
    assert resumed.mixture_progress() == expected  # before its first batch: the loaded place


def messages(caplog, word: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if word in r.getMessage()]


def test_phase_changes_and_a_resume_log_one_line_each(caplog):
    with caplog.at_level(logging.INFO, logger="resumable_loader"):
        stream_run(small_loader(), 3)
    assert messages(caplog, "starts at position") == [
        "mixture: phase 1 starts at position 9 with weights {'a': 1, 'b': 3}; draws so far "
        "{'a': 6, 'b': 3}",
        "mixture: phase 2 starts at position 33 with weights {'a': 1}; draws so far "
        "{'a': 12, 'b': 21}",
    ]
    assert messages(caplog, "resuming") == []

    first = small_loader()
    stream_run(first, 2, stop_after=7)
    state = first.state_dict()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resumable_loader"):
        second = small_loader(batch_size=4)
        second.load_state_dict(state)
        (line,) = messages(caplog, "resuming")
        assert re.search(r"resuming at position 21 in phase 1 \(weights \{'a': 1, 'b': 3\}\)", line)
        assert "draws so far {'a': 9, 'b': 12}" in line
        stream_run(second, 2)  # the rest of epoch 1, then epoch 2: only phase 2 begins
    starts = [
        re.match(r"mixture: phase (\d+) starts at position (\d+)", m).groups()
        for m in messages(caplog, "starts at position")
    ]
    assert starts == [("2", "33")]


# 5. A new source in a new future phase, through the loader.


def xy_loader(*, new_phase_start: int | None = None, batch_size: int = 4) -> ResumableDataLoader:
    """x (23 samples) and y (7); with ``new_phase_start``, z (5) drawn only from that phase on."""
    sources = {"x": Tagged(Plain(23), 0), "y": Tagged(Plain(7), 1)}
    phases = [(10, {"x": 1, "y": 2})]
    if new_phase_start is not None:
        sources["z"] = Tagged(Plain(5), 2)
        phases.append((new_phase_start, {"x": 1, "y": 1, "z": 2}))
    mixture = Mixture(sources, {"x": 2, "y": 1}, phases=phases, samples_per_epoch=30)
    return ResumableDataLoader(mixture, batch_size=batch_size, seed=SEED)


@pytest.mark.parametrize("start", [20, 24])  # at the saved position 20, and after it
def test_a_new_source_in_a_future_phase_continues_the_old_streams(start):
    new = functools.partial(xy_loader, new_phase_start=start, batch_size=6)
    stream = interrupted_stream(xy_loader, new, epochs=2, stop_after=5, per_sample=tagged_samples)
    uninterrupted = stream_run(xy_loader(), 2)  # the old mixture, never interrupted
    assert len(stream) == 60 and stream[:20] == uninterrupted[:20]
    for tag in (0, 1):  # x and y: the same draws as without the new phase, no repeat, no gap
        drawn = ids_of(stream, tag)
        assert drawn == ids_of(uninterrupted, tag)[: len(drawn)], tag
    z = ids_of(stream, 2)
    assert len(z) == (60 - start) // 2 and 2 not in [t for _, (t, _), _ in stream[:start]]
    alone = Mixture({"z": Tagged(Plain(5), 2)}, {"z": 1}, samples_per_epoch=30)
    own = ids_of(stream_run(ResumableDataLoader(alone, batch_size=10, seed=SEED), 1), 2)
    assert z == own[: len(z)]  # z's stream (keyed by seed and name) from its draw 0
    audit = new()
    places = [audit.sample_at(*divmod(g, 30)) for g in range(start, 60)]
    assert [p["draw"] for p in places if p["source"] == "z"] == list(range(len(z)))
    assert [p["sample_id"] for p in places if p["source"] == "z"] == z
