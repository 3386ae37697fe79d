"""Each sample's length for Packed, by sample id: from the argument, the lengths stored beside
the dataset's index, the dataset's own ``sample_lengths()``, or its items read once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from resumable_loader.errors import ConfigError
from resumable_loader.packing.lengths import sidecar_lengths

LengthsArgument = np.ndarray | Mapping[str, Any] | Callable[[Any], int] | None


def resolve_lengths(dataset: Dataset, lengths: LengthsArgument, field: str) -> np.ndarray:
    """Each sample's length by id (int32), from the argument, the dataset, or its items."""
    sources = getattr(dataset, "sources", None)
    names = getattr(dataset, "names", None)
    if isinstance(lengths, Mapping):
        if names is None:
            raise ConfigError("lengths as a mapping of source names needs a Mixture dataset")
        missing = [name for name in names if name not in lengths]
        if missing:
            raise ConfigError(f"lengths has no entry for the Mixture sources {missing}")
        values = np.concatenate(
            [
                _integers(f"lengths[{name!r}]", lengths[name], len(source.dataset))
                for name, source in zip(names, sources, strict=True)
            ]
        )
    elif lengths is None and sources is not None and names is not None:  # a Mixture
        values = np.concatenate([_own_lengths(s.dataset, field) for s in sources])
    elif lengths is None:
        values = _own_lengths(dataset, field)
    elif callable(lengths):  # a float returned is refused, not truncated
        values = np.asarray([lengths(dataset[i]) for i in range(len(dataset))])
        values = _integers("the lengths= function's values", values, len(values))
    else:
        values = np.asarray(lengths)
        if values.dtype.kind not in "iu":
            raise ConfigError(f"lengths must be integers, got an array of {values.dtype}")
    expected = sum(len(s.dataset) for s in sources) if sources is not None else len(dataset)
    if values.ndim != 1 or len(values) != expected:
        raise ConfigError(
            f"lengths must hold one length per sample id ({expected}), got shape {values.shape}"
        )
    if len(values) and not 0 <= values.min() <= values.max() < 2**31:
        raise ConfigError(
            f"lengths must be in [0, 2**31), got {int(values.min())}..{int(values.max())}"
        )
    return values.astype(np.int32, copy=False)  # half the memory (and gathers) of int64


def _integers(what: str, given: Any, expected: int) -> np.ndarray:
    """``given`` as a 1-D integer array of ``expected`` values (ConfigError naming ``what``)."""
    values = np.asarray(given)
    if values.ndim != 1 or len(values) != expected:
        raise ConfigError(
            f"{what} must hold one length per sample ({expected}), got shape {values.shape}"
        )
    if values.dtype.kind not in "iu" and len(values):
        raise ConfigError(f"{what} must be integers, got {values.dtype} values")
    return values.astype(np.int64, copy=False)


def _own_lengths(dataset: Dataset, field: str) -> np.ndarray:
    """The lengths stored beside the dataset's index (``resumable-loader index --length``),
    else its ``sample_lengths()``, else every item's length, read once."""
    stored = sidecar_lengths(dataset)
    if stored is not None:
        return stored
    own = getattr(dataset, "sample_lengths", None)
    if callable(own):
        return np.asarray(own())
    return np.fromiter(
        (len(tokens_of(item, field)) for item in _items(dataset)),
        np.int64,
    )


def tokens_of(item: Any, field: str) -> Any:
    """A sample's tokens: ``item[field]`` of a mapping, else the item itself; a mapping without
    ``field`` is a ConfigError naming the keys it has."""
    if not isinstance(item, Mapping):
        return item
    try:
        return item[field]
    except KeyError:
        raise ConfigError(
            f"Packed(field={field!r}): a sample has no {field!r} (it has "
            f"{sorted(map(str, item))}); pass field= the key that holds its token ids"
        ) from None


def _items(dataset: Dataset) -> Any:
    return (dataset[i] for i in range(len(dataset)))
