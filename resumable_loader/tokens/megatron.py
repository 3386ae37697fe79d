"""Megatron-LM's indexed token format (``prefix.bin`` + ``prefix.idx``): a reader and a writer.

Read from megatron-core's ``megatron/core/datasets/indexed_dataset.py`` (``_IndexWriter``,
``_IndexReader``), not copied. The ``.bin`` is the tokens of every sequence back to back; the
``.idx`` is, little-endian:

=========================  ==============================================================
bytes 0-8                  magic ``b"MMIDIDX\\x00\\x00"``
u64                        version, 1
u8                         dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
                           6 float64, 7 float32, 8 uint16)
u64 ``sequence_count``     S
u64 ``document_count``     len(document_indices) (documents + 1)
int32[S]                   ``sequence_lengths`` (tokens)
int64[S]                   ``sequence_pointers`` (byte offset of each sequence in the .bin)
int64[document_count]      ``document_indices`` (sequence index where each document starts,
                           then S)
int8[S], optional          ``sequence_modes`` (multimodal files only; ignored here)
=========================  ==============================================================

As in Megatron's GPTDataset, every *sequence* is one document (``preprocess_data.py`` writes
one sequence per document unless sentences are split), so the document offsets of a shard are
its sequence pointers divided by the item size.
"""

from __future__ import annotations

import contextlib
import glob
import os
import struct
from typing import BinaryIO

import numpy as np

from resumable_loader.errors import ShardError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, document_count
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in DTYPE_CODES.items()}


def read_index(idx_path: str, bin_size: int) -> tuple[np.dtype, np.ndarray]:
    """(token dtype, int64 document offsets in tokens, documents + 1 of them) of a .idx file.

    Checks the header, that the arrays fit the file, that the sequences lie back to back in the
    order given and that the .bin (``bin_size`` bytes) holds them all.

    Raises:
        ShardError: naming the file, the field and the fix.
    """
    size = os.path.getsize(idx_path)
    fix = (
        "rewrite the shard with megatron-core's IndexedDatasetBuilder or resumable-loader tokenize"
    )
    with open(idx_path, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise ShardError(
            f"{idx_path}: header is {len(head)} bytes, a Megatron .idx header is {HEADER.size}; "
            f"the file is truncated or not an index: {fix}"
        )
    magic, version, code, sequences, document_count = HEADER.unpack(head)
    if magic != MAGIC:
        raise ShardError(
            f"{idx_path}: field 'magic' is {magic!r}, expected {MAGIC!r}: not a Megatron .idx "
            f"(or a corrupt header); {fix}"
        )
    if version != VERSION:
        raise ShardError(
            f"{idx_path}: field 'version' is {version}, only version {VERSION} exists; {fix}"
        )
    dtype = _token_dtype(idx_path, code)
    needed = HEADER.size + sequences * 12 + document_count * 8
    if document_count < 1 or size < needed:
        raise ShardError(
            f"{idx_path}: fields 'sequence_count' ({sequences}) and 'document_count' "
            f"({document_count}) need {needed} bytes, the file has {size}: a corrupt header or "
            f"a truncated file; {fix}"
        )
    buffer = np.memmap(idx_path, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(buffer, np.int32, sequences, HEADER.size)
    pointers = np.frombuffer(buffer, np.int64, sequences, HEADER.size + 4 * sequences)
    itemsize = dtype.itemsize
    ends = pointers + lengths.astype(np.int64) * itemsize
    if sequences and (pointers[0] != 0 or np.any(lengths < 0) or np.any(pointers[1:] != ends[:-1])):
        bad = _first_gap(pointers, ends, lengths)
        raise ShardError(
            f"{idx_path}: field 'sequence_pointers' is not the running sum of "
            f"'sequence_lengths' x {itemsize} bytes at sequence {bad} (offsets not increasing "
            f"back to back); {fix}"
        )
    total = int(ends[-1]) if sequences else 0
    if total != bin_size:
        shorter = "shorter" if bin_size < total else "longer"
        raise ShardError(
            f"{idx_path}: the .idx says the .bin holds {total} bytes ({total // itemsize} "
            f"{dtype.name} tokens), the .bin has {bin_size}: the .bin is {shorter} than its "
            f".idx says (a truncated copy, or the wrong pair); copy the pair again or {fix}"
        )
    offsets = np.empty(sequences + 1, dtype=np.int64)
    np.floor_divide(pointers, itemsize, out=offsets[:-1])
    offsets[-1] = total // itemsize
    return dtype, offsets


def _token_dtype(idx_path: str, code: int) -> np.dtype:
    if code not in DTYPE_CODES:
        raise ShardError(
            f"{idx_path}: field 'dtype' has code {code}, not one of Megatron's "
            f"{sorted(DTYPE_CODES)}: a corrupt header; rewrite the shard"
        )
    dtype = np.dtype(DTYPE_CODES[code])
    if dtype.kind not in "iu":
        raise ShardError(
            f"{idx_path}: field 'dtype' is {dtype.name}, but tokens are integers; write token "
            "ids as uint16 (vocabularies below 65,536) or int32"
        )
    return dtype


def _first_gap(pointers: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> int:
    if pointers[0] != 0:
        return 0
    bad = np.flatnonzero((pointers[1:] != ends[:-1]) | (lengths[1:] < 0)) + 1
    negative = np.flatnonzero(lengths < 0)
    return int(min([*bad[:1], *negative[:1]]))


def write_index(idx_path: str, dtype: np.dtype, lengths: np.ndarray) -> None:
    """Write the .idx of a .bin holding documents of ``lengths`` tokens back to back."""
    lengths = np.asarray(lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(dtype).itemsize, out=pointers[1:])
    documents = np.arange(len(lengths) + 1, dtype=np.int64)
    with open(idx_path, "wb") as f:
        f.write(
            HEADER.pack(
                MAGIC, VERSION, CODE_OF_DTYPE[np.dtype(dtype)], len(lengths), len(documents)
            )
        )
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(documents.tobytes())


def _remove_dead_writers_files(prefix: str) -> None:
    """Remove the temporary files a writer of ``prefix`` left when it was killed (SIGKILL runs
    no cleanup): ``.tmp-<pid>`` files whose process no longer exists."""
    for path in glob.glob(glob.escape(prefix) + ".[bi][id][nx].tmp-*"):
        pid = path.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class MegatronWriter:
    """Writes ``prefix.bin`` and ``prefix.idx`` as megatron-core's builder does, one document
    per sequence; the files appear (atomically, by rename) only when :meth:`close` succeeds.

    Args:
        prefix: the output path without ``.bin`` / ``.idx``.
        dtype: the token dtype (uint16 for vocabularies below 65,536, else int32).
    """

    def __init__(self, prefix: str | os.PathLike, *, dtype: np.dtype | type) -> None:
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE or self.dtype.kind not in "iu":
            raise ShardError(f"{self.prefix}: cannot write tokens as {self.dtype.name}")
        _remove_dead_writers_files(self.prefix)
        self._tmp = f"{self.prefix}.bin.tmp-{os.getpid()}"
        # open across add_documents() calls; close() or abort() closes it
        self._bin: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115
        self._lengths: list[np.ndarray] = []

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents: ``tokens`` back to back, ``lengths[i]`` tokens each.

        Raises:
            ShardError: tokens that are not integers or do not fit the dtype (a cast would
                wrap them into other ids), or lengths that are negative or do not add up to
                the tokens given.
        """
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        if tokens.size and tokens.dtype.kind not in "iu":
            raise ShardError(f"{self.prefix}: tokens must be integers, got {tokens.dtype.name}")
        if lengths.size and (lengths.dtype.kind not in "iu" or lengths.min() < 0):
            raise ShardError(f"{self.prefix}: document lengths must be integers >= 0")
        if tokens.size:
            low, high = int(tokens.min()), int(tokens.max())
            bounds = np.iinfo(self.dtype)
            if low < bounds.min or high > bounds.max:
                raise ShardError(
                    f"{self.prefix}: token ids span [{low}, {high}], beyond {self.dtype.name}'s "
                    f"[{bounds.min}, {bounds.max}]; write them as int32 (a vocabulary of "
                    "65,536 or more)"
                )
        if int(lengths.sum(dtype=np.int64)) != tokens.size:
            raise ShardError(
                f"{self.prefix}: the document lengths add up to {int(lengths.sum())} tokens, "
                f"but {tokens.size} were given"
            )
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(lengths.astype(np.int32))

    def close(self) -> tuple[int, int]:
        """Finish both files; returns (tokens, documents) written."""
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.empty(0, np.int32)
        idx_tmp = f"{self.prefix}.idx.tmp-{os.getpid()}"
        write_index(idx_tmp, self.dtype, lengths)
        os.replace(self._tmp, f"{self.prefix}.bin")
        os.replace(idx_tmp, f"{self.prefix}.idx")
        return int(lengths.sum(dtype=np.int64)), len(lengths)

    def abort(self) -> None:
        """Drop the partial output (both temporary files, wherever close() stopped)."""
        self._bin.close()
        for tmp in (self._tmp, f"{self.prefix}.idx.tmp-{os.getpid()}"):
            if os.path.exists(tmp):
                os.unlink(tmp)

    def __repr__(self) -> str:
        return f"MegatronWriter(prefix={self.prefix!r}, dtype={self.dtype.name})"
