"""Packing's pure parts: window plans, the prefix table, token budgets and the pack tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from packing_reference import reference_bins, reference_order

from resumable_loader import _core
from resumable_loader.errors import ConfigError
from resumable_loader.packing.batch import IGNORE_INDEX, PackBatch
from resumable_loader.packing.budget import padded_tokens
from resumable_loader.packing.collate import (
    collate_budget,
    collate_flattening,
    collate_padded,
    collate_varlen,
)
from resumable_loader.packing.plan import STRATEGIES, assign, plan_window
from resumable_loader.packing.prefix import PackTable, build_table, window_counts

MAX = 16
lengths_strategy = st.lists(
    st.one_of(st.sampled_from([0, 1, MAX - 1, MAX, MAX + 1, 3 * MAX]), st.integers(0, 4 * MAX)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    lengths=lengths_strategy,
    strategy=st.sampled_from(STRATEGIES),
    overlong=st.sampled_from(["truncate", "split"]),
    budget=st.integers(1, 3 * MAX),
)
def test_every_sample_is_planned_once_and_no_pack_exceeds_the_budget(
    lengths: list[int], strategy: str, overlong: str, budget: int
) -> None:
    lengths_array = np.array(lengths, dtype=np.int64)
    plan = plan_window(lengths_array, budget, strategy=strategy, overlong=overlong)
    counted = window_counts(lengths_array, 60, budget, strategy=strategy, overlong=overlong)
    assert counted.tolist() == ([plan.num_packs] if lengths else []), "C++ count == the plan's"
    for window in (1, 7):
        runs = [lengths_array[i : i + window] for i in range(0, len(lengths), window)]
        expected = [
            plan_window(r, budget, strategy=strategy, overlong=overlong).num_packs for r in runs
        ]
        got = window_counts(lengths_array, window, budget, strategy=strategy, overlong=overlong)
        assert got.tolist() == expected
    covered: dict[int, list[tuple[int, int]]] = {}
    first_pieces = []
    for index in range(plan.num_packs):
        pieces = plan.pack(index)
        assert pieces.stop > pieces.start, "no empty pack"
        sizes = plan.length[pieces]
        if strategy == "pad":
            assert len(sizes) * sizes.max() <= budget
        else:
            assert sizes.sum() <= budget
        keys = list(zip(plan.sample[pieces].tolist(), plan.start[pieces].tolist(), strict=True))
        assert keys == sorted(keys), "pieces in order of position within a pack"
        first_pieces.append(keys[0])
        for sample, start, size in zip(
            *(a[pieces].tolist() for a in (plan.sample, plan.start, plan.length)), strict=True
        ):
            covered.setdefault(sample, []).append((start, size))
    assert first_pieces == sorted(first_pieces), "packs in order of their first piece"
    assert sorted(covered) == list(range(len(lengths)))
    for sample, parts in covered.items():
        parts.sort()
        if overlong == "truncate" or lengths[sample] <= budget:
            assert parts == [(0, min(lengths[sample], budget))]
        else:  # split: consecutive pieces of at most the budget, covering the sample
            assert [start for start, _ in parts] == list(range(0, lengths[sample], budget))
            assert sum(size for _, size in parts) == lengths[sample]


def test_a_longer_sample_with_overlong_error_is_refused_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="overlong='truncate' or 'split'"):
        plan_window(np.array([3, 17]), 16, strategy="bfd", overlong="error")


def test_best_fit_fills_at_least_as_well_as_next_fit_on_a_realistic_window() -> None:
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(np.log(300), 0.9, size=1024).astype(np.int64), 4096)
    counts = {
        s: plan_window(lengths, 4096, strategy=s, overlong="truncate").num_packs for s in STRATEGIES
    }
    assert counts["bfd"] <= counts["next_fit"] and counts["ffd"] <= counts["next_fit"]
    assert counts["bfd"] >= -(-int(lengths.sum()) // 4096)


def test_budget_groups_sort_by_length_and_fit_padded() -> None:
    lengths = np.array([5, 1, 4, 2, 2, 8])
    bins = assign(lengths, 8, "pad")
    assert bins.tolist() == [1, 3, 2, 2, 3, 0]  # [8], [5], [4, 2], [2, 1]
    assert padded_tokens(lengths, bins) == 8 + 5 + 2 * 4 + 2 * 2


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 5), min_size=1, max_size=30), window=st.integers(1, 7))
def test_the_prefix_table_locates_every_pack(counts: list[int], window: int) -> None:
    samples = len(counts) * window
    lengths = np.repeat(np.array(counts), window)  # window w: its count, repeated

    def count(run: np.ndarray) -> np.ndarray:
        return run[::window]

    table = build_table(lambda a, b: count(lengths[a:b]), samples, window)
    assert table.total == sum(counts) and table.windows == len(counts)
    expected = [(w, j) for w, c in enumerate(counts) for j in range(c)]
    assert [table.locate(p) for p in range(table.total)] == expected
    with pytest.raises(ConfigError, match="outside"):
        table.locate(table.total)


def test_the_prefix_table_of_a_short_last_window() -> None:
    lengths = np.ones(10, dtype=np.int64)
    table = build_table(lambda a, b: np.add.reduceat(lengths[a:b], [0, 4, 8]), 10, 4)
    assert table.starts.tolist() == [0, 4, 8, 10]
    assert isinstance(table, PackTable) and table.locate(9) == (2, 1)


@settings(max_examples=200, deadline=None)
@given(
    lengths=lengths_strategy,
    strategy=st.sampled_from(STRATEGIES),
    capacity=st.sampled_from([1, MAX, 3 * MAX, 1 << 16]),
)
def test_the_cpp_plan_assigns_every_piece_as_the_python_reference_does(
    lengths: list[int], strategy: str, capacity: int
) -> None:
    """The C++ assignment decides every packed stream: bins and ties (equal sizes in order of
    position, the first opened of equally full bins) exactly as the reference's rules, and the
    packs' order (by first piece, each one's pieces in order of position)."""
    sizes = np.minimum(np.array(lengths, dtype=np.int64), capacity)
    expected = reference_bins(sizes, capacity, strategy)
    assert assign(sizes, capacity, strategy).tolist() == expected.tolist()
    order, bounds = reference_order(expected)
    plan = plan_window(sizes, capacity, strategy=strategy, overlong="error")
    assert plan.sample.tolist() == order and plan.bounds.tolist() == bounds
    assert plan.length.tolist() == sizes[order].tolist()


def _batch(*packs: list[tuple[int, list[int], dict]]) -> PackBatch:
    """A PackBatch of packs given as lists of (sample id, tokens, extras) pieces."""
    pieces = [piece for pack in packs for piece in pack]
    tokens = [np.array(t, dtype=np.int64) for _, t, _ in pieces]
    sizes = np.array([len(t) for t in tokens], dtype=np.int64)
    ids = np.array([i for i, _, _ in pieces], dtype=np.int64)
    info = {"ids": ids, "positions": ids * 10, "offsets": np.zeros_like(ids)}
    bounds = np.concatenate([[0], np.cumsum([len(pack) for pack in packs])]).astype(np.int64)
    own = [e.get("labels") for _, _, e in pieces]
    labels = None
    if any(x is not None for x in own):
        labels = np.concatenate([t if x is None else x for t, x in zip(tokens, own, strict=True)])
    return PackBatch.from_spans(
        info,
        bounds,
        sizes,
        np.concatenate([np.empty(0, np.int64), *tokens]),
        np.cumsum(sizes) - sizes,
        labels,
        [[img for _, _, e in pack for img in e.get("images", [])] for pack in packs],
        [[e["at"] for _, _, e in pack if "at" in e] for pack in packs],
    )


def test_a_pack_masks_each_boundary_and_restarts_positions() -> None:
    batch = _batch([(1, [5, 6, 7], {}), (2, [], {}), (3, [8, 9], {"images": ["i"], "at": 4})])
    pack = batch.packs()[0]
    assert list(pack) == list(dict(pack)) and len(pack) == 10  # a mapping of the pack's keys
    assert pack["input_ids"].tolist() == [5, 6, 7, 8, 9]
    assert pack["labels"].tolist() == [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]
    assert pack["position_ids"].tolist() == [0, 1, 2, 0, 1]
    assert pack["cu_seqlens"].tolist() == [0, 3, 3, 5] and pack["cu_seqlens"].dtype == torch.int32
    assert pack["max_seqlen"] == 3
    assert pack["sample_ids"].tolist() == [1, 2, 3]
    assert pack["sample_positions"].tolist() == [10, 20, 30]
    assert pack["images"] == ["i"] and pack["image_offsets"] == [4]


def test_batch_layouts_agree_with_the_packs() -> None:
    batch = _batch(
        [(1, [1, 2], {}), (2, [3], {"images": ["a"], "at": 2})],
        [(3, [4, 5, 6], {"labels": np.array([0, 0, 7])})],
    )
    first, second = batch.packs()
    flat = collate_varlen([first, second])  # the packs of one read: its arrays as they are
    copied = collate_varlen([dict(first), dict(second)])  # any packs: joined
    for key in flat:
        same = flat[key] == copied[key]
        assert same if isinstance(same, bool) else same.all(), key
    assert flat["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6]]
    assert flat["labels"].tolist() == [[IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX, 0, 7]]
    assert flat["position_ids"].tolist() == [[0, 1, 0, 0, 1, 2]]
    assert flat["cu_seqlens"].tolist() == [0, 2, 3, 6] and flat["max_seqlen"] == 3
    assert flat["pack_bounds"].tolist() == [0, 2, 3]
    assert flat["images"] == [["a"], []] and flat["image_offsets"] == [[2], []]
    assert collate_varlen([second])["input_ids"].tolist() == [[4, 5, 6]]  # not the whole read
    hf = collate_flattening([first, second])
    assert hf["cu_seq_lens_q"].tolist() == hf["cu_seq_lens_k"].tolist() == [0, 2, 3, 6]
    assert hf["max_length_q"] == 3 and hf["input_ids"].shape == (1, 6)
    padded = collate_padded([first, second], length=4)
    assert padded["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 6, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]
    assert padded["labels"][:, 3].tolist() == [IGNORE_INDEX, IGNORE_INDEX]
    rows = collate_budget(first)
    assert rows["input_ids"].tolist() == [[1, 2], [3, 0]]
    assert rows["attention_mask"].tolist() == [[1, 1], [1, 0]]


def _words(total: int, pieces: int, packs: int) -> int:
    return 3 * total + 3 * pieces + packs + 1 + (pieces + 2) // 2


def test_the_document_kernel_writes_a_run_of_a_plans_packs_as_the_span_kernel_does() -> None:
    """fill_document_packs cuts packs [1, 4) of a window's pieces out of the plan's arrays: the
    same buffer as fill_pack_batch given those pieces' spans, whether the tokens are one array
    or several shards back to back; pieces outside their document or their shard, tokens that
    are not integers and a buffer of another size are refused."""
    tokens = np.arange(100, dtype=np.uint16) * 3
    starts = np.array([0, 10, 25, 25, 60, 100], dtype=np.int64)  # 10, 15, 0, 35, 40 tokens
    ids = np.array([3, 0, 2, 1, 4, 3], dtype=np.int64)
    offsets = np.array([5, 0, 0, 2, 0, 0], dtype=np.int64)
    sizes = np.array([30, 10, 0, 13, 32, 5], dtype=np.int64)
    positions = np.arange(6, dtype=np.int64) + 40
    bounds = np.array([0, 2, 3, 5, 6], dtype=np.int64)
    run = slice(2, 6)
    expected = np.full(_words(50, 4, 3), -7, dtype=np.int64)
    first = starts[ids[run]] + offsets[run]
    columns = (ids[run], positions[run], offsets[run])
    spans = (tokens, first, sizes[run], *columns, np.array([0, 1, 3, 4]), expected)
    assert _core.fill_pack_batch(*spans) == 32
    assert expected[:50].tolist() == [*range(36, 75, 3), *range(180, 276, 3), *range(75, 90, 3)]
    pieces = (starts, ids, positions, offsets)
    for cuts in ([], [25, 60], [10, 25, 60]):
        shards = _core.TokenShards(np.split(tokens, cuts))
        out = np.full_like(expected, -7)
        assert _core.fill_document_packs(shards, *pieces, sizes, bounds, 1, 3, out) == 32
        assert out.tolist() == expected.tolist(), cuts
    bad = sizes.copy()
    bad[3] = 14  # document 1 has 15 tokens: [2, 16) is outside it
    words = np.empty(_words(51, 4, 3), np.int64)
    with pytest.raises(ValueError, match=r"piece 1 \(document 1\) is outside its document"):
        _core.fill_document_packs(shards, *pieces, bad, bounds, 1, 3, words)
    across = _core.TokenShards(np.split(tokens, [30]))  # document 3, [25, 60), spans both
    with pytest.raises(ValueError, match=r"piece 3 \(document 3\) is outside .* token array"):
        _core.fill_document_packs(across, *pieces, sizes, bounds, 1, 3, out)
    with pytest.raises(TypeError, match="integers"):
        _core.TokenShards([tokens.astype(np.float32)])
    with pytest.raises(TypeError, match="one dtype"):
        _core.TokenShards([tokens, tokens.astype(np.int32)])
    with pytest.raises(ValueError, match="the pack buffer needs"):
        _core.fill_document_packs(shards, *pieces, sizes, bounds, 1, 3, out[:-1])
    with pytest.raises(ValueError, match="outside the 5 bounds"):
        _core.fill_document_packs(shards, *pieces, sizes, bounds, 2, 3, out)
