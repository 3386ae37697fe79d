"""TokenDocuments: the documents of pre-tokenized shards as samples, for packing them whole.

Where :class:`~resumable_loader.tokens.dataset.TokenDataset` concatenates the shards' documents
and cuts windows across their boundaries (pre-training), ``TokenDocuments`` keeps each document
a sample (SFT, chat: samples that must stay whole), so that
``Packed(TokenDocuments(paths), max_tokens)`` packs them. Its lengths come from the shards'
offsets (no sample is read to learn them), and it hands Packed the tokens of a whole batch of
packs in one call (:meth:`TokenDocuments.token_spans`): a document is a pure function of its id,
so no per-sample key or read is needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from resumable_loader.errors import ConfigError
from resumable_loader.tokens.dataset import (
    Reopened,
    _fingerprint,
    _open_shards,
    _stream_offsets,
)

# Enters the fingerprint in seq_len's place: what a sample is (a whole document).
_WHOLE_DOCUMENTS = 0


class TokenDocuments(Reopened, Dataset):
    """Item i: document i of the shards (in the order given) as an int64 tensor of its tokens.

    Args:
        paths: shards (paths, globs or brace patterns) in any format ``TokenDataset`` reads.
        dtype: the token dtype of raw .bin files.
        column: the token-list column of Parquet shards.

    Attributes:
        dtype, num_tokens, num_documents, shards, offsets (int64, documents + 1: document d is
        tokens [offsets[d], offsets[d+1]) of the concatenated shards), fingerprint.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        dtype: np.dtype | type | None = None,
        column: str = "input_ids",
    ) -> None:
        self._arguments = dict(paths=paths, dtype=dtype, column=column)
        opened = _open_shards(paths, dtype=dtype, column=column)
        self.dtype = opened[0].tokens.dtype
        counts = [shard.num_tokens for shard in opened]
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # a plain ndarray view of the offsets (a np.memmap's indexing costs several times more)
        self.offsets = _stream_offsets(opened, self.shard_starts).view(np.ndarray)
        self._tokens = [shard.tokens.view(np.ndarray) for shard in opened]
        self.shards = tuple(shard.info() for shard in opened)
        self.num_tokens = int(self.shard_starts[-1])
        self.num_documents = len(self.offsets) - 1
        self.fingerprint = "documents-" + _fingerprint(
            self.shards, self.dtype, _WHOLE_DOCUMENTS, "documents"
        ).removeprefix("tokens-")

    def __len__(self) -> int:
        return self.num_documents

    def sample_lengths(self) -> np.ndarray:
        """Each document's token count (int64), from the offsets: what Packed packs by."""
        return np.diff(self.offsets)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.num_documents:
            raise IndexError(f"document {index} outside [0, {self.num_documents})")
        start, stop = self.offsets[index : index + 2].tolist()
        shard = int(self._shards_of(np.array([start]))[0])
        base = int(self.shard_starts[shard])
        return torch.from_numpy(self._tokens[shard][start - base : stop - base].astype(np.int64))

    def token_table(self) -> tuple[list[np.ndarray], np.ndarray] | None:
        """The shards' token arrays (their concatenation is the stream of documents) and each
        document's start in it (document d is tokens ``[starts[d], starts[d+1])``, inside one
        shard), when the tokens are in native byte order: what Packed writes a batch of packs
        from in one C++ call; else None (ask :meth:`token_spans`)."""
        if self.dtype.isnative:
            return self._tokens, self.offsets
        return None

    def token_spans(
        self, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where the tokens [starts[k], starts[k] + lengths[k]) of document ids[k] are, for
        every k: an array of tokens and each span's first index in it (what Packed asks for a
        batch of packs' pieces). With one shard, its memory map itself (nothing is copied);
        with several, the spans copied back to back.

        Raises:
            ConfigError: a span outside its document.
        """
        ids = np.asarray(ids, dtype=np.int64)
        first = self.offsets[ids] + starts
        outside = (first + lengths > self.offsets[ids + 1]) | (starts < 0)
        if outside.any():
            bad = int(np.flatnonzero(outside)[0])
            doc, start = int(ids[bad]), int(starts[bad])
            raise ConfigError(
                f"tokens [{start}, {start + int(lengths[bad])}) of document {doc} are outside "
                f"its {int(self.offsets[doc + 1] - self.offsets[doc])} tokens: the lengths asked "
                "for are not this dataset's"
            )
        if len(self._tokens) == 1 and self.dtype.isnative:
            return self._tokens[0], first
        out = np.empty(int(lengths.sum()), dtype=np.int64)
        shard = self._shards_of(first)
        local = (first - self.shard_starts[shard]).tolist()
        done = 0
        for k, size in enumerate(lengths.tolist()):
            out[done : done + size] = self._tokens[shard[k]][local[k] : local[k] + size]
            done += size
        return out, np.cumsum(lengths) - lengths

    def _shards_of(self, starts: np.ndarray) -> np.ndarray:
        """The shard of each document starting at ``starts`` in the stream: the last shard
        starting at or before it. An empty document at the very end of the stream starts where
        no shard does; it is in the last one (its zero tokens are read from that shard's end)."""
        shard = np.searchsorted(self.shard_starts, starts, side="right") - 1
        return np.minimum(shard, len(self._tokens) - 1)

    def __repr__(self) -> str:
        return (
            f"TokenDocuments(shards={len(self.shards)}, dtype={self.dtype.name}, "
            f"documents={self.num_documents}, tokens={self.num_tokens}, "
            f"fingerprint={self.fingerprint!r})"
        )
