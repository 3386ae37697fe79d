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
from collections.abc import Callable, Collection, Iterator

import numpy as np

from resumable_loader.errors import ShardError
from resumable_loader.index.paths import is_url, open_shard, stat_shard
from resumable_loader.index.tar_headers import TarDamage, walk

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)\.([^/]*)$")  # WebDataset's base_plus_ext, verbatim
_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's skip_meta


def split_key(name: str) -> tuple[str, str] | None:
    """(key, lowercased extension) of a member name, or None if it has no extension."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def is_meta(name: str) -> bool:
    """Whether WebDataset skips this member as shard metadata (``__index__``, ``__x__/y``)."""
    return name.startswith("__") and _META.match(name) is not None


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
            for member in walk(read, size, archive=True):
                if member.regular and not is_meta(member.name):
                    yield member.offset, member.name, member.offset_data + member.size
        except TarDamage as damage:
            problem(f"{damage}; the shard is damaged: re-create or re-copy it")
            yield size, None, size


def read_sample(
    data: bytes, *, path: str, start: int, extensions: Collection[str]
) -> dict[str, bytes | str]:
    """The WebDataset sample (``__key__`` and one payload per extension) in a span's bytes.

    The span's headers are checked as they are parsed, in the same read as the data, so
    damage since indexing that a stat cannot see (same size and mtime) raises instead of
    renaming or merging samples: every header's checksum (a flipped bit in a name), and that
    the members still form the sample the index recorded (a header rewritten with a valid
    checksum): the first starts the span and the last ends it, one key for all, each
    extension once and among the ``extensions`` the index found.

    Args:
        data: the span's bytes, ``start`` being their offset in the shard ``path``.
        extensions: the extensions the index found in the shards (``ShardedIndex.fields``).

    Raises:
        ShardError: the bytes no longer parse as the sample indexed (the shard changed).
    """

    def read(offset: int, count: int) -> bytes:
        return data[offset - start : offset - start + count]

    sample: dict[str, bytes | str] = {}
    offsets: dict[str, int] = {}  # each extension's member so far
    key, end = None, start
    try:
        for member in walk(read, start + len(data), start=start, archive=False):
            parts = None if is_meta(member.name) or not member.regular else split_key(member.name)
            if parts is None:
                continue  # skipped at index time too (a directory, metadata, a bare name)
            if key is None:
                key = sample["__key__"] = parts[0]
                if member.offset != start:
                    raise _changed(
                        path, start, f"starts with member {member.name!r} at offset {member.offset}"
                    )
            elif parts[0] != key:
                raise _changed(
                    path,
                    start,
                    f"should hold one key: expected {key!r} (its first member's), found "
                    f"{member.name!r} at offset {member.offset}",
                )
            extension = parts[1]
            if extension in offsets:
                raise _changed(
                    path,
                    start,
                    f"has two {extension!r} members, at offsets {offsets[extension]} and "
                    f"{member.offset} ({member.name!r})",
                )
            if extension not in extensions:
                raise _changed(
                    path,
                    start,
                    f"has member {member.name!r} at offset {member.offset}: extension "
                    f"{extension!r} is not among the indexed {sorted(extensions)}",
                )
            offsets[extension] = member.offset
            end = member.offset_data + member.size
            sample[extension] = read(member.offset_data, member.size)
    except TarDamage as damage:
        raise _changed(path, start, f"is damaged: {damage}") from None
    if end != start + len(data):
        raise _changed(
            path,
            start,
            f"should end at offset {start + len(data)}, as indexed; its members end at {end}"
            + ("" if key else " (no sample member)"),
        )
    return sample


def _changed(path: str, start: int, problem: str) -> ShardError:
    """The error for a sample span that no longer holds the sample indexed there."""
    return ShardError(
        f"{path}: the sample at offset {start} {problem}; the shard changed since it was "
        "indexed: rebuild the index"
    )
