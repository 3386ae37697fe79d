"""Sample lengths stored beside a shard index, so a packed run never reads every sample first.

``resumable-loader index SHARDS --length SPEC`` reads each sample once and writes
``<index>.lengths.npz``: the lengths (int32, by sample id), the index's fingerprint and the
digests of the index build they were read with, so lengths of other shards, or of these
shards before they were rewritten and indexed again, are refused. They sit beside the index
instead of in it because the index records are the readers' format; the side file leaves that
format alone.

SPEC names where a sample's length is: ``FIELD`` (a tar member's extension or a Parquet
column) or ``FIELD:KEY`` (a key of a JSON member or of a struct column). A ``.npy`` member
counts its first axis, a JSON value or a column its ``len()``, a text member its
whitespace-separated words.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from resumable_loader.errors import ConfigError
from resumable_loader.index.atomic import atomic_write

SUFFIX = ".lengths.npz"


def sidecar_path(index_path: str | os.PathLike) -> str:
    """Where the lengths of the index at ``index_path`` are kept."""
    return os.fspath(index_path) + SUFFIX


def length_reader(spec: str) -> Callable[[Any, Callable[[], str]], int]:
    """The function giving a (raw, undecoded) sample's length under ``spec``; its second
    argument names the sample, for its errors."""
    field, _, key = spec.partition(":")
    if not field:
        raise ConfigError(f"--length {spec!r}: name a field (a member extension or a column)")

    def length(sample: Any, named: Callable[[], str]) -> int:
        if field not in sample:
            name = named()
            raise ConfigError(
                f"--length {spec!r}: {name} has no {field!r} (it has {sorted(sample)})"
            )
        value = _decoded(field, sample[field])
        if key:
            if not isinstance(value, Mapping) or key not in value:
                name = named()
                raise ConfigError(
                    f"--length {spec!r}: the {field!r} of {name} {_has(value)}, no key {key!r}; "
                    "FIELD:KEY reads a key of a JSON member or of a struct column"
                )
            value = value[key]
        if not hasattr(value, "__len__"):
            name = named()
            raise ConfigError(
                f"--length {spec!r}: the value of {name} is {type(value).__name__} {value!r}, "
                "which has no length"
            )
        return len(value)

    return length


def write_lengths(dataset: Any, spec: str) -> np.ndarray:
    """Read every sample of an indexed ``dataset`` once; write and return their lengths.

    Lengths stored before (of another field, say) are removed first: if a sample is refused,
    none are left that ``Packed`` would take for these.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sidecar_path(dataset.index.path))
    length = length_reader(spec)
    lengths = np.empty(len(dataset), np.int64)
    for sample_id in range(len(dataset)):
        sample = dataset[sample_id]
        lengths[sample_id] = length(
            sample, functools.partial(_sample_name, dataset, sample_id, sample)
        )
    if len(lengths) and lengths.max() >= 2**31:
        raise ConfigError(f"--length {spec!r}: a sample has {int(lengths.max())} >= 2**31")
    with atomic_write(sidecar_path(dataset.index.path)) as f:
        np.savez(
            f,
            lengths=lengths.astype(np.int32),
            fingerprint=np.str_(dataset.fingerprint),
            build=np.str_(_build_of(dataset.index)),
        )
    return lengths


def sidecar_lengths(dataset: Any) -> np.ndarray | None:
    """The lengths stored beside ``dataset``'s index, or None if it has none.

    Raises:
        ConfigError: they were written for another index (rebuilt since, or other shards).
    """
    index = getattr(dataset, "index", None)
    path = getattr(index, "path", None)
    if path is None or not os.path.exists(sidecar_path(path)):
        return None
    with np.load(sidecar_path(path)) as stored:
        lengths, fingerprint = stored["lengths"], str(stored["fingerprint"])
        build = str(stored["build"]) if "build" in stored else ""
    if build and build != _build_of(index):
        raise ConfigError(
            f"{sidecar_path(path)}: written for an earlier build of {path} (the index was "
            "rebuilt since: its shards changed, even if their names, sizes and counts did not); "
            f"write them again with resumable-loader index ... --out {path} --length SPEC"
        )
    if fingerprint != dataset.fingerprint or len(lengths) != len(dataset):
        raise ConfigError(
            f"{sidecar_path(path)}: written for index {fingerprint} ({len(lengths)} samples), "
            f"but the index is now {dataset.fingerprint} ({len(dataset)} samples); rebuild it "
            f"with resumable-loader index ... --out {path} --length SPEC"
        )
    return lengths


def _build_of(index: Any) -> str:
    """What tells one build of an index from another (its digests: of the header, with each
    shard's mtime or ETag, and of the records, with each member's CRC32C; "" for a version 3
    index, which has none: then the fingerprint alone decides)."""
    digests = index.header.get("digests")
    return json.dumps(digests, sort_keys=True) if digests else ""


def _sample_name(dataset: Any, sample_id: int, sample: Any) -> str:
    """How an error names sample ``sample_id``: its key (a tar sample's; a Parquet row has
    none: its id), its shard and its place there."""
    shard, row = dataset.index.locate(sample_id)
    key = sample.get("__key__") if isinstance(sample, Mapping) else None
    name = f"sample {sample_id}" if key is None else f"sample {key!r}"
    return f"{name} ({dataset.index.shard_urls[shard]}, sample {row} of the shard)"


def _has(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"has the keys {sorted(value)[:10]}"
    return f"is a {type(value).__name__}"


def _decoded(field: str, value: Any) -> Any:
    """A tar member's bytes as what its extension says; any other value as it is."""
    if not isinstance(value, bytes):
        return value
    extension = field.rsplit(".", 1)[-1]
    if extension == "npy":
        return np.load(io.BytesIO(value), allow_pickle=False)
    if extension == "json":
        return json.loads(value)
    return value.split()
