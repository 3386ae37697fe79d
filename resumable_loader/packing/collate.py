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

import torch

IGNORE_INDEX = -100


class Piece(NamedTuple):
    """One sample's tokens in a pack, with where it came from."""

    sample_id: int
    position: int  # its position in the epoch's sample order (its key's)
    offset: int  # the first token's offset within the sample (0 unless split)
    input_ids: torch.Tensor
    labels: torch.Tensor | None
    images: list[Any]
    image_positions: list[int]  # each image's token index within the piece


def build_pack(pieces: Sequence[Piece]) -> dict[str, Any]:
    """One pack's tensors from its pieces, in order.

    Returns ``input_ids``, ``labels``, ``position_ids`` (int64, one per token), ``cu_seqlens``
    (int32, pieces + 1), ``max_seqlen``, the provenance ``sample_ids``, ``sample_positions``,
    ``sample_offsets`` (int64, one per piece), ``images`` (all the pieces' images, in order)
    and ``image_offsets`` (each image's token index in the pack).
    """
    sizes = [len(piece.input_ids) for piece in pieces]
    cu_seqlens = torch.zeros(len(pieces) + 1, dtype=torch.int32)
    if pieces:
        torch.cumsum(torch.tensor(sizes, dtype=torch.int32), 0, out=cu_seqlens[1:])
    empty = torch.empty(0, dtype=torch.int64)
    input_ids = torch.cat([empty, *(piece.input_ids for piece in pieces)])
    labels = torch.cat(
        [empty, *(p.input_ids if p.labels is None else p.labels for p in pieces)]
    ).clone()
    starts = cu_seqlens[:-1].long()
    labels[starts[starts < len(labels)]] = IGNORE_INDEX
    position_ids = torch.cat([empty, *(torch.arange(size) for size in sizes)])
    images, image_offsets = [], []
    for piece, start in zip(pieces, starts.tolist(), strict=True):
        images.extend(piece.images)
        image_offsets.extend(start + at for at in piece.image_positions)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "cu_seqlens": cu_seqlens,
        "max_seqlen": max(sizes, default=0),
        "sample_ids": torch.tensor([p.sample_id for p in pieces], dtype=torch.int64),
        "sample_positions": torch.tensor([p.position for p in pieces], dtype=torch.int64),
        "sample_offsets": torch.tensor([p.offset for p in pieces], dtype=torch.int64),
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
    offsets = [0]
    for pack in packs:
        offsets.append(offsets[-1] + len(pack["input_ids"]))
    cu = [packs[0]["cu_seqlens"][:1]] if packs else [torch.zeros(1, dtype=torch.int32)]
    cu += [pack["cu_seqlens"][1:] + offset for pack, offset in zip(packs, offsets, strict=False)]
    pieces = [len(pack["sample_ids"]) for pack in packs]
    bounds = torch.zeros(len(packs) + 1, dtype=torch.int64)
    torch.cumsum(torch.tensor(pieces, dtype=torch.int64), 0, out=bounds[1:])
    return {
        **{key: _cat(packs, key).unsqueeze(0) for key in ("input_ids", "labels", "position_ids")},
        "cu_seqlens": torch.cat(cu),
        "max_seqlen": max((pack["max_seqlen"] for pack in packs), default=0),
        "pack_bounds": bounds,
        **{key: _cat(packs, key) for key in ("sample_ids", "sample_positions", "sample_offsets")},
        "images": [pack["images"] for pack in packs],
        "image_offsets": [
            [at + offset for at in pack["image_offsets"]]
            for pack, offset in zip(packs, offsets, strict=False)
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
    return torch.cat([pack[key] for pack in packs]) if packs else torch.empty(0, dtype=torch.int64)
