"""collate_windows: a batch of token windows in one shared-memory buffer, not one per field.

A worker hands every tensor of a batch to the training process as a shared-memory segment of
its own (created, sent as a file descriptor, mapped). With the four outputs of a TokenDataset
that is four segments a batch, and on the 2-core machine those, not reading tokens, bound the
loader (bench_tokens). This collate function gives the same batch as torch's default_collate
(the same keys, values, dtypes and shapes) with every tensor a view of one buffer, so a batch
is one segment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

ALIGN = 8  # bytes: each field starts where any dtype's view may begin


def collate_windows(samples: Sequence[Any]) -> Any:
    """Stack a list of TokenDataset items (dicts of equal-shaped tensors) into one buffer.

    Fields that are not tensors, and samples that are not dicts, are collated by torch's
    default_collate, so a wrapper dataset that adds ids to the items can use it too.
    """
    first = samples[0]
    if not isinstance(first, Mapping):
        return default_collate(samples)
    layout: dict[str, tuple[int, int]] = {}
    size = 0
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            nbytes = len(samples) * value.numel() * value.element_size()
            layout[key] = (size, nbytes)
            size += -(-nbytes // ALIGN) * ALIGN
    buffer = torch.empty(size, dtype=torch.uint8)
    if get_worker_info() is not None:  # a worker: allocate where the main process can map it
        buffer = buffer.share_memory_()
    batch = {}
    for key, value in first.items():
        if key not in layout:
            batch[key] = default_collate([sample[key] for sample in samples])
            continue
        start, nbytes = layout[key]
        out = buffer[start : start + nbytes].view(value.dtype).view(len(samples), *value.shape)
        batch[key] = torch.stack([sample[key] for sample in samples], out=out)
    return batch
