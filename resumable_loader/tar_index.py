"""Indexing WebDataset tar shards: which samples a shard holds and where their bytes are.

A sample is a run of consecutive regular members sharing a key: the member's path up to the
first dot of its basename, the rest being the extension, lowercased (WebDataset's grouping).
The index keeps, per sample, only the byte span [start, start + length) of its members (header
of the first through data of the last): 16 bytes a sample. Reading a sample is one positioned
read of that span; the few 512-byte headers inside it give the member names at read time, so
keys and extensions never have to be held in memory.

Errors name the shard and the byte offset or the key. With ``on_error="skip"`` the offending
samples (and, after a corrupt header, the rest of the shard) are left out of the index and
listed in it, so every run and every resume sees the same samples.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tarfile
from collections.abc import Iterator

import numpy as np

from resumable_loader.errors import ShardError
from resumable_loader.shards import is_url, stat_shard

logger = logging.getLogger("resumable_loader")

BLOCK = 512
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's base_plus_ext


def split_key(name: str) -> tuple[str, str] | None:
    """(key, lowercased extension) of a member name, or None if it has no extension."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


@dataclasses.dataclass
class TarScan:
    """What indexing one shard found."""

    spans: np.ndarray  # (samples, 2) int64: start offset, length
    extensions: set[str]
    skipped: list[str]


def open_shard(path: str):
    """A binary, seekable file object for a local path or an fsspec URL."""
    if is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def scan_tar(path: str, *, on_error: str = "raise") -> TarScan:
    """Index one tar shard; see the module docstring for the grouping rules."""
    size, _ = stat_shard(path)
    spans: list[tuple[int, int]] = []
    extensions: set[str] = set()
    skipped: list[str] = []
    seen: set[str] = set()
    current: dict | None = None

    def problem(message: str) -> None:
        if on_error != "skip":
            raise ShardError(f"{path}: {message}")
        logger.warning("skipping in %s: %s", path, message)
        skipped.append(message)

    def close(sample: dict | None) -> None:
        if sample is not None and not sample["bad"]:
            spans.append((sample["start"], sample["end"] - sample["start"]))
            extensions.update(sample["exts"])

    for member in _members(path, size, problem):
        if member is None:  # the rest of the shard is damaged: its last sample is incomplete
            current = None
            break
        parts = split_key(member.name)
        if parts is None:
            problem(
                f"member {member.name!r} at offset {member.offset} has no extension, so it "
                "belongs to no sample; rename it key.ext or remove it"
            )
            continue
        key, ext = parts
        if current is None or key != current["key"]:
            close(current)
            reappears = key in seen
            if reappears:
                problem(
                    f"key {key!r} reappears at offset {member.offset} after other keys: "
                    "WebDataset groups only consecutive members; write each sample's "
                    "members together"
                )
            seen.add(key)
            current = {"key": key, "start": member.offset, "exts": set(), "bad": reappears}
        if ext in current["exts"]:
            current["bad"] = True
            problem(
                f"sample {key!r} has two {ext!r} members (offset {member.offset}); each "
                "extension may appear once per sample"
            )
        current["exts"].add(ext)
        current["end"] = member.offset_data + member.size
    close(current)
    return TarScan(np.array(spans, dtype=np.int64).reshape(-1, 2), extensions, skipped)


def _members(path: str, size: int, problem) -> Iterator[Member | None]:
    """Regular members in order, then None if the shard turned out damaged (after ``problem``
    reported it, when skipping)."""
    with open_shard(path) as f:

        def read(offset: int, count: int) -> bytes:
            f.seek(offset)
            return f.read(count)

        try:
            for member in walk(read, size, verify=True):
                if member.regular:
                    yield member
        except _Damage as damage:
            problem(f"{damage}; the shard is damaged: re-create or re-copy it")
            yield None


@dataclasses.dataclass
class Member:
    """A tar member: where its headers start, its name, where its data is."""

    offset: int
    name: str
    regular: bool
    offset_data: int
    size: int


class _Damage(Exception):
    """A tar structure that cannot be read past (message names the offset)."""


def walk(read, size: int, *, verify: bool) -> Iterator[Member]:
    """Members of tar data of ``size`` bytes read through ``read(offset, count)``.

    Handles ustar prefixes, GNU long names and pax ``path`` records; stops at the end-of-archive
    zero block or the end of the data. With ``verify``, header checksums are checked.
    """
    position = chain_start = 0
    long_name = None
    while position < size:
        block = read(position, BLOCK)
        if len(block) < BLOCK:
            if block.strip(b"\0"):
                raise _Damage(f"truncated header at offset {position}")
            return
        if not block.strip(b"\0"):
            return  # end-of-archive marker
        name, kind, length = _parse_header(block, position, verify)
        data_offset = position + BLOCK
        if data_offset + length > size:
            raise _Damage(
                f"truncated: member {long_name or name!r} at offset {position} needs "
                f"{data_offset + length} bytes, the data has {size}"
            )
        if kind == tarfile.GNUTYPE_LONGNAME:
            long_name = read(data_offset, length).rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == tarfile.XHDTYPE:
            long_name = _pax_path(read(data_offset, length)) or long_name
        elif kind != tarfile.XGLTYPE:
            yield Member(
                chain_start, long_name or name, kind in tarfile.REGULAR_TYPES, data_offset, length
            )
            long_name = None
        position = data_offset + -(-length // BLOCK) * BLOCK
        if kind not in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
            chain_start = position
    if verify:  # a whole archive ends with zero blocks; without them it was cut short
        raise _Damage(
            f"truncated: the data ends at offset {size} without the end-of-archive "
            "marker, so members may be missing"
        )


def _parse_header(block: bytes, offset: int, verify: bool) -> tuple[str, bytes, int]:
    """(name, type flag, data size) of one 512-byte header."""
    if verify:
        stored = block[148:156].split(b"\0", 1)[0].strip()
        unsigned = sum(block[:148]) + 256 + sum(block[156:])
        if not stored or (int(stored, 8) != unsigned and int(stored, 8) != _signed_sum(block)):
            raise _Damage(f"corrupt tar header at offset {offset} (bad checksum)")
    size_field = block[124:136]
    try:
        if size_field[0] & 0x80:  # GNU base-256 for sizes past 8 GiB
            length = int.from_bytes(size_field[1:], "big")
        else:
            length = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise _Damage(f"corrupt tar header at offset {offset} (bad size field)") from None
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0":  # POSIX ustar: a prefix holds the leading directories
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape"), block[156:157] or b"\0", length


def _signed_sum(block: bytes) -> int:
    """The checksum some old tar writers computed over signed bytes."""
    fields = block[:148] + block[156:]
    return sum(fields) + 256 - 256 * sum(byte >= 128 for byte in fields)


def parse_span(data: bytes, *, path: str, start: int) -> list[tuple[str, bytes]]:
    """(member name, payload) of every regular member in a sample's span, in order."""
    try:
        members = list(
            walk(lambda offset, count: data[offset : offset + count], len(data), verify=False)
        )
    except _Damage as damage:
        raise ShardError(
            f"{path}: {damage} within the sample at offset {start}; the shard "
            "changed since it was indexed: rebuild the index"
        ) from None
    return [(m.name, data[m.offset_data : m.offset_data + m.size]) for m in members if m.regular]


def _pax_path(records: bytes) -> str | None:
    position = 0
    while position < len(records):
        length_text, _, rest = records[position:].partition(b" ")
        if not length_text.isdigit():
            return None
        length = int(length_text)
        keyword, _, value = rest[: length - len(length_text) - 1].partition(b"=")
        if keyword == b"path":
            return value.rstrip(b"\n").decode("utf-8", "surrogateescape")
        position += length
    return None
