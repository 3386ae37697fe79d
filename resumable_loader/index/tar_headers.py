"""A lean tar header walker: member names and data offsets without tarfile's per-member cost.

tarfile builds a TarInfo per member (~80 us each); indexing and sample reads only need each
member's name, type and where its data is, so this parses the 512-byte headers directly:
ustar prefixes, GNU long names (``L``/``K``), pax ``path``/``size`` records and GNU base-256
sizes, the layouts Python's tarfile and GNU tar write.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterator

from resumable_loader.errors import ResumableLoaderError

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
_LONG_NAME, _LONG_LINK, _PAX, _PAX_GLOBAL, _SPARSE = b"L", b"K", b"x", b"g", b"S"
_ADLER = 65521  # zlib.adler32's modulus
_ZEROS = bytes(BLOCK)  # the end-of-archive block


@dataclasses.dataclass
class Member:
    """A tar member: where its headers start (long-name and pax blocks included), its name,
    whether it is a regular file, and where its data is."""

    offset: int
    name: str
    regular: bool
    offset_data: int
    size: int


class TarDamage(ResumableLoaderError):
    """A tar structure that cannot be read past (the message names the offset)."""


def walk(
    read: Callable[[int, int], bytes], end: int, *, start: int = 0, archive: bool
) -> Iterator[Member]:
    """Members of the tar data in [start, end) read through ``read(offset, count)``.

    Every header's checksum is checked, so a damaged header raises instead of being read as
    another name, type or size. Stops at the end-of-archive zero block or at ``end``.

    Args:
        read: returns ``count`` bytes at ``offset`` (fewer at the end of the data).
        end: where the tar data ends (a whole archive: its size in bytes).
        start: where the first header is; offsets (members', errors') are ``read``'s, so a
            span read from a shard reports offsets in the shard.
        archive: the data is a whole archive (index time): require the end-of-archive marker,
            so truncation at a member boundary is caught; a sample's span (read time) has none.

    Raises:
        TarDamage: a bad header, or data that ends inside a member.
    """
    position = chain_start = start
    extended: dict[str, str] = {}
    while position < end:
        block = read(position, BLOCK)
        if len(block) < BLOCK:
            if block.strip(b"\0"):
                raise TarDamage(f"truncated header at offset {position}")
            return
        if block == _ZEROS:
            return  # end-of-archive marker
        name, kind, length = _parse_header(block, position)
        data_offset = position + BLOCK
        if extended:
            length = int(extended.get("size", length))
        if data_offset + length > end:
            raise TarDamage(
                f"truncated: member {extended.get('path', name)!r} at offset {position} needs "
                f"{data_offset + length} bytes, the data has {end}"
            )
        if kind == _LONG_NAME:
            extended["path"] = _text(read(data_offset, length).rstrip(b"\0"))
        elif kind == _PAX:
            extended.update(_pax_records(read(data_offset, length), position))
        elif kind == _SPARSE:  # its data is a sparse map, not the file: no offsets to give
            raise TarDamage(
                f"member {extended.get('path', name)!r} at offset {position} is a GNU sparse "
                "file, which sample reads do not support; re-create the shard without --sparse"
            )
        elif kind not in (_LONG_LINK, _PAX_GLOBAL):
            regular = kind in _REGULAR
            yield Member(chain_start, extended.get("path", name), regular, data_offset, length)
            extended = {}
        position = data_offset + -(-length // BLOCK) * BLOCK
        if kind not in (_LONG_NAME, _LONG_LINK, _PAX):
            chain_start = position
    if archive:  # a whole archive ends with zero blocks; without them it was cut short
        raise TarDamage(
            f"truncated: the data ends at offset {end} without the end-of-archive marker, "
            "so members may be missing"
        )


def _parse_header(block: bytes, offset: int) -> tuple[str, bytes, int]:
    """(name, type flag, data size) of one 512-byte header whose checksum matches."""
    try:
        stored = int(block[148:156].partition(b"\0")[0].strip() or b"-1", 8)
        mismatch = (stored - _unsigned_sum(block)) % _ADLER and stored != _signed_sum(block)
        if mismatch or stored < 0:  # -1: a blank checksum field
            found = sum(block) - sum(block[148:156]) + 256
            raise TarDamage(
                f"corrupt tar header at offset {offset} (bad checksum: it records {stored}, its "
                f"bytes sum to {found})"
            )
        size_field = block[124:136]
        if size_field[0] & 0x80:  # GNU base-256 for sizes past 8 GiB
            length = int.from_bytes(size_field[1:], "big")
        else:
            length = int(size_field.partition(b"\0")[0].strip() or b"0", 8)
    except ValueError:
        raise TarDamage(f"corrupt tar header at offset {offset} (bad number field)") from None
    name = block[:100].partition(b"\0")[0]
    if block[345] and block[257:263] == b"ustar\0":  # POSIX ustar: a prefix holds the
        name = block[345:500].partition(b"\0")[0] + b"/" + name  # leading directories
    return _text(name), block[156:157], length


def _unsigned_sum(block: bytes) -> int:
    """A number congruent modulo 65521 to the tar checksum (the header's byte sum with the
    checksum field counted as 8 spaces).

    zlib.adler32's low half is 1 + the byte sum modulo 65521, summed in C: about a tenth of
    the cost of ``sum(block)``, which would be most of a sample read's parsing. The modulus
    loses little: a header sums to at most 130,560, and a change to at most 256 bytes outside
    the checksum field moves the sum by less than 65521, so it is caught exactly when the exact
    comparison catches it; what passes here and not there is a recorded checksum off by a
    multiple of 65521 (no flipped bit makes one: 65521 is prime, a bit moves it by 2^k).
    """
    return (zlib.adler32(block) & 0xFFFF) - (zlib.adler32(block[148:156]) & 0xFFFF) + 256


def _signed_sum(block: bytes) -> int:
    """The checksum some old tar writers computed over signed bytes."""
    fields = block[:148] + block[156:]
    return sum(fields) + 256 - 256 * sum(byte >= 128 for byte in fields)


def _pax_records(records: bytes, offset: int) -> dict[str, str]:
    """The ``path`` and ``size`` of a pax extended header (``"<length> <key>=<value>\\n"``)."""
    found: dict[str, str] = {}
    position = 0
    while position < len(records) and records[position:].strip(b"\0"):
        length_text, _, rest = records[position:].partition(b" ")
        if not length_text.isdigit() or int(length_text) <= len(length_text):
            raise TarDamage(f"corrupt pax header at offset {offset}")
        record = rest[: int(length_text) - len(length_text) - 1]
        keyword, _, value = record.rstrip(b"\n").partition(b"=")
        if keyword == b"size" and not value.isdigit():
            raise TarDamage(f"corrupt pax header at offset {offset} (size {value!r})")
        if keyword in (b"path", b"size"):
            found[keyword.decode()] = _text(value)
        position += int(length_text)
    return found


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
