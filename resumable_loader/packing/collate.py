"""Batches of packs in the layouts FlashAttention varlen, HF's ``DataCollatorWithFlattening`` and
padded models expect (a pack's own tensors: :mod:`~resumable_loader.packing.batch`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from resumable_loader.packing.batch import IGNORE_INDEX, whole_batch

_TOKENS = ("input_ids", "labels", "position_ids")
_PROVENANCE = ("sample_ids", "sample_positions", "sample_offsets")


def collate_varlen(packs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch of packs as one flat row, for FlashAttention's varlen kernels.

    ``input_ids``, ``labels``, ``position_ids`` are [1, total tokens]; ``cu_seqlens`` (int32)
    bounds every piece of every pack, ``max_seqlen`` is the longest piece; ``pack_bounds``
    gives each pack's pieces (pack k: ``pack_bounds[k]:pack_bounds[k+1]``); provenance and
    images are concatenated, ``images`` stays a list per pack with ``image_offsets`` in the row.
    The packs of one read (``Packed``'s items, as the loader hands them over) are already one
    row: their arrays are passed on without a copy.
    """
    batch = whole_batch(packs)
    if batch is not None:
        return {
            **dict(zip(_TOKENS, batch.rows(), strict=True)),
            "cu_seqlens": batch.cu_seqlens,
            "max_seqlen": batch.max_seqlen(),
            "pack_bounds": batch.pack_bounds,
            **dict(zip(_PROVENANCE, batch.provenance(), strict=True)),
            "images": batch.images,
            "image_offsets": batch.row_image_offsets(),
        }
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
