"""Splitting batches back into samples: a digest per output field of each sample.

``verify`` compares streams, not batches: a resumed run may use another batch size or world
size, so every delivered batch is split back into its samples and each sample is identified by
its (epoch, position) in the epoch's global stream. A batch of B samples splits by its shape:
mappings by key; a tensor or array whose dim 0 is B along dim 0 (batch-major); a list or tuple
of B elements one element per sample (``collate_fn=lambda b: b``, a list of strings), each
element digested as that sample; other lists and tuples field by field (``default_collate``
of tuple samples). Where a length equals B by chance (a pair of fields in a batch of 2,
time-major padding as long as the batch) the split follows a :func:`learn_layout` of the
pipeline's collate_fn. What remains (a per-batch count, a 0-d tensor, a tensor that is not
batch-major) belongs to no one sample: it is a batch-level field, digested once per batch and
comparable only with a batch of the same positions.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

WHOLE_SAMPLE = "<sample>"  # the field name of an output that is a single tensor or value


WHOLE_BATCH = "<batch>"  # the field name of a batch that is a single value no sample owns


_ARRAYS = (torch.Tensor, np.ndarray)


Split = Literal["rows", "samples", "fields", "batch"]


Layout = Mapping[str, Split]  # field path -> how it splits; see learn_layout()


def digest(value: Any) -> str:
    """A stable 64-bit hex digest of one leaf value; dtype and shape count, not just the bytes."""
    return hashlib.blake2b(_leaf_bytes(value), digest_size=8).hexdigest()


def _leaf_bytes(value: Any) -> bytes:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        head = f"tensor:{flat.dtype}:{tuple(value.shape)}:".encode()
        return head + flat.view(torch.uint8).numpy().tobytes()
    if isinstance(value, np.generic | np.ndarray):
        array = np.ascontiguousarray(value)
        head = f"ndarray:{array.dtype.str}:{array.shape}:".encode()
        # An object array's bytes are pointers: hash the objects instead.
        body = pickle.dumps(array.tolist()) if array.dtype.hasobject else array.tobytes()
        return head + body
    if isinstance(value, str):
        return b"str:" + value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return b"bytes:" + bytes(value)
    if isinstance(value, int | float | complex | bool | type(None)):
        return f"{type(value).__name__}:{value!r}".encode()
    return b"pickle:" + pickle.dumps(value, protocol=4)


def learn_layout(small: Any, large: Any, size: int) -> Layout:
    """How a collate_fn lays out its batches, from its outputs for ``size`` and ``size + 1``
    copies of one sample: per field path, "rows" (a batch-major tensor or array), "samples"
    (a sequence of one element per sample), "fields" (a sequence of fixed length) or "batch"
    (a value no sample owns). A path whose length varies otherwise is left out.
    """
    layout: dict[str, Split] = {}
    _learn(small, large, size, "", layout)
    return layout


def _learn(small: Any, large: Any, size: int, path: str, layout: dict[str, Split]) -> None:
    if isinstance(small, Mapping) and isinstance(large, Mapping):
        for key in small.keys() & large.keys():
            _learn(small[key], large[key], size, _key_path(path, key), layout)
    elif isinstance(small, _ARRAYS) and isinstance(large, _ARRAYS):
        grows = small.ndim and large.ndim and (len(small), len(large)) == (size, size + 1)
        layout[path] = "rows" if grows else "batch"
    elif isinstance(small, list | tuple) and isinstance(large, list | tuple):
        if (len(small), len(large)) == (size, size + 1):
            layout[path] = "samples"
        elif len(small) == len(large):
            layout[path] = "fields"
            for i, (one, other) in enumerate(zip(small, large, strict=True)):
                _learn(one, other, size, f"{path}[{i}]", layout)
    else:
        layout[path] = "batch"


def split_batch(
    output: Any, size: int | None, layout: Layout
) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Split a delivered batch into ``size`` samples' {field path: digest} dicts, and the
    {field path: digest} of its batch-level fields.

    Args:
        output: what the loader yielded (a collated batch, or one sample when ``size`` is None,
            i.e. torch's auto-batching is off).
        size: how many samples the batch holds.
        layout: the collate_fn's :func:`learn_layout`; it settles the paths whose length
            equals ``size`` by chance.
    """
    if size is None:
        return [_sample_fields(output, "")], {}
    samples: list[dict[str, str]] = [{} for _ in range(size)]
    shared: dict[str, str] = {}
    _split(output, size, "", layout, samples, shared)
    return samples, shared


def _split(
    value: Any,
    size: int,
    path: str,
    layout: Layout,
    samples: list[dict[str, str]],
    shared: dict[str, str],
) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _split(item, size, _key_path(path, key), layout, samples, shared)
        return
    how = _how(value, size, layout.get(path))
    if how == "rows":
        for fields, row in zip(samples, value, strict=True):
            fields[path or WHOLE_SAMPLE] = digest(row)
    elif how == "samples":
        for fields, item in zip(samples, value, strict=True):
            fields.update(_sample_fields(item, path))
    elif how == "fields":
        for i, item in enumerate(value):
            _split(item, size, f"{path}[{i}]", layout, samples, shared)
    else:
        shared[path or WHOLE_BATCH] = digest(value)


def _how(value: Any, size: int, learnt: Split | None) -> Split:
    """How ``value`` splits: by its own shape, unless the layout says a length is by chance."""
    if isinstance(value, _ARRAYS):
        batch_major = value.ndim > 0 and len(value) == size
        return "rows" if batch_major and learnt != "batch" else "batch"
    if isinstance(value, list | tuple):
        return "samples" if len(value) == size and learnt != "fields" else "fields"
    return "batch"


def _sample_fields(value: Any, path: str) -> dict[str, str]:
    """One sample's {field path: digest}: mappings by key, lists and tuples by index."""
    if isinstance(value, Mapping):
        items = [(_key_path(path, key), item) for key, item in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    else:
        return {path or WHOLE_SAMPLE: digest(value)}
    return {name: hashed for p, item in items for name, hashed in _sample_fields(item, p).items()}


def _key_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
