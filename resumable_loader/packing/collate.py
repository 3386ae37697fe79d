"""The outputs a training step consumes: one pack's tensors, and batches of packs in the layouts
FlashAttention varlen, HF's ``DataCollatorWithFlattening`` and padded models expect.

A pack is the concatenation of its pieces (a piece is a sample, or one part of a split one).
``labels`` are the samples' own labels (or their tokens) with the first token of every piece
set to -100: a causal model predicts token t+1 at token t, and the first token of a piece has
no context inside its piece. ``position_ids`` restart at 0 for every piece and ``cu_seqlens``
(int32) bounds the pieces, so attention stays inside each sample.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

IGNORE_INDEX = -100
_TOKENS = ("input_ids", "labels", "position_ids")
_PROVENANCE = ("sample_ids", "sample_positions", "sample_offsets")


class Piece(NamedTuple):
    """One sample's tokens in a pack, with where it came from."""

    sample_id: int
    position: int  # its position in the epoch's sample order (its key's)
    offset: int  # the first token's offset within the sample (0 unless split)
    input_ids: np.ndarray  # int64
    labels: np.ndarray | None  # int64, or None: the tokens are the labels
    images: list[Any]
    image_positions: list[int]  # each image's token index within the piece


def build_pack(pieces: Sequence[Piece]) -> dict[str, Any]:
    """One pack's tensors from its pieces, in order (built in numpy, handed over as tensors
    without a copy: a pack of 13 pieces costs ~30 us).

    Returns ``input_ids``, ``labels``, ``position_ids`` (int64, one per token), ``cu_seqlens``
    (int32, pieces + 1), ``max_seqlen``, the provenance ``sample_ids``, ``sample_positions``,
    ``sample_offsets`` (int64, one per piece), ``images`` (all the pieces' images, in order)
    and ``image_offsets`` (each image's token index in the pack).
    """
    count = len(pieces)
    sizes = np.fromiter((len(p.input_ids) for p in pieces), np.int64, count)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    input_ids = np.concatenate([np.empty(0, np.int64), *(p.input_ids for p in pieces)])
    if any(p.labels is not None for p in pieces):
        labels = np.concatenate(
            [
                np.empty(0, np.int64),
                *(p.input_ids if p.labels is None else p.labels for p in pieces),
            ]
        )
    else:
        labels = input_ids.copy()
    labels[starts[sizes > 0]] = IGNORE_INDEX
    position_ids = np.arange(len(input_ids), dtype=np.int64) - np.repeat(starts, sizes)
    cu_seqlens = np.zeros(count + 1, dtype=np.int32)
    cu_seqlens[1:] = ends
    images, image_offsets = [], []
    for piece, start in zip(pieces, starts.tolist(), strict=True):
        if piece.images:
            images.extend(piece.images)
            image_offsets.extend(start + at for at in piece.image_positions)
    provenance = np.array(
        [[p.sample_id for p in pieces], [p.position for p in pieces], [p.offset for p in pieces]],
        np.int64,
    ).reshape(3, count)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(position_ids),
        "cu_seqlens": torch.from_numpy(cu_seqlens),
        "max_seqlen": int(sizes.max(initial=0)),
        "sample_ids": torch.from_numpy(provenance[0]),
        "sample_positions": torch.from_numpy(provenance[1]),
        "sample_offsets": torch.from_numpy(provenance[2]),
        "images": images,
        "image_offsets": image_offsets,
    }


def collate_varlen(packs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch of packs as one flat row, for FlashAttention's varlen kernels.

    ``input_ids``, ``labels``, ``position_ids`` are [1, total tokens]; ``cu_seqlens`` (int32)
    bounds every piece of every pack, ``max_seqlen`` is the longest piece; ``pack_bounds``
    gives each pack's pieces (pack k: ``pack_bounds[k]:pack_bounds[k+1]``); provenance and
    images are concatenated, ``images`` stays a list per pack with ``image_offsets`` in the row.
    """
    sizes = np.fromiter((len(pack["input_ids"]) for pack in packs), np.int64, len(packs))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    cu = [np.zeros(1, np.int32)]
    cu += [
        pack["cu_seqlens"].numpy()[1:] + offset
        for pack, offset in zip(packs, offsets.tolist(), strict=False)
    ]
    pieces = np.fromiter((len(pack["sample_ids"]) for pack in packs), np.int64, len(packs))
    flat = {key: _cat(packs, key) for key in _TOKENS + _PROVENANCE}
    return {
        **{key: flat[key].unsqueeze(0) for key in _TOKENS},
        "cu_seqlens": torch.from_numpy(np.concatenate(cu).astype(np.int32, copy=False)),
        "max_seqlen": max((pack["max_seqlen"] for pack in packs), default=0),
        "pack_bounds": torch.from_numpy(np.concatenate([[0], np.cumsum(pieces)])),
        **{key: flat[key] for key in _PROVENANCE},
        "images": [pack["images"] for pack in packs],
        "image_offsets": [
            [at + offset for at in pack["image_offsets"]]
            for pack, offset in zip(packs, offsets.tolist(), strict=False)
        ],
    }


def collate_flattening(packs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`collate_varlen` under the names of HF's ``DataCollatorWithFlattening`` with
    ``return_flash_attn_kwargs=True``: ``input_ids``, ``labels``, ``position_ids`` [1, T],
    ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32), ``max_length_q``/``max_length_k``, which a
    transformers model passes to its flash-attention layers as they are."""
    flat = collate_varlen(packs)
    return {
        "input_ids": flat["input_ids"],
        "labels": flat["labels"],
        "position_ids": flat["position_ids"],
        "cu_seq_lens_q": flat["cu_seqlens"],
        "cu_seq_lens_k": flat["cu_seqlens"],
        "max_length_q": flat["max_seqlen"],
        "max_length_k": flat["max_seqlen"],
    }


def collate_padded(
    packs: Sequence[dict[str, Any]], *, length: int | None = None, pad_id: int = 0
) -> dict[str, Any]:
    """A batch of packs as rows padded to ``length`` (default: the longest pack): for models
    without varlen attention. ``attention_mask`` is 1 on real tokens; padding has label -100
    and position 0; the provenance is per row (lists of tensors)."""
    width = max((len(pack["input_ids"]) for pack in packs), default=0) if length is None else length
    rows = len(packs)
    out = {
        "input_ids": torch.full((rows, width), pad_id, dtype=torch.int64),
        "labels": torch.full((rows, width), IGNORE_INDEX, dtype=torch.int64),
        "position_ids": torch.zeros((rows, width), dtype=torch.int64),
        "attention_mask": torch.zeros((rows, width), dtype=torch.int64),
    }
    for row, pack in enumerate(packs):
        size = len(pack["input_ids"])
        for key in ("input_ids", "labels", "position_ids"):
            out[key][row, :size] = pack[key]
        out["attention_mask"][row, :size] = 1
    for key in ("cu_seqlens", "sample_ids", "sample_positions", "sample_offsets", "images"):
        out[key] = [pack[key] for pack in packs]
    return out


def collate_budget(pack: dict[str, Any], *, pad_id: int = 0) -> dict[str, Any]:
    """A token-budget batch (``strategy="pad"``: one item is one batch) as one row per sample,
    padded to the longest: ``input_ids``, ``labels`` (-100 on padding and on each row's first
    token, which a shifted causal loss never targets), ``attention_mask``; ``sample_ids``."""
    bounds = pack["cu_seqlens"].tolist()
    rows = [slice(a, b) for a, b in itertools.pairwise(bounds)]
    width = max((s.stop - s.start for s in rows), default=0)
    out = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.int64),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.int64),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.int64),
        "sample_ids": pack["sample_ids"],
        "sample_positions": pack["sample_positions"],
    }
    for row, span in enumerate(rows):
        size = span.stop - span.start
        out["input_ids"][row, :size] = pack["input_ids"][span]
        out["labels"][row, :size] = pack["labels"][span]
        out["attention_mask"][row, :size] = 1
    return out


def _cat(packs: Sequence[dict[str, Any]], key: str) -> torch.Tensor:
    """One key's tensors of all packs, joined in numpy (a tenth of torch.cat's cost here)."""
    parts = [np.empty(0, np.int64), *(pack[key].numpy() for pack in packs)]
    return torch.from_numpy(np.concatenate(parts))
