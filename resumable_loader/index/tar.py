"""Indexing WebDataset tar shards: which samples a shard holds and where their bytes are.

A sample is a run of consecutive regular members sharing a key: the member's path up to the
first dot of its basename, the rest being the extension, lowercased (WebDataset's
``base_plus_ext`` and ``group_by_keys``, whose regular expression is used unchanged, so odd
names split as WebDataset splits them: ``dir/.hidden.jpg`` is key ``dir/``, extension
``hidden.jpg``). Metadata members WebDataset skips (``__name__``) are skipped here too.

Why spans: the index keeps, per sample, only the byte span [start, start + length) of its
members (first header through the last member's data): two int64, 16 bytes a sample, and
nothing per member. Reading a sample is then one positioned read of that span, and the few
512-byte headers inside it give the member names and data offsets at read time (parsing them
costs microseconds next to the read), so keys and extensions never sit in memory. Per-member
arrays would cost ~3x the space for a sample of a few members and save no read.

Errors name the shard and the byte offset or the key. With ``on_error="skip"`` the offending
samples (and, after damage, the rest of the shard) are left out of the index and listed in
it, so every run and every resume sees the same samples.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator

import numpy as np

from resumable_loader.errors import ShardError
from resumable_loader.index.paths import is_url, open_shard, stat_shard
from resumable_loader.index.tar_headers import BLOCK, TarDamage, walk

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)\.([^/]*)$")  # WebDataset's base_plus_ext, verbatim
_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's skip_meta


def split_key(name: str) -> tuple[str, str] | None:
    """(key, lowercased extension) of a member name, or None if it has no extension."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def is_meta(name: str) -> bool:
    """Whether WebDataset skips this member as shard metadata (``__index__``, ``__x__/y``)."""
    return _META.match(name) is not None


@dataclasses.dataclass
class TarScan:
    """What indexing one shard found."""

    spans: np.ndarray  # (samples, 2) int64: start offset, length
    extensions: set[str]
    skipped: list[str]  # one message per skipped member, sample or damaged tail


@dataclasses.dataclass
class _Sample:
    key: str
    start: int
    end: int = 0
    extensions: set[str] = dataclasses.field(default_factory=set)
    bad: bool = False


def scan_tar(path: str, *, on_error: str = "raise") -> TarScan:
    """Index one tar shard; see the module docstring for the grouping rules.

    Args:
        path: a local path or fsspec URL.
        on_error: "raise" a :class:`ShardError` at the first problem, or "skip" the samples
            concerned (listed in the result; :meth:`ShardedIndex.build` logs them).
    """
    size, _ = stat_shard(path)
    spans: list[tuple[int, int]] = []
    extensions: set[str] = set()
    skipped: list[str] = []
    seen: set[str] = set()
    current: _Sample | None = None

    def problem(message: str) -> None:
        if on_error != "skip":
            raise ShardError(f"{path}: {message}")
        skipped.append(message)

    def close(sample: _Sample | None) -> None:
        if sample is not None and not sample.bad:
            spans.append((sample.start, sample.end - sample.start))
            extensions.update(sample.extensions)

    for offset, name, data_end in _members(path, size, problem):
        if name is None:  # damage: the sample in progress may continue past it
            if current is not None and not current.bad:
                problem(f"sample {current.key!r} at offset {current.start} dropped: incomplete")
            current = None
            break
        parts = split_key(name)
        if parts is None:
            problem(
                f"member {name!r} at offset {offset} has no extension, so it belongs to no "
                "sample; rename it key.ext or remove it"
            )
            continue
        key, extension = parts
        if current is None or key != current.key:
            close(current)
            current = _Sample(key, offset, bad=key in seen)
            seen.add(key)
            if current.bad:
                problem(
                    f"key {key!r} reappears at offset {offset} after other keys: WebDataset "
                    "groups only consecutive members; write each sample's members together"
                )
        if extension in current.extensions and not current.bad:
            current.bad = True
            problem(
                f"sample {key!r} has two {extension!r} members (offset {offset}); each "
                "extension may appear once per sample"
            )
        current.extensions.add(extension)
        current.end = data_end
    close(current)
    return TarScan(np.array(spans, dtype=np.int64).reshape(-1, 2), extensions, skipped)


def _members(
    path: str, size: int, problem: Callable[[str], None]
) -> Iterator[tuple[int, str | None, int]]:
    """(header offset, name, data end) of the sample members in order; name None after damage
    (which ``problem`` reported)."""
    with open_shard(path) as f:
        if is_url(path):

            def read(offset: int, count: int) -> bytes:
                f.seek(offset)
                return f.read(count)

        else:  # a positioned read skips the buffer refill a seek costs

            def read(offset: int, count: int) -> bytes:
                return os.pread(f.fileno(), count, offset)

        try:
            for member in walk(read, size, verify=True):
                if member.regular and not is_meta(member.name):
                    yield member.offset, member.name, member.offset_data + member.size
        except TarDamage as damage:
            problem(f"{damage}; the shard is damaged: re-create or re-copy it")
            yield size, None, size


def read_sample(data: bytes, *, path: str, start: int) -> dict[str, bytes | str]:
    """The WebDataset sample (``__key__`` and one payload per extension) in a span's bytes.

    Raises:
        ShardError: the bytes no longer parse as the sample indexed (the shard changed).
    """
    try:
        members = list(walk(lambda at, count: data[at : at + count], len(data), verify=False))
    except TarDamage as damage:
        raise ShardError(
            f"{path}: {damage} within the sample at offset {start}; the shard changed since "
            "it was indexed: rebuild the index"
        ) from None
    sample: dict[str, bytes | str] = {}
    for member in members:
        parts = None if is_meta(member.name) or not member.regular else split_key(member.name)
        if parts is not None:
            sample["__key__"], extension = parts
            sample[extension] = data[member.offset_data : member.offset_data + member.size]
    if "__key__" not in sample or len(data) < BLOCK:
        raise ShardError(
            f"{path}: no sample at offset {start}; the shard changed since it was indexed: "
            "rebuild the index"
        )
    return sample
