"""Token shards on disk: Megatron .bin/.idx, a plain .npy/.bin with offsets, a Parquet column.

Every format opens to a :class:`TokenShard`: a 1-D array of token ids (memory-mapped from the
file, so every worker shares the page cache) and the int64 document offsets in tokens
(documents + 1 of them, from 0 to the token count). Only Parquet, which is compressed, is
decoded into memory (once per process; convert large Parquet corpora with ``resumable-loader
tokenize`` or write a plain file).

Which format a path is:

- ``prefix``, ``prefix.bin`` or ``prefix.idx`` with ``prefix.idx`` beside: Megatron-LM's format.
- ``name.npy`` or ``name.bin`` with ``name.offsets.npy`` beside: a plain token file (``.npy`` of
  an integer dtype, or raw ``.bin`` whose dtype the ``dtype=`` argument gives) and its document
  offsets (an integer ``.npy`` of documents + 1 values, 0 first, the token count last).
- ``*.parquet``: one document per row, a list-of-integers column (``column=``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.tokens import megatron

OFFSETS_SUFFIX = ".offsets.npy"
TOKEN_KINDS = "iu"  # integer dtypes only


@dataclasses.dataclass(frozen=True)
class TokenShard:
    """One shard's tokens and document offsets.

    Attributes:
        path: the token file (for Megatron, the .bin).
        format: "megatron", "plain" or "parquet".
        tokens: 1-D array of token ids.
        offsets: int64 document offsets in tokens: document d is tokens[offsets[d]:offsets[d+1]].
        size: bytes of the shard's files (what the fingerprint records).
    """

    path: str
    format: str
    tokens: np.ndarray
    offsets: np.ndarray
    size: int

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    def info(self) -> ShardInfo:
        """What a dataset keeps of the shard once its offsets joined the stream's."""
        return ShardInfo(self.path, self.format, self.size, self.num_tokens, self.num_documents)


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """A shard's file, format and counts (what the dataset's fingerprint is made of)."""

    path: str
    format: str
    size: int
    num_tokens: int
    num_documents: int


def open_shard(path: str, *, dtype: np.dtype | None, column: str) -> TokenShard:
    """Open the shard ``path`` names (see the module docstring for how its format is told).

    Raises:
        ShardError: a missing, truncated or inconsistent shard, naming the file, field and fix.
        ConfigError: a raw .bin without ``dtype=``.
    """
    if "://" in path:
        raise ConfigError(
            f"{path}: token shards are read from local files (memory-mapped); copy them to a "
            "local or shared file system first"
        )
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ConfigError(
                f"dtype={dtype!r} is not a numpy dtype; pass np.uint16 or np.uint32 (what the "
                "tokenizer wrote), or leave it out for a file whose header says it"
            ) from None
    stem, ext = os.path.splitext(path)
    if ext == ".parquet":
        return _parquet(path, column, dtype)
    prefix = stem if ext in (".bin", ".idx") else path
    if os.path.exists(prefix + ".idx"):
        return _megatron(prefix, dtype)
    if ext in (".npy", ".bin"):
        return _plain(path, stem + OFFSETS_SUFFIX, dtype)
    raise ShardError(
        f"{path}: not a token shard: expected a Megatron prefix (with {prefix}.idx and "
        f"{prefix}.bin), a .npy or .bin with {stem}{OFFSETS_SUFFIX} beside it, or a .parquet; "
        "check the path"
    )


def _megatron(prefix: str, given: np.dtype | None) -> TokenShard:
    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    bin_size = _size(bin_path, f"its index {idx_path} exists, so the tokens should be here")
    dtype, offsets = megatron.read_index(idx_path, bin_size)
    _same_dtype(idx_path, "the .idx header", dtype, given)
    tokens = _memmap(bin_path, dtype, bin_size)
    return _checked(
        TokenShard(bin_path, "megatron", tokens, offsets, bin_size + os.path.getsize(idx_path)),
        f"{idx_path}: field 'sequence_lengths'",
    )


def _plain(path: str, offsets_path: str, dtype: np.dtype | None) -> TokenShard:
    size = _size(path, "check the path")
    if path.endswith(".npy"):
        tokens = _load_npy(path, "tokens")
        _same_dtype(path, "the .npy header", tokens.dtype, dtype)
    else:
        if dtype is None:
            raise ConfigError(
                f"{path}: a raw .bin has no header to tell its dtype; pass dtype=np.uint16 "
                "or dtype=np.uint32 (what the tokenizer wrote)"
            )
        dtype = np.dtype(dtype)
        if size % dtype.itemsize:
            raise ShardError(
                f"{path}: {size} bytes is not a whole number of {dtype.name} tokens "
                f"({dtype.itemsize} bytes each): wrong dtype= or a truncated file; pass the "
                "dtype the tokens were written with"
            )
        tokens = _memmap(path, dtype, size)
    _check_token_dtype(path, tokens.dtype)
    if not os.path.exists(offsets_path):
        raise ShardError(
            f"{path}: no document offsets beside it; write {offsets_path} (an integer .npy "
            "of documents + 1 token offsets, from 0 to the token count)"
        )
    offsets = _load_npy(offsets_path, "offsets")
    if offsets.dtype.kind not in TOKEN_KINDS or offsets.ndim != 1:
        raise ShardError(
            f"{offsets_path}: field 'offsets' is a {offsets.ndim}-d {offsets.dtype.name} "
            "array; write a 1-d integer array of document offsets"
        )
    shard = TokenShard(
        path,
        "plain",
        tokens,
        offsets.astype(np.int64, copy=False),  # an int64 .npy stays mapped, not copied
        size + os.path.getsize(offsets_path),
    )
    return _checked(shard, f"{offsets_path}: field 'offsets'")


def _parquet(path: str, column: str, given: np.dtype | None) -> TokenShard:
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = _size(path, "check the path")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise ShardError(f"{path}: not a readable Parquet file ({error})") from None
    if column not in schema.names:
        raise ShardError(
            f"{path}: no column {column!r} (columns: {schema.names}); pass column= naming "
            "the token-list column"
        )
    field = schema.field(column).type
    if not (pa.types.is_list(field) or pa.types.is_large_list(field)) or not pa.types.is_integer(
        field.value_type
    ):
        raise ShardError(
            f"{path}: field {column!r} is {field}, but tokens need a list of integers per row; "
            "write token ids as list<int32> (or uint16)"
        )
    table = pq.read_table(path, columns=[column], page_checksum_verification=True)
    values = table.column(column).combine_chunks()
    if values.null_count:
        raise ShardError(
            f"{path}: field {column!r} has {values.null_count} null rows; write an empty list "
            "or drop those rows"
        )
    offsets = values.offsets.to_numpy().astype(np.int64)
    flat = values.flatten()
    if flat.null_count:  # to_numpy would give floats, and NaN read as int64 is -2**63
        first = int(np.argmax(flat.is_null().to_numpy(zero_copy_only=False)))
        row = int(np.searchsorted(offsets, offsets[0] + first, side="right")) - 1
        raise ShardError(
            f"{path}: field {column!r}, row {row}: a null token inside the list (token "
            f"{first + offsets[0] - offsets[row]} of the row; {flat.null_count} null tokens in "
            "all); token ids must all be integers: fix the tokenizer output or drop the row"
        )
    tokens = flat.to_numpy(zero_copy_only=False)
    _same_dtype(path, f"the schema of column {column!r}", tokens.dtype, given)
    offsets -= offsets[0]
    return _checked(TokenShard(path, "parquet", tokens, offsets, size), f"{path}: field {column!r}")


def _same_dtype(path: str, where: str, found: np.dtype, given: np.dtype | None) -> None:
    """A ``dtype=`` that contradicts the file's own header is refused: the header wins, and a
    caller who believes otherwise should know."""
    if given is not None and np.dtype(found) != np.dtype(given):
        raise ShardError(
            f"{path}: field 'dtype' is {np.dtype(found).name} in {where}, but "
            f"dtype={np.dtype(given).name} was given; pass the file's dtype or none"
        )


def _checked(shard: TokenShard, where: str) -> TokenShard:
    """The shard, once its offsets (described by ``where``: file and field) run from 0 to the
    token count without decreasing."""
    offsets, count = shard.offsets, shard.num_tokens
    if shard.num_documents < 1 or count == 0:
        raise ShardError(
            f"{where}: the shard is empty ({shard.num_documents} documents, {count} tokens); "
            "drop it from the shard list or rewrite it"
        )
    if offsets[0] != 0:
        raise ShardError(f"{where}: the first offset is {offsets[0]}, it must be 0; fix it")
    steps = np.diff(offsets)
    if steps.size and steps.min() < 0:
        bad = int(np.argmax(steps < 0))
        raise ShardError(
            f"{where}: offsets not increasing at document {bad} ({offsets[bad]} then "
            f"{offsets[bad + 1]}); write each document's start in order"
        )
    if offsets[-1] != count:
        longer = offsets[-1] > count
        what = "a document longer than the file" if longer else "tokens after the last document"
        raise ShardError(
            f"{where}: the last offset is {offsets[-1]} but the file holds {count} tokens "
            f"({what}); the offsets must end at the token count: rewrite the offsets for "
            "this token file"
        )
    return shard


def _size(path: str, hint: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        raise ShardError(f"{path}: not found; {hint}") from None


def _memmap(path: str, dtype: np.dtype, size: int) -> np.ndarray:
    if size == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(size // dtype.itemsize,))


def _load_npy(path: str, field: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ShardError(
            f"{path}: field '{field}': not a readable .npy ({error}); rewrite it with np.save"
        ) from None
    if array.ndim != 1:
        raise ShardError(f"{path}: field '{field}' is {array.ndim}-d; save a 1-d array")
    return array


def _check_token_dtype(path: str, dtype: np.dtype) -> None:
    if dtype.kind not in TOKEN_KINDS:
        raise ShardError(
            f"{path}: field 'dtype' is {dtype.name}, but token ids are integers; save them as "
            "uint16 (vocabularies below 65,536) or uint32"
        )
