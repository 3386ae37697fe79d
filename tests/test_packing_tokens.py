"""Packing token files (TokenDocuments as the length and token source, read as spans of the
memory map, giving the stream per-sample reads give), what Packed refuses, split pieces, and
samples that fail to load inside a pack."""

from __future__ import annotations

import copy
import hashlib
import itertools
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from packing_factory import DATA, Texts, epochs_left, lengths, make, stream
from tokens_factory import documents, write_megatron
from torch.utils.data import Dataset

from resumable_loader import DataLoader, Packed
from resumable_loader.errors import ConfigError, ResumeWarning
from resumable_loader.loader.bad_samples import read_quarantine, substitute_id
from resumable_loader.packing.batch import PackBatch
from resumable_loader.packing.buffers import BufferPool
from resumable_loader.packing.collate import collate_varlen
from resumable_loader.tokens import TokenDataset, TokenDocuments


class PerSample(Dataset):
    """The same documents as a plain map-style dataset: read one ``__getitem__`` at a time."""

    def __init__(self, docs: list[np.ndarray]) -> None:
        self.docs = docs
        self.fingerprint = f"per-sample-{len(docs)}"

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.docs[index].astype(np.int64))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[np.ndarray]]:
    """Two Megatron shards of 30 and 25 documents of 1 to 40 tokens."""
    directory = tmp_path_factory.mktemp("docs")
    first, second = documents(1, 30), documents(2, 25)
    paths = [write_megatron(directory, "a", first), write_megatron(directory, "b", second)]
    return paths, first + second


def records(loader: Any, epochs: int, stop_after: int | None = None) -> list[tuple]:
    """Every batch's tensors, whole (tokens, labels, positions, bounds, provenance)."""
    out: list[tuple] = []
    for _ in range(epochs):
        for batch in loader:
            out.append(
                tuple(
                    batch[key].flatten().tolist()
                    for key in ("input_ids", "labels", "position_ids", "cu_seqlens", "sample_ids")
                )
            )
            if len(out) == stop_after:
                return out
    return out


def test_token_documents_are_the_shards_documents_with_lengths_from_the_offsets(
    corpus: tuple[list[str], list[np.ndarray]],
) -> None:
    paths, docs = corpus
    dataset = TokenDocuments(paths)
    assert len(dataset) == dataset.num_documents == 55
    assert dataset.sample_lengths().tolist() == [len(d) for d in docs]
    assert all(dataset[i].tolist() == d.tolist() for i, d in enumerate(docs))
    assert dataset[54].dtype == torch.int64
    again = pickle.loads(pickle.dumps(dataset))  # workers reopen the files
    assert again.fingerprint == dataset.fingerprint != TokenDataset(paths, 8).fingerprint
    assert TokenDocuments(paths[:1]).fingerprint != dataset.fingerprint
    tokens, first = dataset.token_spans(np.array([31, 2]), np.array([1, 0]), np.array([2, 3]))
    assert np.concatenate(
        [tokens[f : f + n] for f, n in zip(first, (2, 3), strict=True)]
    ).tolist() == (docs[31][1:3].tolist() + docs[2][:3].tolist())
    with pytest.raises(ConfigError, match=f"of document 2 are outside its {len(docs[2])} tokens"):
        dataset.token_spans(np.array([2]), np.array([0]), np.array([len(docs[2]) + 1]))
    with pytest.raises(IndexError):
        dataset[55]


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
def test_packed_token_documents_read_as_spans_give_the_per_sample_stream(
    corpus: tuple[list[str], list[np.ndarray]],
    shards: int,
    workers: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch of one window's packs is written from the shards' memory maps in one C++ call
    (other batches: spans of them, copied back to back with several shards). Either way the
    stream equals per-sample reads of the same documents, split pieces included, and no
    document is read as a sample."""
    paths, docs = corpus
    docs = docs[:30] if shards == 1 else docs
    source = TokenDocuments(paths[:shards])

    def refused(self: TokenDocuments, index: int) -> None:
        raise AssertionError("Packed must read TokenDocuments as spans")

    runs = []
    from_documents = PackBatch.from_documents.__func__

    def counted(cls: type[PackBatch], *args: Any) -> PackBatch:
        runs.append(args[-1].count)
        return from_documents(cls, *args)

    monkeypatch.setattr(TokenDocuments, "__getitem__", refused)
    monkeypatch.setattr(PackBatch, "from_documents", classmethod(counted))
    settings = dict(max_tokens=32, window=6, batch_size=3)
    spans = records(make(source, num_workers=workers, **settings), 2)
    assert spans == records(make(PerSample(docs), **settings), 2)
    if workers == 0:  # (a worker's calls are not seen here)
        assert len(runs) > len(spans) // 3
    assert sorted(i for batch in spans[: len(spans) // 2] for i in batch[4]) == sorted(
        i for i, d in enumerate(docs) for _ in range(-(-len(d) // 32))
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_empty_documents_at_the_end_of_each_shard_are_read_and_packed(
    tmp_path: Path, workers: int
) -> None:
    """An empty document last in a shard starts where the next shard does, and last in the
    last shard where no shard does: it is read (as zero tokens) from its own shard's end, by
    ``__getitem__`` and by the spans a batch over two windows asks for."""
    first, second = [*documents(3, 5), np.array([], dtype=np.int64)], documents(4, 4)
    second.append(np.array([], dtype=np.int64))
    paths = [write_megatron(tmp_path, "a", first), write_megatron(tmp_path, "b", second)]
    source, docs = TokenDocuments(paths), first + second
    assert [source[i].tolist() for i in range(len(docs))] == [d.tolist() for d in docs]
    settings = dict(max_tokens=40, window=1, batch_size=2)  # every batch spans two windows
    assert records(make(source, num_workers=workers, **settings), 2) == records(
        make(PerSample(docs), **settings), 2
    )


def _digest(value: Any, digest: Any) -> None:
    """Feed a batch (tensors with their dtype and shape, lists, numbers) into ``digest``."""
    if isinstance(value, torch.Tensor):
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.contiguous().numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value):
            digest.update(key.encode())
            _digest(value[key], digest)
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _digest(item, digest)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


@pytest.mark.parametrize("workers", [0, 2])
def test_a_whole_packed_stream_over_token_shards_is_pinned(tmp_path: Path, workers: int) -> None:
    """Pinned: every output of two epochs of packs over two token shards (input_ids, labels,
    position_ids, cu_seqlens, max_seqlen, pack_bounds, provenance), taken at 0ea8c21, before a
    batch was written by one C++ call from the window plan, and unchanged since. A change here
    changes every packed run's stream."""
    paths = [
        write_megatron(tmp_path, "a", documents(2, 150)),
        write_megatron(tmp_path, "b", documents(3, 120)),
    ]
    loader = make(
        TokenDocuments(paths), max_tokens=16, window=32, batch_size=3, seed=5,
        num_workers=workers,
    )  # fmt: skip
    digest, batches = hashlib.blake2b(digest_size=12), 0
    for _ in range(2):
        for batch in loader:
            _digest(batch, digest)
            batches += 1
    assert (digest.hexdigest(), batches) == ("1e2815c56ca86e20920f932b", 231)


def test_packed_token_documents_resume_on_other_workers(
    corpus: tuple[list[str], list[np.ndarray]],
) -> None:
    paths, _ = corpus
    continuous = stream(make(TokenDocuments(paths), batch_size=2, max_tokens=48), 2)
    first = make(TokenDocuments(paths), batch_size=2, max_tokens=48, num_workers=2)
    head = stream(first, 2, stop_after=7)
    resumed = make(TokenDocuments(paths), batch_size=3, max_tokens=48)
    resumed.load_state_dict(first.state_dict())
    assert head + stream(resumed, epochs_left(resumed, 2)) == continuous


def test_other_lengths_than_the_documents_read_each_one_and_stale_ones_are_named(
    corpus: tuple[list[str], list[np.ndarray]],
) -> None:
    paths, docs = corpus
    shorter = np.array([max(0, len(d) - 1) for d in docs])
    with pytest.raises(ConfigError, match=r"recorded length is .*: the lengths are stale"):
        next(iter(make(TokenDocuments(paths), batch_size=2, lengths=shorter)))
    longer = np.array([len(d) + 1 for d in docs])  # a budget with room: read, not spans
    batch = next(iter(make(TokenDocuments(paths), batch_size=2, lengths=longer)))
    cu = batch["cu_seqlens"].tolist()
    for k, sample in enumerate(batch["sample_ids"].tolist()):
        assert batch["input_ids"][0, cu[k] : cu[k + 1]].tolist() == docs[sample].tolist()


def test_a_token_dataset_is_refused_naming_token_documents(
    corpus: tuple[list[str], list[np.ndarray]],
) -> None:
    with pytest.raises(ConfigError, match=r"pass TokenDocuments\(paths\)"):
        Packed(TokenDataset(corpus[0], 16), 64)


def test_split_pieces_restart_their_positions_so_position_ids_bound_the_same_pieces() -> None:
    """HF's padding-free models cut a row into sequences where position_ids is at its minimum
    (transformers' prepare_fa_kwargs_from_position_ids); a split sample's later piece starts
    at 0 too, so those cuts are exactly cu_seqlens' (a piece that continued its sample's count
    would be merged with the sample before it, across the boundary its labels mask)."""
    loader = make(DATA, batch_size=4)  # DATA: sample 3 (33 tokens) is split at max_tokens=32
    split_seen = False
    for batch in itertools.islice(loader, 20):
        positions = batch["position_ids"][0]
        cu = batch["cu_seqlens"]
        starts = cu[:-1][cu[1:] > cu[:-1]]  # non-empty pieces
        assert torch.equal(torch.nonzero(positions == positions.min()).flatten(), starts.long())
        split_seen |= bool((batch["sample_offsets"] > 0).any())
    assert split_seen


class Corrupt(Texts):
    """Texts whose samples in ``bad`` fail to load, as a truncated file would."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__(lengths(61), name="texts")  # DATA's samples and fingerprint
        self.bad = bad

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index in self.bad:
            raise OSError(f"sample {index}: file is truncated")
        return super().__getitem__(index)


def test_a_sample_that_fails_inside_a_pack_is_substituted_in_its_piece_and_quarantined(
    tmp_path: Path,
) -> None:
    """on_sample_error='substitute' sees through Packed: the failed sample's piece holds its
    substitute (drawn from the sample's position, loaded under its key, cut to the piece's
    length), the packs stay the same packs, the ids quarantined are samples' (not packs'), and
    a resume on other workers, reading the quarantine, continues the same stream."""
    bad = {3, 10, 40}  # 3 is split into two pieces

    def run(directory: str, **kwargs: Any) -> Any:
        policy = dict(on_sample_error="substitute", max_bad_fraction=0.1, quarantine_dir=directory)
        return make(Corrupt(bad), **policy, **kwargs)

    clean = records(make(DATA, batch_size=2), 1)
    got = records(run(str(tmp_path / "a"), batch_size=2), 1)
    assert [batch[4] for batch in got] == [batch[4] for batch in clean]  # the same packs
    for ours, planned in zip(got, clean, strict=True):  # no piece outgrows its plan
        sizes, plan = np.diff(ours[3]), np.diff(planned[3])
        assert (sizes <= plan).all()
    assert got != clean
    assert sorted(read_quarantine(tmp_path / "a")) == sorted(bad)
    loader = run(str(tmp_path / "b"), batch_size=2)
    for position, batch in enumerate(loader):
        cu = batch["cu_seqlens"].tolist()
        for k, place in enumerate(batch["sample_positions"].tolist()):
            piece = batch["input_ids"][0, cu[k] : cu[k + 1]]
            sample = int(batch["sample_ids"][k])
            origin = substitute_id(7, 0, place, 0, 61) if sample in bad else sample
            assert (piece // 1000 == origin).all(), (position, sample)
    first = run(str(tmp_path / "c"), batch_size=2, num_workers=2)
    head = stream(first, 1, stop_after=9)
    resumed = run(str(tmp_path / "c"), batch_size=3)
    resumed.load_state_dict(first.state_dict())
    assert head + stream(resumed, epochs_left(resumed, 1)) == stream(
        run(str(tmp_path / "d"), batch_size=2), 1
    )


class OneLong(torch.utils.data.Dataset):
    """Sample 0 has 150 tokens (split in pieces of 64, 64, 22), the others 10; 0 fails."""

    fingerprint = "one-long-v1"
    lengths = np.array([150] + [10] * 19)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index == 0:
            raise OSError("sample 0: file is truncated")
        return {"input_ids": torch.arange(int(self.lengths[index])) + 1000 * index}


def test_a_substitute_for_a_split_sample_fills_each_of_its_pieces_from_its_start() -> None:
    """Cut at each piece's offset, a 10-token substitute left the pieces at 64 and 128 empty:
    a zero-length segment, and a pack with no token (a NaN loss)."""
    packed = Packed(OneLong(), max_tokens=64, lengths=OneLong.lengths, overlong="split")
    loader = DataLoader(
        packed,
        batch_size=None,
        seed=0,
        on_sample_error="substitute",
        max_bad_fraction=0.5,
    )
    pieces = 0
    for pack in loader:
        sizes = np.diff(pack["cu_seqlens"].tolist())
        assert (sizes > 0).all(), pack["sample_ids"]
        for k in np.flatnonzero(pack["sample_ids"].numpy() == 0):
            pieces += 1
            cu = pack["cu_seqlens"].tolist()
            piece = pack["input_ids"][cu[k] : cu[k + 1]]  # one pack: its tokens, 1-D
            assert piece.tolist() == sorted(piece.tolist()) and len(piece) == 10
            assert int(piece[0]) % 1000 == 0  # the substitute's own first token
    assert pieces == 3


def test_batches_the_loop_still_holds_are_never_written_over(
    corpus: tuple[list[str], list[np.ndarray]],
) -> None:
    """The main process reuses a batch's buffer once nothing refers to it: any tensor of a
    batch (a whole batch, one of its tensors, a view of one) keeps it from being reused, and a
    buffer nobody holds is reused."""
    loader = make(TokenDocuments(corpus[0]), batch_size=2, max_tokens=48)
    held, copies = [], []
    for step, batch in enumerate(loader):
        kept = {0: batch, 1: batch["labels"], 2: batch["input_ids"][0, 3:9]}.get(step % 4)
        if kept is not None:
            held.append(kept)
            copies.append(copy.deepcopy(kept))
    assert len(held) > 5
    for kept, copied in zip(held, copies, strict=True):
        if isinstance(kept, dict):
            assert all(torch.equal(kept[k], copied[k]) for k in ("input_ids", "labels"))
        else:
            assert torch.equal(kept, copied)
    pool = BufferPool()
    first = pool.take(100)
    address = first.ctypes.data
    second = pool.take(100)
    assert second.ctypes.data != address  # the first is held: another buffer
    del first
    assert pool.take(90).ctypes.data == address != second.ctypes.data  # free again: reused


@pytest.mark.parametrize("workers", [0, 2])
def test_a_foreign_loader_over_the_visible_batch_sampler_gets_the_same_packs(workers: int) -> None:
    """A framework that rebuilds the loader from ``loader.batch_sampler`` (Accelerate) runs
    torch's own fetcher over Packed: its ids install each pack's key as they are read, so the
    packs and every sample's augmentation are ours."""
    loader = make(DATA, batch_size=2)
    mine = records(loader, 1)
    other = torch.utils.data.DataLoader(
        loader.dataset,
        batch_sampler=loader.batch_sampler,
        num_workers=workers,
        collate_fn=collate_varlen,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResumeWarning)
        loader.sampler.set_epoch(0)
        assert records(other, 1) == mine
