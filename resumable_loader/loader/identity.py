"""Dataset identity: a string the cursor records, so a state is refused by another dataset.

A saved state says where a stream was in a particular dataset; loading it into another
dataset of the same length would resume at the right position in the wrong samples, silently.
The loader therefore records :func:`dataset_fingerprint` in its cursor and compares it on load.

Where the identity comes from, first match wins:

- a ``fingerprint`` str attribute: ours (TarShardDataset, ParquetDataset: the shard index's
  fingerprint; TokenDataset; Mixture, whose sources' identities are checked by its own
  resume state instead) and any dataset of yours that sets one;
- torch's ``Subset`` (its indices as int64, hashed: a list, range, array or tensor of the same
  values give the same identity; and the inner dataset's identity),
  ``ConcatDataset`` (each part's), ``StackDataset`` (each part's, with its key);
- torch's ``TensorDataset``: each tensor's shape and dtype and a hash of a bounded sample of
  its values (``TENSOR_SAMPLE`` evenly spaced elements, both ends included; a small tensor is
  hashed whole). Hashing every byte of a large tensor at every ``state_dict()`` would cost
  more than the step it saves, so a change to elements between the sampled ones is not seen;
- a Hugging Face ``datasets.Dataset``: its ``_fingerprint``, which ``datasets`` derives from
  the data files and every transform applied (found by duck typing: ``datasets`` is never
  imported here);
- otherwise none: ``""``, with a warning on the ``resumable_loader`` logger, once per type,
  saying how to give the dataset one. Parts without identity inside a Subset, ConcatDataset or
  StackDataset stand in as their type and length (and are warned about), so the composite's
  own structure (indices, part lengths) still counts.

Composite identities are ``"<Type>-<16 hex digits>"``: a BLAKE2b digest of the parts'
identities and lengths, short enough for every cursor.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, StackDataset, Subset, TensorDataset

logger = logging.getLogger("resumable_loader")

TENSOR_SAMPLE = 4096  # elements of each tensor hashed into a TensorDataset's identity
_warned: set[str] = set()  # types warned about in this process
# Digests too slow to take at every state_dict() (a million Subset indices: ~50 ms; a large
# TensorDataset: ~1 ms), per dataset, with what they were taken from: the same objects (held,
# compared by identity) with the same lengths and torch version counters.
_digests: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], tuple[int, ...], str]] = (
    weakref.WeakKeyDictionary()
)


def dataset_fingerprint(dataset: Any) -> str:
    """The identity of ``dataset`` (see the module docstring), or ``""`` if it has none.

    A dataset without one is logged once per type (``resumable_loader`` logger, WARNING), since
    a saved state is then checked against it by length alone.
    """
    identity = _identity(dataset)
    return "" if identity is None else identity


def _identity(dataset: Any) -> str | None:
    """The identity of ``dataset``; None (after a warning) if it has none."""
    own = getattr(dataset, "fingerprint", None)
    if isinstance(own, str) and own:
        return own
    if isinstance(dataset, Subset):
        indices = dataset.indices
        numbers = (len(indices), getattr(indices, "_version", 0))  # a tensor counts its edits
        digest = _cached(dataset, (indices,), numbers, lambda: _indices(indices))
        return _digest("Subset", _part(dataset.dataset), digest)
    if isinstance(dataset, ConcatDataset):
        return _digest("ConcatDataset", *(_part(part) for part in dataset.datasets))
    if isinstance(dataset, StackDataset):
        parts = dataset.datasets
        items = parts.items() if isinstance(parts, dict) else enumerate(parts)
        return _digest("StackDataset", *(f"{key!r}={_part(part)}" for key, part in items))
    if isinstance(dataset, TensorDataset):
        tensors = tuple(dataset.tensors)
        return _cached(
            dataset,
            tensors,
            tuple(tensor._version for tensor in tensors),
            lambda: _digest("TensorDataset", *(_tensor(tensor) for tensor in tensors)),
        )
    hf = getattr(dataset, "_fingerprint", None)  # a Hugging Face datasets.Dataset
    if isinstance(hf, str) and hf and type(dataset).__module__.startswith("datasets."):
        return f"datasets.Dataset-{hf}"
    _warn_once(dataset)
    return None


def _part(dataset: Any) -> str:
    """A part's identity and length; a part without identity stands in as its type."""
    identity = _identity(dataset)
    return f"{identity or type(dataset).__qualname__}[{_length(dataset)}]"


def _cached(
    dataset: Any, objects: tuple[Any, ...], numbers: tuple[int, ...], compute: Callable[[], str]
) -> str:
    """``compute()``, or what it gave for ``dataset`` while ``objects`` were the same objects
    and ``numbers`` the same."""
    hit = _digests.get(dataset)
    if hit is not None and hit[1] == numbers and all(map(operator.is_, hit[0], objects)):
        return hit[2]
    value = compute()
    _digests[dataset] = (objects, numbers, value)
    return value


def _indices(indices: Any) -> str:
    """A digest of Subset indices as int64: a list, range, array or tensor of the same values
    gives the same digest."""
    if isinstance(indices, range):
        array = np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
    elif isinstance(indices, torch.Tensor):
        array = indices.detach().cpu().numpy().astype(np.int64)
    else:
        array = np.asarray(indices, dtype=np.int64)
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def _tensor(tensor: torch.Tensor) -> str:
    """Shape, dtype and a hash of up to TENSOR_SAMPLE evenly spaced elements of ``tensor``."""
    count = tensor.numel()
    if count:
        taken = min(count, TENSOR_SAMPLE)  # int64 steps: float ones round past the end
        positions = torch.arange(taken, dtype=torch.int64) * (count - 1) // max(taken - 1, 1)
        sample = torch.take(tensor.detach(), positions.to(tensor.device)).cpu()
        values = sample.contiguous().view(torch.uint8).numpy().tobytes()
    else:
        values = b""
    digest = hashlib.blake2b(values, digest_size=16).hexdigest()
    return f"{tuple(tensor.shape)}:{tensor.dtype}:{digest}"


def _digest(kind: str, *parts: str) -> str:
    text = "\0".join(parts).encode("utf-8", "surrogateescape")
    return f"{kind}-{hashlib.blake2b(text, digest_size=8).hexdigest()}"


def _length(dataset: Any) -> int | str:
    try:
        return len(dataset)
    except TypeError:  # a part without __len__: its length cannot count
        return "?"


def _warn_once(dataset: Any) -> None:
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    if name in _warned:
        return
    _warned.add(name)
    logger.warning(
        "%s has no identity, so a saved loader state is checked against it by length alone: "
        "a state from another dataset of the same length would load and resume in the wrong "
        "samples. Give it one: a `fingerprint` str attribute that changes when its samples do "
        "(e.g. a hash of its file names, sizes and settings)",
        name,
    )
