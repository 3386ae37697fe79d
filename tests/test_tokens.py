"""TokenDataset: windows are slices of the (per-epoch shuffled) document stream, tile it once per
epoch, carry the right document boundaries, and resume exactly under any layout."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokens_factory import (
    Keyed,
    documents,
    offsets_of,
    run_ranks,
    write_megatron,
    write_parquet,
    write_plain,
)

from resumable_loader import DataLoader, StateDictError
from resumable_loader.errors import ConfigError
from resumable_loader.order import Purpose
from resumable_loader.order.permutation import Permutation
from resumable_loader.tokens import TokenDataset, collate_windows, flatten_cu_seqlens
from resumable_loader.tokens.dataset import OUTPUTS

SEQ_LEN = 16
DOCS = documents(1, 60, max_len=30)  # about 930 tokens: ~58 windows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three shards of three formats (one stream of int32 tokens), and their documents."""
    d = tmp_path_factory.mktemp("tokens")
    paths = [
        write_megatron(d, "a", DOCS[:25], dtype=np.int32),
        write_plain(d, "b", DOCS[25:40], dtype=np.int32),
        write_parquet(d, "c", DOCS[40:]),
    ]
    return paths, DOCS


def stream_of(docs, order=None):
    order = range(len(docs)) if order is None else order
    return np.concatenate([docs[i] for i in order])


def reference(stream, doc_lengths, index, seq_len=SEQ_LEN):
    """Window ``index`` computed the slow way, from per-token document numbers."""
    doc_of_token = np.repeat(np.arange(len(doc_lengths)), doc_lengths)
    start = index * seq_len
    docs = doc_of_token[start : start + seq_len]
    starts = [0] + [i for i in range(1, seq_len) if docs[i] != docs[i - 1]]
    positions = [i - max(s for s in starts if s <= i) for i in range(seq_len)]
    return (
        stream[start : start + seq_len],
        stream[start + 1 : start + seq_len + 1],
        starts,
        positions,
    )


def check_window(sample, stream, doc_lengths, index):
    inputs, labels, starts, positions = reference(stream, doc_lengths, index)
    count = len(starts)
    assert np.array_equal(sample["input_ids"].numpy(), inputs)
    assert np.array_equal(sample["labels"].numpy(), labels)
    assert sample["position_ids"].tolist() == positions
    assert sample["cu_seqlens"][:count].tolist() == starts
    assert set(sample["cu_seqlens"][count:].tolist()) == {SEQ_LEN}


class TestContent:
    def test_attributes(self, corpus):
        paths, docs = corpus
        ds = TokenDataset(paths, SEQ_LEN)
        total = sum(map(len, docs))
        assert (ds.num_tokens, ds.num_documents, ds.dtype) == (total, len(docs), np.int32)
        assert len(ds) == (total - 1) // SEQ_LEN
        assert ds.dropped_tokens == total - 1 - len(ds) * SEQ_LEN < SEQ_LEN
        assert isinstance(ds.fingerprint, str) and ds.fingerprint in repr(ds)

    def test_concat_windows_are_slices_of_the_concatenated_documents(self, corpus):
        paths, docs = corpus
        ds, stream = TokenDataset(paths, SEQ_LEN), stream_of(docs)
        lengths = [len(d) for d in docs]
        for index in range(len(ds)):
            check_window(ds[index], stream, lengths, index)

    def test_a_for_loop_over_the_dataset_stops_at_its_end(self, corpus):
        """Past the last window is an IndexError, as a sequence's (the loop protocol's end)."""
        ds = TokenDataset(corpus[0], SEQ_LEN)
        assert len(list(ds)) == len(ds)
        with pytest.raises(IndexError, match=rf"window index {len(ds)} out of range"):
            ds[len(ds)]
        with pytest.raises(ConfigError, match="window index must be an int >= 0"):
            ds[-1]

    def test_concat_windows_tile_the_stream_once_per_epoch(self, corpus):
        paths, docs = corpus
        ds = TokenDataset(paths, SEQ_LEN)
        delivered = {}
        for batch in DataLoader(Keyed(ds), batch_size=5, shuffle=True, seed=7):
            for index, inputs in zip(batch["id"].tolist(), batch["input_ids"], strict=True):
                assert index not in delivered  # each window once an epoch
                delivered[index] = inputs.numpy()
        assert sorted(delivered) == list(range(len(ds)))
        tiled = np.concatenate([delivered[i] for i in range(len(ds))])
        assert np.array_equal(tiled, stream_of(docs)[: len(ds) * SEQ_LEN])

    @pytest.mark.parametrize("epoch", [0, 1, 5])
    def test_shuffle_windows_tile_that_epochs_document_order(self, corpus, epoch):
        paths, docs = corpus
        ds = TokenDataset(paths, SEQ_LEN, documents="shuffle")
        order = Permutation(len(docs), seed=11, epoch=epoch, purpose=Purpose.DOCUMENT_ORDER)
        shuffled = [docs[i] for i in order.fill(0, len(docs))]
        stream, lengths = stream_of(shuffled), [len(d) for d in shuffled]
        for index in range(len(ds)):
            check_window(ds.window(index, seed=11, epoch=epoch), stream, lengths, index)

    def test_shuffle_orders_differ_by_epoch_and_seed(self, corpus):
        ds = TokenDataset(corpus[0], SEQ_LEN, documents="shuffle")
        first = [
            ds.window(0, seed=s, epoch=e)["input_ids"].tolist() for s, e in [(1, 0), (1, 1), (2, 0)]
        ]
        assert first[0] != first[1] and first[0] != first[2]

    def test_seek_table_is_the_prefix_sum_of_the_shuffled_lengths(self, corpus):
        from resumable_loader.tokens.seek_table import SeekTable

        lengths = np.diff(offsets_of(corpus[1]))
        table = SeekTable(offsets_of(corpus[1]), seed=3, epoch=2)
        ids = Permutation(len(lengths), seed=3, epoch=2, purpose=Purpose.DOCUMENT_ORDER).fill(
            0, len(lengths)
        )
        assert np.array_equal(table.starts, np.concatenate([[0], np.cumsum(lengths[ids])]))

    def test_seek_table_directory_is_written_once_and_read_by_others(
        self, corpus, tmp_path, monkeypatch
    ):
        from resumable_loader import _core

        in_memory = TokenDataset(corpus[0], SEQ_LEN, documents="shuffle")
        cached = TokenDataset(corpus[0], SEQ_LEN, documents="shuffle", seek_table_dir=tmp_path)
        expected = [
            in_memory.window(i, seed=4, epoch=3)["input_ids"] for i in range(len(in_memory))
        ]
        assert all(
            torch.equal(cached.window(i, seed=4, epoch=3)["input_ids"], e)
            for i, e in enumerate(expected)
        )
        (table,) = tmp_path.glob("*.seek.npy")
        assert cached.fingerprint in table.name and "seed-4.epoch-3" in table.name

        def no_build(*args):
            raise AssertionError("the table should have been read, not built")

        monkeypatch.setattr(_core, "build_seek_table", no_build)
        other = TokenDataset(corpus[0], SEQ_LEN, documents="shuffle", seek_table_dir=tmp_path)
        assert torch.equal(other.window(5, seed=4, epoch=3)["input_ids"], expected[5])
        monkeypatch.undo()
        np.save(table, np.arange(7))  # a file that does not fit: rebuilt, never trusted
        again = TokenDataset(corpus[0], SEQ_LEN, documents="shuffle", seek_table_dir=tmp_path)
        assert torch.equal(again.window(5, seed=4, epoch=3)["input_ids"], expected[5])
        assert np.load(table).shape == (len(corpus[1]) + 1,)

    def test_a_corpus_of_other_document_lengths_never_reads_anothers_table(self, tmp_path):
        """Same file name, document count and token count (the fingerprint), other lengths:
        each reads its own table from a shared seek_table_dir."""
        first = [np.arange(10), np.arange(20), np.arange(30)]
        second = [np.arange(30), np.arange(10), np.arange(20)]
        shards = []
        for name, docs in (("v1", first), ("v2", second)):
            (tmp_path / name).mkdir()
            shards.append(write_megatron(tmp_path / name, "s", docs, dtype=np.int32))
        tables = tmp_path / "tables"
        for shard in shards:
            alone = TokenDataset(shard, 5, documents="shuffle")
            shared = TokenDataset(shard, 5, documents="shuffle", seek_table_dir=tables)
            assert shared.fingerprint == TokenDataset(shards[0], 5, documents="shuffle").fingerprint
            for i in range(len(alone)):
                assert torch.equal(
                    shared.window(i, seed=4, epoch=0)["input_ids"],
                    alone.window(i, seed=4, epoch=0)["input_ids"],
                )
        assert len(list(tables.glob("*.seek.npy"))) == 2

    def test_shuffle_mode_reads_the_epoch_and_seed_the_loader_installs(self, corpus):
        ds = TokenDataset(corpus[0], SEQ_LEN, documents="shuffle")
        loader = DataLoader(Keyed(ds), batch_size=4, shuffle=True, seed=5)
        for epoch in range(2):
            for batch in loader:
                for i, index in enumerate(batch["id"].tolist()):
                    expected = ds.window(index, seed=5, epoch=epoch)["input_ids"]
                    assert batch["epoch"][i] == epoch
                    assert np.array_equal(batch["input_ids"][i], expected)

    def test_shuffle_mode_outside_the_loader_asks_for_seed_and_epoch(self, corpus):
        ds = TokenDataset(corpus[0], SEQ_LEN, documents="shuffle")
        with pytest.raises(ConfigError, match=r"dataset.window\(index, seed=..., epoch=...\)"):
            ds[0]
        with pytest.raises(ConfigError, match="choose a document order"):
            TokenDataset(corpus[0], SEQ_LEN).window(0, seed=1, epoch=0)

    def test_outputs_chooses_the_tensors(self, corpus):
        full = TokenDataset(corpus[0], SEQ_LEN)[3]
        lean = TokenDataset(corpus[0], SEQ_LEN, outputs=("labels", "input_ids"))[3]
        assert list(lean) == ["labels", "input_ids"]
        assert all(torch.equal(lean[name], full[name]) for name in lean)
        with pytest.raises(ConfigError, match="outputs must be some of"):
            TokenDataset(corpus[0], SEQ_LEN, outputs=("tokens",))

    @pytest.mark.parametrize("workers", [0, 2])
    def test_collate_windows_is_default_collate_in_one_buffer(self, corpus, workers):
        ds = Keyed(TokenDataset(corpus[0], SEQ_LEN, documents="shuffle"))
        kwargs = dict(batch_size=5, shuffle=True, seed=9, num_workers=workers)
        expected = list(DataLoader(ds, **kwargs))
        packed = list(DataLoader(ds, collate_fn=collate_windows, **kwargs))
        assert len(packed) == len(expected)
        for ours, theirs in zip(packed, expected, strict=True):
            assert list(ours) == list(theirs)
            for key, value in theirs.items():
                assert ours[key].dtype == value.dtype and torch.equal(ours[key], value)
            storages = {ours[f].untyped_storage().data_ptr() for f in OUTPUTS}
            assert len(storages) == 1  # one buffer, so one shared-memory segment a batch
        assert collate_windows([1, 2]).tolist() == [1, 2]  # not dicts: default_collate

    def test_windows_of_many_short_documents(self, tmp_path):
        docs = [np.arange(1 + i % 3) for i in range(40)]  # 1-3 tokens: ~8 documents a window
        ds = TokenDataset(write_megatron(tmp_path, "short", docs), SEQ_LEN)
        for index in range(len(ds)):
            check_window(ds[index], stream_of(docs), [len(d) for d in docs], index)

    def test_zero_length_documents_add_no_boundary(self, tmp_path):
        docs = [np.arange(5), np.arange(0), np.arange(9), np.arange(0), np.arange(20)]
        prefix = write_megatron(tmp_path, "z", docs)
        sample = TokenDataset(prefix, SEQ_LEN)[0]
        assert sample["cu_seqlens"][:4].tolist() == [0, 5, 14, 16]
        assert sample["position_ids"].tolist() == [*range(5), *range(9), 0, 1]

    def test_flatten_cu_seqlens_joins_a_batch_for_varlen_attention(self, corpus):
        ds = TokenDataset(corpus[0], SEQ_LEN)
        batch = torch.stack([ds[i]["cu_seqlens"] for i in range(3)])
        flat, longest = flatten_cu_seqlens(batch)
        expected = [0]
        for i in range(3):  # each window's real boundaries, shifted to its place in the batch
            inner = [b for b in ds[i]["cu_seqlens"].tolist() if 0 < b < SEQ_LEN]
            expected += [b + i * SEQ_LEN for b in inner] + [(i + 1) * SEQ_LEN]
        assert flat.dtype == torch.int32 and flat.tolist() == expected
        assert longest == max(np.diff(expected))

    def test_pickles_as_its_paths_and_reopens(self, corpus):
        ds = TokenDataset(corpus[0], SEQ_LEN, documents="shuffle")
        data = pickle.dumps(ds)
        assert len(data) < 2000  # not the tokens nor the offsets
        again = pickle.loads(data)
        assert again.fingerprint == ds.fingerprint
        assert np.array_equal(
            again.window(3, seed=1, epoch=2)["input_ids"],
            ds.window(3, seed=1, epoch=2)["input_ids"],
        )

    @pytest.mark.slow
    def test_spawned_workers_reopen_the_files(self, corpus):
        ds = TokenDataset(corpus[0], SEQ_LEN, documents="shuffle")
        expected = [b["input_ids"] for b in DataLoader(ds, batch_size=16, shuffle=True, seed=3)]
        spawned = DataLoader(
            ds, batch_size=16, shuffle=True, seed=3, num_workers=1, multiprocessing_context="spawn"
        )
        assert all(torch.equal(a["input_ids"], b) for a, b in zip(spawned, expected, strict=True))

    def test_fingerprint_follows_files_seq_len_and_mode(self, corpus, tmp_path):
        paths, _ = corpus
        base = TokenDataset(paths, SEQ_LEN).fingerprint
        assert TokenDataset(paths, SEQ_LEN).fingerprint == base
        assert TokenDataset(paths, SEQ_LEN + 1).fingerprint != base
        assert TokenDataset(paths, SEQ_LEN, documents="shuffle").fingerprint != base
        assert TokenDataset(paths[:2], SEQ_LEN).fingerprint != base
        other = write_megatron(tmp_path, "a", documents(9, 25), dtype=np.int32)  # same name
        assert TokenDataset([other, *paths[1:]], SEQ_LEN).fingerprint != base

    def test_a_cursor_for_another_cut_is_refused(self, corpus):
        paths, _ = corpus
        saved = DataLoader(TokenDataset(paths, SEQ_LEN), batch_size=4, seed=1).state_dict()
        other = DataLoader(TokenDataset(paths, SEQ_LEN, documents="shuffle"), batch_size=4, seed=1)
        with pytest.raises(StateDictError, match="dataset"):
            other.load_state_dict(saved)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=30).filter(lambda v: sum(v) > 9),
    seq_len=st.integers(1, 9),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
)
def test_every_window_of_random_corpora(tmp_path_factory, lengths, seq_len, shuffle, seed):
    rng = np.random.default_rng(len(lengths))
    docs = [rng.integers(0, 1000, n) for n in lengths]
    d = tmp_path_factory.mktemp("random")
    halves = [docs[: len(docs) // 2], docs[len(docs) // 2 :]]
    halves = [half for half in halves if sum(map(len, half))]  # a shard without tokens is refused
    paths = [write_megatron(d, f"s{i}", half) for i, half in enumerate(halves)]
    docs = [doc for half in halves for doc in half]
    mode = "shuffle" if shuffle else "concat"
    ds = TokenDataset(paths, seq_len, documents=mode, dtype=None)
    order = np.arange(len(docs))
    if shuffle:
        order = Permutation(len(docs), seed=seed, epoch=1, purpose=Purpose.DOCUMENT_ORDER).fill(
            0, len(docs)
        )
    shuffled = [docs[i] for i in order]
    stream, kept = stream_of(shuffled), [len(x) for x in shuffled]
    assert len(ds) == (sum(lengths) - 1) // seq_len
    for index in range(len(ds)):
        sample = ds.window(index, seed=seed, epoch=1) if shuffle else ds[index]
        inputs, labels, starts, positions = reference(stream, kept, index, seq_len)
        assert np.array_equal(sample["input_ids"].numpy(), inputs)
        assert np.array_equal(sample["labels"].numpy(), labels)
        assert sample["position_ids"].tolist() == positions
        assert sample["cu_seqlens"][: len(starts)].tolist() == starts
        assert set(sample["cu_seqlens"][len(starts) :].tolist()) == {seq_len}


# -- exactness: continuous vs interrupted and resumed -----------------------------------------


def loader_factory(paths, mode, batch_size, workers):
    def make(rank, world_size):
        ds = Keyed(TokenDataset(paths, SEQ_LEN, documents=mode))
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            seed=2026,
            rank=rank,
            world_size=world_size,
        )

    return make


EPOCHS = 2


def continuous(paths, mode):
    stream, _ = run_ranks(loader_factory(paths, mode, 8, 0), 1, EPOCHS)
    return stream


@pytest.fixture(scope="module")
def continuous_streams(corpus):
    return {mode: continuous(corpus[0], mode) for mode in ("concat", "shuffle")}


@pytest.mark.parametrize("mode", ["concat", "shuffle"])
@pytest.mark.parametrize(
    "before, after",
    [((0, 4, 1), (2, 3, 2)), ((2, 6, 2), (0, 5, 1)), ((1, 3, 3), (1, 8, 1))],
    ids=lambda layout: "w{}b{}ws{}".format(*layout),
)
def test_resumed_stream_equals_the_continuous_one(corpus, continuous_streams, mode, before, after):
    paths = corpus[0]
    expected = continuous_streams[mode]
    head, state = run_ranks(
        loader_factory(paths, mode, before[1], before[0]), before[2], EPOCHS, stop_after=5
    )
    tail, _ = run_ranks(
        loader_factory(paths, mode, after[1], after[0]), after[2], EPOCHS, state=state
    )
    assert head + tail == expected
    epochs = {entry[0] for entry in expected}
    assert epochs == {0, 1}


@settings(max_examples=6, deadline=None)
@given(
    mode=st.sampled_from(["concat", "shuffle"]),
    batch_sizes=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    world_sizes=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stop=st.integers(1, 12),
)
def test_random_layouts_resume_exactly(
    corpus, continuous_streams, mode, batch_sizes, world_sizes, stop
):
    paths = corpus[0]
    head, state = run_ranks(
        loader_factory(paths, mode, batch_sizes[0], 0), world_sizes[0], EPOCHS, stop_after=stop
    )
    tail, _ = run_ranks(
        loader_factory(paths, mode, batch_sizes[1], 0), world_sizes[1], EPOCHS, state=state
    )
    assert head + tail == continuous_streams[mode]
