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


def _members(path: str, size: int, problem) -> Iterator[tarfile.TarInfo | None]:
    """Regular members in order, then None if the shard turned out damaged (after ``problem``
    reported it, when skipping)."""
    offset = 0
    with open_shard(path) as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                while (member := tar.next()) is not None:
                    offset = member.offset
                    if member.offset_data + member.size > size:
                        problem(
                            f"truncated: member {member.name!r} at offset {member.offset} "
                            f"needs {member.offset_data + member.size} bytes, the file has "
                            f"{size}; re-copy or re-create the shard"
                        )
                        yield None
                        return
                    if member.isreg():
                        yield member
                # tarfile stops quietly at an invalid header after the first member: only
                # zero blocks or the end of the file may follow the last member.
                f.seek(tar.offset)
                if f.read(BLOCK).strip(b"\0"):
                    problem(
                        f"corrupt tar header at offset {tar.offset}: the members after it "
                        "cannot be read; the shard is damaged: re-create it"
                    )
                    yield None
        except (tarfile.TarError, EOFError, UnicodeDecodeError) as error:
            problem(
                f"corrupt tar data after offset {offset} ({error}); the shard is damaged: "
                "re-create it"
            )
            yield None


def parse_span(data: bytes, *, path: str, start: int) -> list[tuple[str, bytes]]:
    """(member name, payload) of every regular member in a sample's span, in order."""
    members: list[tuple[str, bytes]] = []
    position, long_name = 0, None
    while position + BLOCK <= len(data):
        try:
            info = tarfile.TarInfo.frombuf(
                data[position : position + BLOCK], "utf-8", "surrogateescape"
            )
        except tarfile.HeaderError as error:
            raise ShardError(
                f"{path}: bad tar header at offset {start + position} ({error}); "
                "the shard changed or is damaged: rebuild its index"
            ) from None
        payload_start = position + BLOCK
        payload = data[payload_start : payload_start + info.size]
        position = payload_start + -(-info.size // BLOCK) * BLOCK
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type == tarfile.XHDTYPE:
            long_name = _pax_path(payload) or long_name
        elif info.type in tarfile.REGULAR_TYPES:
            members.append((long_name or info.name, payload))
            long_name = None
        if len(payload) < info.size:
            raise ShardError(
                f"{path}: member data at offset {start + payload_start} is cut "
                "short; the shard changed since it was indexed: rebuild the index"
            )
    return members


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
