"""TokenDataset: fixed-length windows of pre-tokenized documents, a pure function of their index.

The shards' documents form one stream, in the order given. Window w is the stream's tokens
[w * seq_len, w * seq_len + seq_len + 1): ``input_ids`` its first seq_len tokens, ``labels`` its
last seq_len. Windows overlap by that one token, so an epoch's windows cover every token once as
an input, and ``(num_tokens - 1) // seq_len`` windows fit; the tail after the last full window
(``dropped_tokens``, fewer than seq_len tokens) is dropped, as Megatron drops it.

``documents="concat"`` cuts the stream as stored; ``documents="shuffle"`` (Megatron's recipe)
first orders the documents by a permutation of (seed, epoch), read from the sample key the loader
installs for every sample, and cuts that epoch's stream (see :mod:`.seek_table`); a ``Mixture``
hands it the seed and epoch of the source's own stream instead (``epoch_keyed``,
``keyed_item``). Either way the loader's ``shuffle=True`` then permutes the windows. Nothing is
held per document but the int64 offsets (8 bytes a document, shared copy-on-write by forked
workers) and, in shuffle mode, one seek table per epoch and process (8 bytes a document).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError, ResumableLoaderError, ShardError
from resumable_loader.index.paths import expand_shards
from resumable_loader.rngs.sample import sample_key
from resumable_loader.tokens.formats import ShardInfo, TokenShard, open_shard
from resumable_loader.tokens.seek_table import SeekTable, SeekTables

MODES = ("concat", "shuffle")
OUTPUTS = ("input_ids", "labels", "position_ids", "cu_seqlens")
# Up to this many documents in a window, position_ids restart in place, one slice per document
# (1-8 us); beyond, one np.repeat (~12 us whatever the count).
FEW_SEGMENTS = 5
# Enters the fingerprint: bump when what a window holds changes for the same files.
WINDOW_FORMAT = 1


class Reopened:
    """Pickled as the arguments it was built with: the unpickling process (a spawned worker)
    reopens the token files instead of receiving copies, and refuses files that changed."""

    _arguments: dict[str, Any]
    fingerprint: str

    def __getstate__(self) -> dict[str, Any]:
        return {"arguments": self._arguments, "fingerprint": self.fingerprint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["arguments"])  # type: ignore[misc]
        if self.fingerprint != state["fingerprint"]:
            raise ShardError(
                f"the token shards changed while the dataset was in use (fingerprint "
                f"{state['fingerprint']} -> {self.fingerprint}); restore them or restart"
            )


class TokenDataset(Reopened, Dataset):
    """Windows of ``seq_len`` tokens over pre-tokenized shards, as dicts of tensors.

    Item w: ``input_ids`` and ``labels`` (int64, seq_len; labels are the inputs shifted by one),
    ``position_ids`` (int64, seq_len; 0 at the window's start and at every document start),
    ``cu_seqlens`` (int32, seq_len + 1: where each document, whole or cut, begins within the
    window, from 0, then seq_len, repeated to fill the fixed size so that windows collate; for
    flash-attention's varlen kernels :func:`flatten_cu_seqlens` joins a batch's).

    Args:
        paths: shards (paths, globs or brace patterns), in stream order: Megatron prefixes (or
            their .bin/.idx), .npy/.bin token files with ``name.offsets.npy`` beside, .parquet
            files (see :mod:`resumable_loader.tokens.formats`). Local files only (memory-mapped).
        seq_len: tokens per window (labels need one more).
        documents: "concat" (the stream as stored) or "shuffle" (documents shuffled per epoch).
        dtype: the token dtype of raw .bin files (the other formats record theirs; a dtype
            that contradicts a .npy or .idx header or a Parquet schema is a ShardError).
        column: the token-list column of Parquet shards.
        outputs: which of the four tensors each item holds (each one more costs the loader a
            shared-memory tensor a batch: see docs/benchmarks.md).
        seek_table_dir: shuffle mode: a directory where each epoch's seek table is written
            once and memory-mapped by every worker (default: each process builds its own).

    Attributes:
        dtype, num_tokens, num_documents, num_windows, dropped_tokens, shards (``ShardInfo``),
        fingerprint (a str the loader records: shard names, sizes, token and document counts,
        seq_len and mode; a resume on other files or another cut is refused), epoch_keyed
        (shuffle mode: a window depends on the (seed, epoch) of the stream that reads it, so a
        ``Mixture`` reads it through :meth:`keyed_item` with the source's own seed and epoch).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        seq_len: int,
        *,
        documents: str = "concat",
        dtype: np.dtype | type | None = None,
        column: str = "input_ids",
        outputs: Sequence[str] = OUTPUTS,
        seek_table_dir: str | os.PathLike | None = None,
    ) -> None:
        self.seq_len = check_int("seq_len", seq_len, low=1, high=2**31 - 1)
        if documents not in MODES:
            raise ConfigError(f"documents must be one of {MODES}, got {documents!r}")
        self.documents = documents
        self.outputs = tuple(outputs)
        if not self.outputs or not set(self.outputs) <= set(OUTPUTS):
            raise ConfigError(f"outputs must be some of {OUTPUTS}, got {outputs!r}")
        self._arguments = dict(
            paths=paths,
            seq_len=seq_len,
            documents=documents,
            dtype=dtype,
            column=column,
            outputs=self.outputs,
            seek_table_dir=seek_table_dir,
        )
        opened = _open_shards(paths, dtype=dtype, column=column)
        self.dtype = opened[0].tokens.dtype
        token_counts = [shard.num_tokens for shard in opened]
        self.shard_starts = np.concatenate([[0], np.cumsum(token_counts)]).astype(np.int64)
        self.offsets = _stream_offsets(opened, self.shard_starts)
        # plain ndarray views of the maps: slicing a np.memmap costs twice as much
        self._tokens = [shard.tokens.view(np.ndarray) for shard in opened]
        self.shards = tuple(shard.info() for shard in opened)  # the shards' offsets are dropped
        self.num_tokens = int(self.shard_starts[-1])
        self.num_documents = len(self.offsets) - 1
        self.num_windows = (self.num_tokens - 1) // self.seq_len
        if self.num_windows == 0:
            raise ConfigError(
                f"seq_len={self.seq_len} needs {self.seq_len + 1} tokens per window, but the "
                f"{len(self.shards)} shards hold {self.num_tokens}; use a smaller seq_len or "
                "more data"
            )
        self.dropped_tokens = self.num_tokens - 1 - self.num_windows * self.seq_len
        self.fingerprint = _fingerprint(self.shards, self.dtype, self.seq_len, self.documents)
        self.epoch_keyed = documents == "shuffle"
        self._tables = None
        if self.epoch_keyed:
            self._tables = SeekTables(self.offsets, cache_dir=seek_table_dir, name=self.fingerprint)
        self._positions = np.arange(self.seq_len, dtype=np.int64)
        self._empty_documents = bool(np.any(self.offsets[1:] == self.offsets[:-1]))

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._tables is None:
            return self.window(index)
        try:
            key = sample_key()
        except ResumableLoaderError:
            raise ConfigError(
                "documents='shuffle' reads the epoch and seed from the sample key, which only "
                "resumable_loader.DataLoader installs; outside it call "
                "dataset.window(index, seed=..., epoch=...)"
            ) from None
        return self.window(index, seed=key.seed, epoch=key.epoch)

    def keyed_item(self, index: int, *, seed: int, epoch: int) -> dict[str, torch.Tensor]:
        """Window ``index`` of epoch ``epoch`` of the stream keyed by ``seed``: what a
        ``Mixture`` calls (``mixture.streams.EpochKeyedDataset``) with the seed and epoch of this
        source's own stream, where ``__getitem__`` would see the loader's."""
        return self.window(index, seed=seed, epoch=epoch)

    def window(
        self, index: int, *, seed: int | None = None, epoch: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Window ``index`` of the stream (in shuffle mode: of epoch ``epoch`` under ``seed``)."""
        index = check_int("window index", index)
        if index >= self.num_windows:  # an IndexError, as a sequence's: a for loop stops there
            raise IndexError(f"window index {index} out of range [0, {self.num_windows})")
        start, stop = index * self.seq_len, (index + 1) * self.seq_len + 1
        if self._tables is None:
            if seed is not None or epoch is not None:
                raise ConfigError("seed and epoch choose a document order: documents='shuffle'")
            tokens = self._slice(start, stop)
            starts = self.offsets
        else:
            if seed is None or epoch is None:
                raise ConfigError("documents='shuffle' needs the seed and epoch of the window")
            table = self._tables.get(seed=seed, epoch=epoch)
            starts = table.starts
            tokens = self._gather(table, start, stop)
        return self._sample(tokens, starts, start)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the unshuffled stream, across shard ends."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise ConfigError(
                f"tokens [{start}, {stop}) outside the stream's [0, {self.num_tokens})"
            )
        out = np.empty(stop - start, dtype=self.dtype)
        self._copy(start, stop, out)
        return out

    def _slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop): a view of the map when one shard holds them all, else a copy
        (the window's int64 tensor is then the only copy made)."""
        shard = int(self.shard_starts.searchsorted(start, side="right")) - 1
        if stop > self.shard_starts[shard + 1]:
            return self.read(start, stop)
        base = int(self.shard_starts[shard])
        return self._tokens[shard][start - base : stop - base]

    def _copy(self, start: int, stop: int, out: np.ndarray) -> None:
        shard = int(self.shard_starts.searchsorted(start, side="right")) - 1
        done = 0
        while start < stop:
            base = int(self.shard_starts[shard])
            take = min(stop, int(self.shard_starts[shard + 1])) - start
            out[done : done + take] = self._tokens[shard][start - base : start - base + take]
            start, done, shard = start + take, done + take, shard + 1

    def _gather(self, table: SeekTable, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the shuffled stream of ``table``'s epoch."""
        starts = table.starts
        first = int(starts.searchsorted(start, side="right")) - 1
        last = int(starts.searchsorted(stop, side="left"))
        ids = table.documents(first, last)
        out = np.empty(stop - start, dtype=self.dtype)
        slot_starts = starts[first:last].tolist()
        for slot_start, doc in zip(slot_starts, ids.tolist(), strict=True):
            begin = max(slot_start, start)
            end = min(slot_start + int(self.offsets[doc + 1] - self.offsets[doc]), stop)
            if end > begin:
                origin = int(self.offsets[doc]) - slot_start
                self._copy(origin + begin, origin + end, out[begin - start : end - start])
        return out

    def _sample(self, tokens: np.ndarray, starts: np.ndarray, start: int) -> dict[str, Any]:
        ids = torch.from_numpy(tokens.astype(np.int64))
        sample = {"input_ids": ids[:-1], "labels": ids[1:]}
        if "position_ids" in self.outputs or "cu_seqlens" in self.outputs:
            sample.update(self._boundaries(starts, start))
        return {name: sample[name] for name in self.outputs}

    def _boundaries(self, starts: np.ndarray, start: int) -> dict[str, torch.Tensor]:
        """position_ids and cu_seqlens of the window at ``start`` of the stream ``starts``
        describes (document d begins at starts[d])."""
        seq_len = self.seq_len
        first = int(starts.searchsorted(start, side="right"))
        last = int(starts.searchsorted(start + seq_len, side="left"))
        inner = starts[first:last] - start  # document starts strictly inside the window
        if self._empty_documents:  # several documents start at one token: one boundary
            inner = np.unique(inner)
        count = len(inner) + 1  # segments
        cu = np.full(seq_len + 1, seq_len, dtype=np.int32)
        cu[0] = 0
        cu[1:count] = inner
        if count <= FEW_SEGMENTS:  # restart the count at each start, in place (measured faster)
            positions = self._positions.copy()
            for boundary in inner.tolist():
                positions[boundary:] -= positions[boundary]
        else:
            lengths = np.diff(cu[: count + 1])
            positions = self._positions - np.repeat(cu[:count].astype(np.int64), lengths)
        return {"position_ids": torch.from_numpy(positions), "cu_seqlens": torch.from_numpy(cu)}

    def __repr__(self) -> str:
        return (
            f"TokenDataset(shards={len(self.shards)}, seq_len={self.seq_len}, "
            f"documents={self.documents!r}, dtype={self.dtype.name}, tokens={self.num_tokens}, "
            f"num_documents={self.num_documents}, windows={self.num_windows}, "
            f"fingerprint={self.fingerprint!r})"
        )


def _open_shards(
    paths: str | os.PathLike | Sequence[str | os.PathLike], *, dtype: Any, column: str
) -> list[TokenShard]:
    shards = [open_shard(path, dtype=dtype, column=column) for path in expand_shards(paths)]
    seen: set[str] = set()
    for shard in shards:
        if shard.path in seen:
            raise ConfigError(
                f"{shard.path}: named twice (a Megatron prefix and its .bin or .idx both match?); "
                "name each shard once, e.g. by its .bin or by *.idx"
            )
        seen.add(shard.path)
        if shard.tokens.dtype != shards[0].tokens.dtype:
            raise ShardError(
                f"{shard.path}: field 'dtype' is {shard.tokens.dtype.name}, but "
                f"{shards[0].path} holds {shards[0].tokens.dtype.name}; one stream has one token "
                "dtype: rewrite the shards with the same dtype"
            )
    return shards


def _stream_offsets(shards: list[TokenShard], shard_starts: np.ndarray) -> np.ndarray:
    """int64 document offsets in the concatenated stream (documents + 1 values): one shard's
    own array (never copied: it may be a map), else one array for all."""
    if len(shards) == 1:
        return shards[0].offsets
    parts = [shard.offsets[:-1] + base for shard, base in zip(shards, shard_starts, strict=False)]
    return np.concatenate([*parts, shard_starts[-1:]]).astype(np.int64, copy=False)


def _fingerprint(
    shards: tuple[ShardInfo, ...], dtype: np.dtype, seq_len: int, documents: str
) -> str:
    described = [
        [os.path.basename(s.path), s.format, s.size, s.num_tokens, s.num_documents] for s in shards
    ]
    text = json.dumps([WINDOW_FORMAT, str(dtype), seq_len, documents, described])
    return "tokens-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def flatten_cu_seqlens(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A collated batch's ``cu_seqlens`` (batch, seq_len + 1) as the boundaries of its tokens
    flattened to one sequence (int32, 0 first, batch x seq_len last) and the longest segment:
    what ``flash_attn_varlen_func(cu_seqlens_q=..., max_seqlen_q=...)`` takes."""
    batch, width = cu_seqlens.shape
    shifted = cu_seqlens.to(torch.int64) + torch.arange(batch).unsqueeze(1) * (width - 1)
    flat = torch.unique_consecutive(shifted.flatten())  # drops the padding and joins windows
    return flat.to(torch.int32), int((flat[1:] - flat[:-1]).max())
