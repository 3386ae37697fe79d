"""Packed through the loader: whole streams of packs equal continuous vs resumed on any layout."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packing_factory import DATA, Texts, epochs_left, lengths, make, packs, stream
from torch.utils.data import Dataset

from resumable_loader import DataLoader, Mixture, Packed, verify_pipeline
from resumable_loader.errors import ConfigError, StateDictError
from resumable_loader.loader.cursor import make_cursor
from resumable_loader.packing.collate import collate_budget, collate_varlen


def test_every_sample_is_delivered_once_per_epoch_and_packs_fit() -> None:
    loader = make(DATA, batch_size=2)
    records = stream(loader, 2)
    for epoch in (0, 1):
        positions = [p for e, _, ps, _ in records if e == epoch for p in ps]
        ids = {i for e, ids, _, _ in records if e == epoch for i in ids}
        assert sorted(set(positions)) == list(range(61)) and ids == set(range(61))
        # a sample longer than 32 tokens (sample 3: 33) is split into pieces of at most 32
        assert len(positions) == int(np.maximum(1, -(-DATA.lengths // 32)).sum())
    batch = next(iter(make(DATA, batch_size=4)))
    cu = batch["cu_seqlens"]
    sizes = (cu[1:] - cu[:-1]).tolist()
    starts = cu[:-1].tolist()
    assert batch["position_ids"][0].tolist() == [i for size in sizes for i in range(size)]
    assert all(batch["labels"][0, s] == -100 for s, n in zip(starts, sizes, strict=True) if n)
    bounds = batch["pack_bounds"].tolist()
    assert all(cu[b] - cu[a] <= 32 for a, b in itertools.pairwise(bounds))
    assert batch["max_seqlen"] == max(sizes)


@pytest.mark.parametrize(
    ("before", "after", "stop_after"),
    [
        (dict(num_workers=0, batch_size=2), dict(num_workers=2, batch_size=3), 5),
        (dict(num_workers=2, batch_size=3), dict(num_workers=3, batch_size=1), 4),
        (dict(num_workers=3, batch_size=1), dict(num_workers=0, batch_size=4), 17),
    ],
)
def test_a_resume_on_other_workers_and_batch_sizes_continues_the_same_packs(
    before: dict[str, int], after: dict[str, int], stop_after: int
) -> None:
    continuous = stream(make(DATA, batch_size=2), 2)
    first = make(DATA, **before)
    head = stream(first, 2, stop_after=stop_after)
    resumed = make(DATA, **after)
    resumed.load_state_dict(first.state_dict())
    assert head + stream(resumed, epochs_left(resumed, 2)) == continuous


def test_each_sample_keeps_its_key_whatever_the_packing() -> None:
    """A sample's tokens (its augmentation) depend on its position in the sample order only:
    the same under another max_tokens, strategy or window, and without packing at all."""

    def samples(loader: DataLoader) -> dict[tuple[int, int], list[int]]:
        """(epoch, sample position) -> its tokens, reassembled from its pieces."""
        seen: dict[tuple[int, int], dict[int, list[int]]] = {}
        for epoch in range(2):
            for batch in loader:
                cu = batch["cu_seqlens"].tolist()
                offsets = batch["sample_offsets"].tolist()
                for k, position in enumerate(batch["sample_positions"].tolist()):
                    piece = batch["input_ids"][0, cu[k] : cu[k + 1]].tolist()
                    seen.setdefault((epoch, position), {})[offsets[k]] = piece
        return {
            place: [t for offset in sorted(parts) for t in parts[offset]]
            for place, parts in seen.items()
        }

    small = samples(make(DATA, batch_size=2, max_tokens=32))
    large = samples(make(DATA, batch_size=3, max_tokens=64, strategy="ffd", window=5))
    assert small == large
    plain = DataLoader(DATA, batch_size=1, shuffle=True, seed=7, collate_fn=lambda b: b[0])
    for epoch in range(2):
        for position, item in enumerate(plain):
            assert small[(epoch, position)] == item["input_ids"].tolist()


def test_a_change_of_max_tokens_or_strategy_on_resume_is_refused_naming_the_field() -> None:
    loader = make(DATA, batch_size=2)
    stream(loader, 1, stop_after=2)
    state = loader.state_dict()
    with pytest.raises(StateDictError, match=r"fingerprint\.max_tokens': saved 32, current 64"):
        make(DATA, batch_size=2, max_tokens=64).load_state_dict(state)
    with pytest.raises(StateDictError, match=r"fingerprint\.strategy': saved 'bfd', current"):
        make(DATA, batch_size=2, strategy="ffd").load_state_dict(state)
    with pytest.raises(StateDictError, match=r"fingerprint\.lengths'"):
        make(Texts(lengths(61, seed=1)), batch_size=2).load_state_dict(state)
    assert len(json.dumps(state)) < 1024


def test_sample_at_and_pack_of_answer_where_each_sample_went() -> None:
    loader = make(DATA, batch_size=2)
    records = stream(loader, 1)
    for position, (_, ids, positions, _) in enumerate(records):
        answer = loader.sample_at(0, position)
        assert tuple(s["id"] for s in answer["samples"]) == ids
        assert tuple(s["position"] for s in answer["samples"]) == positions
        for piece in answer["samples"]:
            places = loader.order.pack_of(0, piece["position"])
            assert {"position": position, "pack_offset": piece["pack_offset"]}.items() <= next(
                p for p in places if p["offset"] == piece["offset"]
            ).items()
    with pytest.raises(ConfigError, match="position"):
        loader.sample_at(0, len(records))


def test_ranks_split_the_packs_and_a_resume_on_another_world_size_continues() -> None:
    """World sizes 2 -> 3 and 2 -> 1, in one process: the global stream of packs (rank 0's
    batch, then rank 1's, ... per step) equals the one-rank continuous run."""

    def global_stream(world: int, steps: int | None, state: Any = None) -> tuple[list, Any]:
        loaders = [make(DATA, batch_size=2, rank=r, world_size=world) for r in range(world)]
        if state is not None:
            for loader in loaders:
                loader.load_state_dict(state)
        iterators = [iter(loader) for loader in loaders]
        records, step = [], 0
        while steps is None or step < steps:
            batches = [next(it, None) for it in iterators]
            if batches[0] is None:
                break
            for batch in batches:
                records += packs(batch)
            step += 1
        return records, loaders[0].state_dict()

    continuous, _ = global_stream(1, None)
    unique = [r[1:] for r in continuous]
    head, state = global_stream(2, 3)
    for world in (1, 3):
        tail, _ = global_stream(world, None, state)
        got = [r[1:] for r in head + tail]
        # a last global batch that does not fill every rank wraps to the epoch's start
        assert got[: len(unique)] == unique
        assert set(got[len(unique) :]) <= set(unique)


def test_a_packed_mixture_resumes_exactly_across_its_phase_change() -> None:
    def mixture() -> Mixture:
        return Mixture(
            {
                "a": Texts(lengths(40, seed=2), "a"),
                "b": Texts(lengths(30, seed=3, longest=20), "b"),
            },
            {"a": 1, "b": 1},
            phases=[(50, {"a": 1, "b": 3})],
            samples_per_epoch=90,
        )

    continuous = stream(make(mixture(), batch_size=2), 2)
    for stop_after, after in [(3, dict(num_workers=2, batch_size=3)), (9, dict(batch_size=1))]:
        first = make(mixture(), batch_size=2)
        head = stream(first, 2, stop_after=stop_after)
        state = first.state_dict()
        assert "order_state" in state
        resumed = make(mixture(), **after)
        resumed.load_state_dict(state)
        assert head + stream(resumed, epochs_left(resumed, 2)) == continuous
    assert make(mixture(), batch_size=2).mixture_progress()["phase"] == 0


def test_a_packed_mixture_resumes_with_a_source_added_for_the_future() -> None:
    """As without packing (docs/mixtures.md): a source with weight 0 in every started phase may
    be added, anywhere among the others; the resumed packs are the new mixture's. A source
    whose lengths changed is still refused, naming the lengths."""
    a, b = Texts(lengths(40, seed=2), "a"), Texts(lengths(30, seed=3, longest=20), "b")
    new = Texts(lengths(20, seed=4), "new")

    def mixture(sources: dict[str, Dataset], later: dict[str, int]) -> Mixture:
        return Mixture(sources, {"a": 1, "b": 1}, phases=[(60, later)], samples_per_epoch=90)

    def named(records: list, mixed: Mixture) -> list:
        """The packs with each encoded id as (source, its id): a source inserted before
        another moves that one's encoded ids, not its samples."""
        return [
            (epoch, tuple((mixed.names[s], i) for s, i in map(mixed.decode, ids)), *rest)
            for epoch, ids, *rest in records
        ]

    old = mixture({"a": a, "b": b}, {"a": 1, "b": 3})
    first = make(old, batch_size=2)
    head = named(stream(first, 2, stop_after=3), old)
    state = first.state_dict()
    added = mixture({"a": a, "new": new, "b": b}, {"a": 1, "new": 2, "b": 1})
    continuous = named(stream(make(added, batch_size=2), 2), added)
    assert head == continuous[: len(head)]  # the same past: "new" had weight 0 in it
    resumed = make(added, num_workers=2, batch_size=3)
    resumed.load_state_dict(state)
    assert head + named(stream(resumed, epochs_left(resumed, 2)), added) == continuous
    longer = {"a": a.lengths + 1, "new": new.lengths, "b": b.lengths}  # "a" read otherwise
    refused = make(added, lengths=longer, batch_size=2)
    with pytest.raises(StateDictError, match=r"fingerprint\.lengths"):
        refused.load_state_dict(state)


def test_token_budget_batches_fit_their_padded_budget_and_resume() -> None:
    def budget_loader(**kwargs: Any) -> DataLoader:
        settings = dict(max_tokens=64, strategy="pad", batch_size=None, collate_fn=collate_budget)
        return make(DATA, **settings, **kwargs)

    def rows(loader: DataLoader, epochs: int, stop_after: int | None = None) -> list[Any]:
        out, count = [], 0
        for _ in range(epochs):
            for batch in loader:
                assert batch["input_ids"].numel() <= 64
                out.append((batch["sample_ids"].tolist(), batch["input_ids"].tolist()))
                count += 1
                if count == stop_after:
                    return out
        return out

    continuous = rows(budget_loader(), 1)
    assert sorted(i for ids, _ in continuous for i in ids) == list(range(61))
    first = budget_loader(num_workers=2)
    head = rows(first, 1, stop_after=6)
    resumed = budget_loader()
    resumed.load_state_dict(first.state_dict())
    assert head + rows(resumed, 1) == continuous


def test_overlong_samples_are_refused_by_default_naming_one() -> None:
    with pytest.raises(ConfigError, match=r"sample 3: 33 tokens\) and overlong='error'"):
        Packed(DATA, 32)
    with pytest.raises(ConfigError, match="one length per sample id"):
        Packed(DATA, 32, lengths=np.ones(5, dtype=np.int64))


def test_lengths_of_the_wrong_size_or_kind_name_the_source_or_the_function() -> None:
    # a source's wrong count was reported as the concatenated total's; a float a function
    # returned was truncated to an int
    sources = {"a": list(range(20)), "b": list(range(30))}
    mixture = Mixture(sources, {"a": 1, "b": 1}, samples_per_epoch=40)
    wrong = {"a": np.ones(20, int), "b": np.ones(3, int)}
    with pytest.raises(ConfigError, match=r"lengths\['b'\] .* per sample \(30\), got shape \(3,\)"):
        Packed(mixture, 64, lengths=wrong)
    with pytest.raises(ConfigError, match=r"the lengths= function's values must be integers"):
        Packed(sources["a"], 64, lengths=lambda item: 1.5)


def test_a_sample_whose_own_labels_do_not_match_its_tokens_is_named() -> None:
    class ShortLabels(Texts):
        def __getitem__(self, index: int) -> dict[str, Any]:
            item = super().__getitem__(index)
            cut = 1 if index == 5 else 0  # one sample's labels lack their last token's
            return {**item, "labels": item["input_ids"][: len(item["input_ids"]) - cut]}

    data = ShortLabels(np.full(12, 6), "short")
    with pytest.raises(ConfigError, match=r"sample 5 has 5 'labels' for 6 tokens in 'input_ids'"):
        stream(make(data, shuffle=False, batch_size=2), 1)


def test_a_pack_outside_the_loader_says_how_to_ask_for_its_samples() -> None:
    with pytest.raises(ConfigError, match="sample_at"):
        Packed(DATA, 64)[0]


class Captioned(Dataset):
    """Multimodal samples: text tokens and images (each worth 16 budget tokens), the image of
    sample i filled with i and placed at token ``i % 3`` of its text."""

    fingerprint = "captioned-40"

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> dict[str, Any]:
        images = [torch.full((2, 2), float(index))] * (index % 3 > 0)
        return {
            "input_ids": torch.arange(index % 7 + 3) + 1000 * index,
            "images": images,
            "image_positions": [index % 3] * len(images),
        }


def image_budget(sample: dict[str, Any]) -> int:
    return len(sample["input_ids"]) + 16 * len(sample["images"])


def test_multimodal_packs_count_image_tokens_and_return_images_with_offsets() -> None:
    dataset = Captioned()
    loader = DataLoader(
        Packed(dataset, 48, lengths=image_budget, window=10),
        batch_size=2,
        shuffle=True,
        seed=3,
        collate_fn=collate_varlen,
    )
    seen = []
    for batch in loader:
        cu = batch["cu_seqlens"].tolist()
        bounds = batch["pack_bounds"].tolist()
        for k, (first, stop) in enumerate(itertools.pairwise(bounds)):
            ids = batch["sample_ids"][first:stop].tolist()
            assert sum(image_budget(dataset[i]) for i in ids) <= 48
            expected = [i for i in ids if i % 3 > 0]
            assert [int(image[0, 0]) for image in batch["images"][k]] == expected
            starts = {i: cu[first + j] for j, i in enumerate(ids)}
            assert batch["image_offsets"][k] == [starts[i] + i % 3 for i in expected]
            seen += ids
    assert sorted(seen) == list(range(40))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(
        st.one_of(st.sampled_from([0, 1, 24, 25, 60]), st.integers(0, 70)), min_size=1, max_size=40
    ),
    window=st.integers(1, 12),
    budget=st.sampled_from([24, 25, 40]),
    strategy=st.sampled_from(["bfd", "ffd", "next_fit"]),
    overlong=st.sampled_from(["truncate", "split"]),
    batch_size=st.integers(1, 4),
    stop_after=st.integers(1, 6),
)
def test_any_lengths_window_and_budget_give_exact_consistent_resumable_packs(
    sizes: list[int],
    window: int,
    budget: int,
    strategy: str,
    overlong: str,
    batch_size: int,
    stop_after: int,
) -> None:
    data = Texts(np.array(sizes), name=f"h{len(sizes)}")
    settings_ = dict(max_tokens=budget, window=window, strategy=strategy, overlong=overlong)
    loader = make(data, batch_size=batch_size, **settings_)
    pieces: dict[int, dict[int, list[int]]] = {}
    for batch in loader:
        cu = batch["cu_seqlens"]
        sizes_ = (cu[1:] - cu[:-1]).tolist()
        assert batch["position_ids"][0].tolist() == [i for n in sizes_ for i in range(n)]
        bounds = batch["pack_bounds"].tolist()
        assert all(cu[b] - cu[a] <= budget for a, b in itertools.pairwise(bounds))
        for k, sample in enumerate(batch["sample_ids"].tolist()):
            tokens = batch["input_ids"][0, cu[k] : cu[k + 1]]
            assert (tokens // 1000 == sample).all(), "a piece holds its own sample's tokens"
            if len(tokens):
                assert batch["labels"][0, cu[k]] == -100
            pieces.setdefault(sample, {})[batch["sample_offsets"][k].item()] = tokens.tolist()
    assert sorted(pieces) == list(range(len(sizes)))
    for sample, parts in pieces.items():
        kept = sizes[sample] if overlong == "split" else min(sizes[sample], budget)
        assert sum(map(len, parts.values())) == kept
    continuous = stream(make(data, batch_size=batch_size, **settings_), 1)
    first = make(data, batch_size=batch_size, **settings_)
    head = stream(first, 1, stop_after=stop_after)
    resumed = make(data, batch_size=3, **settings_)
    resumed.load_state_dict(first.state_dict())
    assert head + stream(resumed, epochs_left(resumed, 1)) == continuous


def packed_factory() -> tuple[Packed, dict[str, Any]]:
    return Packed(DATA, 32, window=8, overlong="split"), dict(
        batch_size=2, shuffle=True, collate_fn=collate_varlen
    )


def test_verify_pipeline_passes_a_packed_loader() -> None:
    report = verify_pipeline(packed_factory, epochs=1, num_workers=0, world_sizes=(1, 2))
    assert report.passed, str(report)


def test_the_packs_of_a_pinned_configuration_stay_the_same() -> None:
    """Pinned: the first packs of epoch 0 (seed 7, window 8, max_tokens 32, bfd, split). A change
    here changes every packed run's stream: bump order.PACKING_ALGORITHM, so that cursors saved
    under the old packing are refused instead of resuming on other packs."""
    loader = make(DATA, batch_size=2)
    first = [[s["id"] for s in loader.sample_at(0, p)["samples"]] for p in range(6)]
    assert first == [[21, 44], [21, 51], [10, 41], [16], [15], [15, 18]]
    assert (loader.order.epoch_length(0), loader.order.epoch_length(1)) == (49, 49)
    assert loader.state_dict()["fingerprint"]["packing"] == "window-plan-v1"


def test_a_position_past_the_epochs_packs_is_refused() -> None:
    loader = make(DATA, batch_size=2)
    packs = loader.order.epoch_length(0)
    state = make_cursor(seed=7, epoch=0, position=packs + 1, fingerprint=loader.fingerprint())
    with pytest.raises(StateDictError, match=f"position {packs + 1} is past the {packs} packs"):
        loader.load_state_dict(dict(state))


class Keyed(Dataset):
    """Samples as dicts whose tokens are under "input_ids"."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": list(range(index + 1))}


def test_a_field_the_samples_lack_is_named_with_the_keys_they_have():
    with pytest.raises(ConfigError, match=r"field='tokens'.*has no 'tokens' .*\['input_ids'\]"):
        Packed(Keyed(), max_tokens=8, field="tokens")  # lengths read from the samples
    packed = Packed(Keyed(), max_tokens=8, lengths=[1, 2, 3, 4], field="tokens")
    with pytest.raises(ConfigError, match=r"has no 'tokens' .*\['input_ids'\]"):
        next(iter(DataLoader(packed, batch_size=1, seed=0)))
    assert next(iter(DataLoader(Packed(Keyed(), max_tokens=8), batch_size=1, seed=0)))


class Given(Dataset):
    """Samples given as they are, one a position."""

    def __init__(self, samples: list) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        ([[1.5, 2.7], [3.9]], r"sample 0's 'input_ids' is not .*integer .*float64"),  # not cut
        ([torch.tensor([1.0, 2.0])], r"integer .*float32"),
        (["abc"], r"integer token ids \(got <U3 values of shape \(\)\)"),
        ([torch.zeros(2, 3, dtype=torch.long)], r"shape \(2, 3\)"),
        ([{"input_ids": [1, 2], "labels": [0.5, 1.0]}], r"sample 0's 'labels' is not"),
    ],
)
def test_tokens_that_are_not_integer_ids_are_refused(samples: list, match: str) -> None:
    packed = Packed(Given(samples), max_tokens=8)
    with pytest.raises(ConfigError, match=match):
        next(iter(DataLoader(packed, batch_size=None, seed=0)))


def test_an_iterable_dataset_is_refused_as_not_map_style() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield [1, 2]

    with pytest.raises(ConfigError, match=r"Packed needs a map-style dataset .*got Stream"):
        Packed(Stream(), max_tokens=8)
