"""Indexing WebDataset tar shards: which samples a shard holds and where their members are.

A sample is a run of consecutive regular members sharing a key: the member's path up to the
first dot of its basename, the rest being the extension, lowercased (WebDataset's
``base_plus_ext`` and ``group_by_keys``, whose regular expression is used unchanged, so odd
names split as WebDataset splits them: ``dir/.hidden.jpg`` is key ``dir/``, extension
``hidden.jpg``). Metadata members WebDataset skips (``__name__``) are skipped here too.

Why records: reading a sample must not parse tar headers (that was most of a sample read's
cost), so the index keeps one fixed-width row per sample (:data:`RECORD` columns): its shard,
the byte span [start, start + length) of its members (first header through the last member's
data), where its key's bytes lie in the span, and per extension of the shard set the member's
payload offset in the span (0: no such member) and size. A read is one slice or ``pread`` of
the span, and the members are cut out of it by these offsets. The row's integers are uint32
when every shard is under 4 GiB, else int64: ``4 * (5 + 2 * extensions)`` bytes a sample (36
for two extensions), and a CRC32C per member (4 bytes) for the full check
(:func:`check_sample`).

Errors name the shard and the byte offset or the key. With ``on_error="skip"`` the offending
samples (and, after damage, the rest of the shard) are left out of the index and listed in
it, so every run and every resume sees the same samples.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import google_crc32c
import numpy as np

from resumable_loader.errors import RESTORE_OR_REINDEX, ShardError
from resumable_loader.index.paths import StorageOptions, is_url, open_shard, stat_shard
from resumable_loader.index.tar_headers import Member, TarDamage, walk

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)\.([^/]*)$")  # WebDataset's base_plus_ext, verbatim
_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's skip_meta


def split_key(name: str) -> tuple[str, str] | None:
    """(key, lowercased extension) of a member name, or None if it has no extension."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def is_meta(name: str) -> bool:
    """Whether WebDataset skips this member as shard metadata (``__index__``, ``__x__/y``)."""
    return name.startswith("__") and _META.match(name) is not None


# Columns of a sample's record; then per extension (in ``ShardedIndex.fields`` order) the
# member's payload offset in the span (0 if the sample has none) and its size.
SHARD, START, LENGTH, KEY_AT, KEY_LENGTH = range(5)
RECORD = 5
MAGIC = b"ustar"  # at byte 257 of a POSIX or GNU header; old v7 headers have none
MAGIC_AT = 257


@dataclasses.dataclass
class TarScan:
    """What indexing one shard found."""

    spans: np.ndarray  # (samples, 2) int64: start offset, length
    keys: np.ndarray  # (samples, 2) int64: the key's offset in the span, length (0: not whole)
    members: np.ndarray  # (members, 4) int64: sample, extension number, payload offset, size
    checksums: np.ndarray  # (members,) uint32: CRC32C of each member's payload
    extensions: list[str]  # what members' extension numbers name
    skipped: list[str]  # one message per skipped member, sample or damaged tail
    magic: bool  # every sample's first header has the ustar magic


@dataclasses.dataclass
class _Sample:
    key: str
    start: int
    key_at: tuple[int, int] = (0, 0)
    end: int = 0
    members: list[tuple[str, int, int, int]] = dataclasses.field(default_factory=list)
    bad: bool = False


def scan_tar(
    path: str, *, on_error: str = "raise", storage_options: StorageOptions = None
) -> TarScan:
    """Index one tar shard; see the module docstring for the grouping rules.

    Reads every member's payload once, for its CRC32C.

    Args:
        path: a local path or fsspec URL.
        on_error: "raise" a :class:`ShardError` at the first problem, or "skip" the samples
            concerned (listed in the result; :meth:`ShardedIndex.build` logs them).
        storage_options: a remote shard's endpoint, credentials and retry knobs.
    """
    size, _ = stat_shard(path, storage_options)
    spans: list[tuple[int, int]] = []
    keys: list[tuple[int, int]] = []
    members: list[tuple[int, int, int, int]] = []
    checksums: list[int] = []
    numbers: dict[str, int] = {}
    skipped: list[str] = []
    seen: set[str] = set()
    magic = True
    current: _Sample | None = None

    def problem(message: str) -> None:
        if on_error != "skip":
            raise ShardError(f"{path}: {message}")
        skipped.append(message)

    def close(sample: _Sample | None) -> None:
        if sample is None or sample.bad:
            return
        for extension, offset, length, checksum in sample.members:
            number = numbers.setdefault(extension, len(numbers))
            members.append((len(spans), number, offset - sample.start, length))
            checksums.append(checksum)
        spans.append((sample.start, sample.end - sample.start))
        keys.append(sample.key_at)

    for member, headers, checksum in _members(path, size, problem, storage_options):
        if member is None:  # damage: the sample in progress may continue past it
            if current is not None and not current.bad:
                problem(f"sample {current.key!r} at offset {current.start} dropped: incomplete")
            current = None
            break
        name, offset = member.name, member.offset
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
            current = _Sample(key, offset, _key_place(key, headers), bad=key in seen)
            magic = magic and headers[MAGIC_AT : MAGIC_AT + len(MAGIC)] == MAGIC
            seen.add(key)
            if current.bad:
                problem(
                    f"key {key!r} reappears at offset {offset} after other keys: WebDataset "
                    "groups only consecutive members; write each sample's members together"
                )
        if any(extension == e for e, *_ in current.members) and not current.bad:
            current.bad = True
            problem(
                f"sample {key!r} has two {extension!r} members (offset {offset}); each "
                "extension may appear once per sample"
            )
        current.members.append((extension, member.offset_data, member.size, checksum))
        current.end = member.offset_data + member.size
    close(current)
    return TarScan(
        np.array(spans, dtype=np.int64).reshape(-1, 2),
        np.array(keys, dtype=np.int64).reshape(-1, 2),
        np.array(members, dtype=np.int64).reshape(-1, 4),
        np.array(checksums, dtype=np.uint32),
        list(numbers),
        skipped,
        magic,
    )


def _key_place(key: str, headers: bytes) -> tuple[int, int]:
    """Where the key's bytes first appear in its first member's headers (offset from the
    span's start, length), so a read takes the key from the span without parsing a header;
    (0, 0) when they are not there in one piece (a ustar prefix splits the path)."""
    raw = key.encode("utf-8", "surrogateescape")
    at = headers.find(raw)
    return (at, len(raw)) if at >= 0 else (0, 0)


def _members(
    path: str, size: int, problem: Callable[[str], None], storage_options: StorageOptions
) -> Iterator[tuple[Member | None, bytes, int]]:
    """(member, its header bytes, CRC32C of its payload) of the sample members in order;
    member None after damage (which ``problem`` reported)."""
    with open_shard(path, storage_options) as f:
        if is_url(path):

            def read(offset: int, count: int) -> bytes:
                f.seek(offset)
                return f.read(count)

        else:  # a positioned read skips the buffer refill a seek costs

            def read(offset: int, count: int) -> bytes:
                return os.pread(f.fileno(), count, offset)

        try:
            for member in walk(read, size, archive=True):
                if member.regular and not is_meta(member.name):  # one read: headers, data
                    whole = read(member.offset, member.offset_data + member.size - member.offset)
                    head = member.offset_data - member.offset
                    yield member, whole[:head], google_crc32c.value(whole[head:])
        except TarDamage as damage:
            problem(f"{damage}; the shard is damaged: re-create or re-copy it")
            yield None, b"", 0


def records(scans: Sequence[TarScan], fields: Sequence[str]) -> dict[str, np.ndarray]:
    """The index arrays of a tar shard set: ``records`` (a row per sample, see the module
    docstring) and ``checksums`` ((samples, fields) uint32 CRC32C, 0 where no member)."""
    total = sum(len(scan.spans) for scan in scans)
    widest = max(
        (int(scan.spans[:, 0].max() + scan.spans[:, 1].max()) for scan in scans if len(scan.spans)),
        default=0,
    )
    dtype = np.uint32 if widest < 2**32 and len(scans) < 2**32 else np.int64
    table = np.zeros((total, RECORD + 2 * len(fields)), dtype)
    checksums = np.zeros((total, len(fields)), np.uint32)
    column = {field: i for i, field in enumerate(fields)}
    first = 0
    for shard, scan in enumerate(scans):
        rows = slice(first, first + len(scan.spans))
        table[rows, SHARD] = shard
        table[rows, START : LENGTH + 1] = scan.spans
        table[rows, KEY_AT : KEY_LENGTH + 1] = scan.keys
        if len(scan.members):
            numbers = np.array([column[e] for e in scan.extensions])[scan.members[:, 1]]
            samples = first + scan.members[:, 0]
            table[samples, RECORD + 2 * numbers] = scan.members[:, 2]
            table[samples, RECORD + 2 * numbers + 1] = scan.members[:, 3]
            checksums[samples, numbers] = scan.checksums
        first += len(scan.spans)
    return {"records": table, "checksums": checksums}


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


def check_sample(
    sample: dict[str, Any],
    data: bytes,
    checksums: Sequence[int],
    *,
    path: str,
    start: int,
    fields: Sequence[str],
) -> None:
    """The full check of a sample cut from its span by its record: the span's headers, parsed
    and checked (:func:`read_sample`), give the same key and members, and each member's
    payload has the CRC32C recorded at index time (``checksums``, in ``fields`` order).

    Raises:
        ShardError: the span no longer holds the sample indexed (the shard changed).
    """
    parsed = read_sample(data, path=path, start=start, extensions=frozenset(fields))
    for name in ("__key__", *fields):
        if parsed.get(name) != sample.get(name):
            raise _changed(
                path,
                start,
                f"has {name} {_shown(parsed.get(name))} in its tar headers, the index records "
                f"{_shown(sample.get(name))}",
            )
    for field, recorded in zip(fields, checksums, strict=True):
        payload = sample.get(field)
        if payload is not None and google_crc32c.value(payload) != recorded:
            raise _changed(
                path,
                start,
                f"has a {field!r} member whose CRC32C is {google_crc32c.value(payload):#010x}, "
                f"{recorded:#010x} when indexed (its bytes changed)",
            )


def _shown(value: bytes | str | None) -> str:
    """A member or key for a message: the key itself, a payload by its size."""
    if value is None:
        return "none"
    return repr(value) if isinstance(value, str) else f"{len(value)} bytes"


def _changed(path: str, start: int, problem: str) -> ShardError:
    """The error for a sample span that no longer holds the sample indexed there."""
    return ShardError(
        f"{path}: the sample at offset {start} {problem}; the shard changed since it was "
        f"indexed: {RESTORE_OR_REINDEX}"
    )
