"""Several packs made at once: their tokens in flat arrays, and a read-only mapping per pack.

A batch of packs is written by one C++ call (``csrc/packing.h``, no per-sample Python) into
one buffer: the tokens of every piece back to back, labels, position_ids, the provenance and
the pieces' boundaries; from a window plan's own arrays and a token file's documents
(fill_document_packs), else from spans of a token array (fill_pack_batch). Each pack is a
:class:`Pack`, a mapping whose tensors are views of the batch's, made when first asked for, so
:func:`~resumable_loader.packing.collate.collate_varlen` hands the batch's buffer over as it is
instead of cutting packs only to join them again.

Labels are the samples' own labels (or their tokens) with the first token of every piece set to
-100: a causal model predicts token t+1 at token t, and the first token of a piece has no
context inside its piece. ``position_ids`` restart at 0 at every piece, a piece of a split
sample included, and ``cu_seqlens`` (int32) bounds the pieces, so attention stays inside each
one. (A split piece does not continue its sample's count: its attention cannot reach the
sample's earlier pieces, so with rotary embeddings, which see only relative positions, the
count changes nothing, and HF's padding-free models find sequence starts where position_ids
is at its minimum, so a continuing piece would be merged with the sample before it.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from resumable_loader import _core
from resumable_loader.packing.buffers import batch_buffer

if TYPE_CHECKING:
    from resumable_loader._core import TokenShards
    from resumable_loader.packing.order import WindowRun

IGNORE_INDEX = -100
KEYS = (
    "input_ids",
    "labels",
    "position_ids",
    "cu_seqlens",
    "max_seqlen",
    "sample_ids",
    "sample_positions",
    "sample_offsets",
    "images",
    "image_offsets",
)
_ROWS = ("input_ids", "labels", "position_ids")  # one value per token
_PROVENANCE = ("sample_ids", "sample_positions", "sample_offsets")  # one value per piece


class PackBatch:
    """The packs of one read: every piece's tokens back to back, in pack order, in one buffer
    (csrc/packing.h's layout). Made by :meth:`from_spans` or :meth:`from_documents`.

    Args:
        numbers: the int64 buffer, filled.
        shared: in a DataLoader worker, the shared-memory tensor ``numbers`` is a view of (the
            batch's tensors are then views of it, which a worker sends without a copy), else
            None (its tensors are made from numpy views, a third of a torch view's cost).
        layout: (T, P, packs): tokens, pieces and packs of the batch.
        longest: the longest piece.
        images: per pack, its images; image_offsets: per pack, each image's token index in
            the pack (None: no images).

    Attributes:
        piece_bounds (numpy int64, packs + 1: pieces), images, image_offsets (lists per pack);
        the tensors (:meth:`rows`, :meth:`provenance`, ``cu_seqlens``, ``pack_bounds``) are
        views of the buffer, made when first asked for.
    """

    def __init__(
        self,
        numbers: np.ndarray,
        shared: torch.Tensor | None,
        layout: tuple[int, int, int],
        longest: int,
        images: list[list[Any]] | None = None,
        image_offsets: list[list[int]] | None = None,
    ) -> None:
        total, count, packs = layout
        self._numbers, self._shared, self._layout = numbers, shared, layout
        self._longest = longest
        self.piece_bounds = numbers[3 * total + 3 * count : 3 * total + 3 * count + packs + 1]
        self._cu = numbers[3 * total + 3 * count + packs + 1 :].view(np.int32)[: count + 1]
        self.has_images = images is not None
        self.images = images if images is not None else [[] for _ in range(packs)]
        self.image_offsets = image_offsets if image_offsets is not None else self.images
        self._views: dict[str, Any] = {}

    @classmethod
    def from_spans(
        cls,
        pieces: Mapping[str, np.ndarray],
        bounds: np.ndarray,
        sizes: np.ndarray,
        tokens: np.ndarray,
        first: np.ndarray,
        labels: np.ndarray | None = None,
        images: list[list[Any]] | None = None,
        image_offsets: list[list[int]] | None = None,
    ) -> PackBatch:
        """Packs from spans of a token array.

        Args:
            pieces: per piece, in pack order: ``ids`` (sample id), ``positions`` (in the
                epoch's sample order), ``offsets`` (first token within the sample), int64.
            bounds: int64, packs + 1, from 0: pack k is pieces ``bounds[k]:bounds[k+1]``.
            sizes: int64, each piece's token count.
            tokens, first: piece k's tokens are ``tokens[first[k]:first[k] + sizes[k]]`` (an
                integer array: a token file's memory map, or the pieces already joined).
            labels: int64, the pieces' own labels back to back, or None: their tokens.
            images, image_offsets: as the constructor's.
        """
        layout = (int(sizes.sum()), len(sizes), len(bounds) - 1)
        numbers, shared = batch_buffer(_words(*layout))
        longest = _core.fill_pack_batch(
            tokens, first, sizes, pieces["ids"], pieces["positions"], pieces["offsets"], bounds,
            numbers,
        )  # fmt: skip
        batch = cls(numbers, shared, layout, longest, images, image_offsets)
        if labels is not None:  # the samples' own, masked where each piece starts
            total = layout[0]
            own = numbers[total : 2 * total]
            own[:] = labels
            own[batch._cu[:-1][sizes > 0]] = IGNORE_INDEX
        return batch

    @classmethod
    def from_documents(cls, shards: TokenShards, starts: np.ndarray, run: WindowRun) -> PackBatch:
        """Packs of a run of one window plan's packs, document d being tokens ``[starts[d],
        starts[d+1])`` of the shards' concatenation: one C++ call cuts the pieces out of the
        plan's arrays and writes the whole batch (``csrc/packing.h``: fill_document_packs)."""
        window, first, count = run.window, run.first, run.count
        layout = (
            window.token_bounds[first + count] - window.token_bounds[first],
            window.piece_bounds[first + count] - window.piece_bounds[first],
            count,
        )
        numbers, shared = batch_buffer(_words(*layout))
        plan = window.plan
        longest = _core.fill_document_packs(
            shards, starts, window.ids, window.positions, plan.start, plan.length, plan.bounds,
            first, count, numbers,
        )  # fmt: skip
        return cls(numbers, shared, layout, longest)

    def span(self, k: int) -> tuple[int, int, int, int]:
        """Pack k's pieces [first, stop) and tokens [begin, end) in the batch."""
        first, stop = self.piece_bounds[k : k + 2].tolist()
        return first, stop, int(self._cu[first]), int(self._cu[stop])

    @property
    def token_bounds(self) -> np.ndarray:
        """int64, packs + 1: pack k is tokens ``token_bounds[k]:token_bounds[k+1]`` of the row."""
        return self._cu[self.piece_bounds].astype(np.int64)

    @property
    def num_packs(self) -> int:
        return self._layout[2]

    def packs(self) -> list[Pack]:
        """One :class:`Pack` per pack, in order."""
        return [Pack(self, k) for k in range(self._layout[2])]

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``input_ids``, ``labels``, ``position_ids`` of all the packs, shaped [1, tokens]:
        views of one buffer (the packs joined, as collate_varlen hands them over)."""
        return self._tensors()["rows"]

    def provenance(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``sample_ids``, ``sample_positions``, ``sample_offsets`` of all the pieces."""
        return self._tensors()["provenance"]

    @property
    def cu_seqlens(self) -> torch.Tensor:
        """int32, pieces + 1: where each piece begins in the flat row, then its length."""
        return self._tensors()["cu_seqlens"]

    @property
    def pack_bounds(self) -> torch.Tensor:
        """int64, packs + 1: pack k is pieces ``pack_bounds[k]:pack_bounds[k+1]``."""
        return self._tensors()["pack_bounds"]

    def _tensors(self) -> dict[str, Any]:
        """The batch's tensors, views of its buffer, made once when first asked for: two
        ``split_with_sizes`` calls of two views make seven of them (a tensor made alone costs
        about twice as much, and these are most of a batch's Python work)."""
        views = self._views
        if not views:
            total, count, packs = self._layout
            rows, rest = 3 * total, 3 * count + packs + 1
            if self._shared is None:
                flat = torch.from_numpy(self._numbers[:rows].reshape(1, rows))
                numbers = torch.from_numpy(self._numbers[rows : rows + rest])
                views["cu_seqlens"] = torch.from_numpy(self._cu)
            else:
                flat = self._shared[:rows].view(1, rows)
                numbers = self._shared[rows : rows + rest]
                views["cu_seqlens"] = self._shared[rows + rest :].view(torch.int32)[: count + 1]
            views["rows"] = flat.split_with_sizes([total] * 3, dim=1)
            *provenance, views["pack_bounds"] = numbers.split_with_sizes([count] * 3 + [packs + 1])
            views["provenance"] = tuple(provenance)
        return views

    def max_seqlen(self, first: int = 0, stop: int | None = None) -> int:
        """The longest piece of pieces [first, stop) (0 if none; all of them by default)."""
        if first == 0 and stop is None:
            return self._longest
        stop = self._layout[1] if stop is None else stop
        return int(np.diff(self._cu[first : stop + 1]).max(initial=0))

    def row_image_offsets(self) -> list[list[int]]:
        """Each pack's image offsets in the batch's flat row (per pack)."""
        if not self.has_images:
            return [[] for _ in self.images]
        starts = self.token_bounds.tolist()
        return [
            [at + start for at in offsets]
            for offsets, start in zip(self.image_offsets, starts, strict=False)
        ]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuilt, ({**self.__dict__, "_views": {}},))


def _words(total: int, count: int, packs: int) -> int:
    """The buffer's int64 words for T tokens, P pieces and the packs (csrc/packing.h)."""
    return 3 * total + 3 * count + packs + 1 + (count + 2) // 2


def _rebuilt(state: dict[str, Any]) -> PackBatch:
    batch = PackBatch.__new__(PackBatch)
    batch.__dict__.update(state)
    return batch


class Pack(Mapping[str, Any]):
    """One pack of a :class:`PackBatch`: ``input_ids``, ``labels``, ``position_ids`` (int64,
    one per token), ``cu_seqlens`` (int32, pieces + 1, from 0), ``max_seqlen``, the provenance
    ``sample_ids``, ``sample_positions``, ``sample_offsets`` (int64, one per piece), ``images``
    and ``image_offsets`` (each image's token index in the pack). A read-only mapping (``dict(
    pack)`` copies it into a dict); its tensors are views of the batch's."""

    __slots__ = ("_values", "batch", "index")

    def __init__(self, batch: PackBatch, index: int) -> None:
        self.batch = batch
        self.index = index
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        value = self._values.get(key)
        if value is None:
            value = self._values[key] = self._make(key)
        return value

    def _make(self, key: str) -> Any:
        batch, k = self.batch, self.index
        first, stop, begin, end = batch.span(k)
        if key in _ROWS:
            return batch.rows()[_ROWS.index(key)][0, begin:end]
        if key in _PROVENANCE:
            return batch.provenance()[_PROVENANCE.index(key)][first:stop]
        if key == "cu_seqlens":
            return batch.cu_seqlens[first : stop + 1] - begin
        if key == "max_seqlen":
            return batch.max_seqlen(first, stop)
        if key in ("images", "image_offsets"):
            return getattr(batch, key)[k]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(KEYS)

    def __len__(self) -> int:
        return len(KEYS)

    def __repr__(self) -> str:
        return f"Pack({self.index} of {self.batch.num_packs}: {self['sample_ids'].tolist()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Pack, (self.batch, self.index))


def whole_batch(packs: Sequence[Any]) -> PackBatch | None:
    """The batch ``packs`` are, when they are all its packs in order (then its flat arrays are
    the packs joined), else None."""
    # type() rather than isinstance: Pack is a Mapping, whose ABC isinstance costs ~0.5 us
    if not packs or type(packs[0]) is not Pack:
        return None
    batch = packs[0].batch
    if len(packs) != batch.num_packs:
        return None
    for k, pack in enumerate(packs):
        if type(pack) is not Pack or pack.batch is not batch or pack.index != k:
            return None
    return batch
