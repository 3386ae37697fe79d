"""``resumable-loader tokenize``: text files to a Megatron-format token shard, in parallel.

Inputs are read in order, documents batched and encoded by a Hugging Face ``tokenizers``
tokenizer file (``encode_batch`` runs on all cores, in Rust), each document followed by the
end-of-document token. What a document is: a whole ``.txt`` file; a line of a ``.jsonl`` file (its
text field); a row of a ``.parquet`` file (its text column). Special tokens the tokenizer's
post-processor would add (BOS, CLS...) are not added: the EOD token is the only separator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

from resumable_loader.errors import ConfigError, MissingDependencyError, ShardError
from resumable_loader.index.paths import expand_shards
from resumable_loader.tokens.megatron import MegatronWriter

# Tried in order when no --eod is given.
EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
BATCH_DOCUMENTS = 1024
INPUT_KINDS = (".txt", ".jsonl", ".parquet")


def tokenize_files(
    inputs: str | Sequence[str],
    *,
    tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    field: str = "text",
    eod: str | None = None,
    batch_documents: int = BATCH_DOCUMENTS,
    progress: bool = True,
) -> tuple[int, int]:
    """Tokenize ``inputs`` into ``out``.bin / ``out``.idx; returns (tokens, documents) written.

    Args:
        inputs: .txt, .jsonl and .parquet files (paths, globs or brace patterns), in order.
        tokenizer: a ``tokenizer.json`` file (``tokenizers.Tokenizer.save``).
        out: the output prefix (the files appear, whole, only on success).
        field: the text field of .jsonl lines and the text column of .parquet files.
        eod: the end-of-document token (default: the first of ``EOD_CANDIDATES`` the
            vocabulary has).
        batch_documents: documents encoded per ``encode_batch`` call.
        progress: show a progress bar (input bytes) on stderr.

    Raises:
        ConfigError: an unknown input kind, a tokenizer file that does not load, no EOD token.
        ShardError: an input line that is not JSON or lacks the field, text that is not
            UTF-8, naming file and line; inputs without a document.
        MissingDependencyError: ``tokenizers`` or ``tqdm`` is not installed (the pip command).
    """
    Tokenizer, tqdm = _tokenizer_modules()
    paths = expand_shards(inputs)
    for path in paths:
        if not path.endswith(INPUT_KINDS):
            raise ConfigError(f"{path}: tokenize reads {', '.join(INPUT_KINDS)} files; convert it")
    try:
        encoder = Tokenizer.from_file(os.fspath(tokenizer))
    except Exception as error:  # tokenizers raises its own Exception subclass
        raise ConfigError(f"{tokenizer}: not a tokenizers tokenizer.json ({error})") from None
    eod_id = _eod_id(encoder, eod, tokenizer)
    # by the largest id, not the count: a vocabulary may leave ids unused (sparse ids)
    largest = max([*encoder.get_vocab(with_added_tokens=True).values(), eod_id])
    dtype = np.uint16 if largest < 2**16 else np.int32
    total = _check_paths(paths, out)
    try:
        writer = MegatronWriter(out, dtype=dtype)
    except OSError as error:
        raise _unwritable(out, error) from None
    documents = 0
    bar = tqdm(
        total=total, unit="B", unit_scale=True, disable=not progress, desc=f"tokenize -> {out}"
    )
    try:
        for texts, consumed in _batches(paths, field, batch_documents):
            encodings = encoder.encode_batch(texts, add_special_tokens=False)
            ids = [np.asarray([*e.ids, eod_id], dtype=dtype) for e in encodings]
            writer.add_documents(np.concatenate(ids), [len(x) for x in ids])
            bar.update(consumed)
            documents += len(ids)
        if not documents:
            raise ShardError(
                f"{', '.join(paths[:3])}: no documents (empty files, or .jsonl of blank lines, "
                "or .parquet without rows); a token shard must hold one, so nothing was written"
            )
        return writer.close()
    except BaseException as error:
        writer.abort()  # no .tmp- file is left behind, whatever failed
        if isinstance(error, OSError):  # the disk, not the inputs: reading them raises ours
            raise _unwritable(out, error) from None
        raise
    finally:
        bar.close()


def _unwritable(out: str | os.PathLike, error: OSError) -> ShardError:
    return ShardError(
        f"{os.fspath(out)}: cannot write the token shard ({error.strerror or error}); nothing "
        "was left behind; choose another place (--out) or free space"
    )


def _check_paths(paths: list[str], out: str | os.PathLike) -> int:
    """The inputs' total size, once every input is a file and ``out``'s directory exists
    (checked before anything is written, so a mistake leaves no partial output)."""
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise ShardError(
            f"{missing[0]}: no such input file ({len(missing)} of {len(paths)} inputs missing: "
            f"{missing[:3]}); check the paths"
        )
    if os.path.isdir(out) or not os.path.basename(os.fspath(out)):
        raise ConfigError(
            f"--out {os.fspath(out)}: a directory, but the output is a prefix (it writes "
            f"PREFIX.bin and PREFIX.idx); pass a prefix in it, e.g. --out "
            f"{os.path.join(os.fspath(out), 'tokens')}"
        )
    if os.fspath(out).endswith((".bin", ".idx")):
        prefix = os.fspath(out)[:-4]
        raise ConfigError(
            f"--out {os.fspath(out)}: the output is a prefix (it writes PREFIX.bin and "
            f"PREFIX.idx); pass --out {prefix}"
        )
    directory = os.path.dirname(os.fspath(out)) or "."
    if not os.path.isdir(directory):
        raise ConfigError(
            f"--out {os.fspath(out)}: the directory {directory!r} does not exist; create it "
            f"first (mkdir -p {directory}) or pass a prefix in an existing directory"
        )
    return sum(os.path.getsize(path) for path in paths)


def _tokenizer_modules() -> tuple[type, type]:
    """``tokenizers.Tokenizer`` and ``tqdm.tqdm``, or an install hint if they are missing."""
    try:
        from tokenizers import Tokenizer
        from tqdm import tqdm
    except ImportError as error:
        raise MissingDependencyError(
            f"tokenize needs the optional package {error.name!r}: "
            "pip install 'resumable-loader[tokens]' (tokenizers and tqdm)"
        ) from None
    return Tokenizer, tqdm


def _eod_id(encoder: object, eod: str | None, tokenizer: object) -> int:
    names = EOD_CANDIDATES if eod is None else (eod,)
    for name in names:
        token = encoder.token_to_id(name)
        if token is not None:
            return int(token)
    raise ConfigError(
        f"{tokenizer}: the vocabulary has no end-of-document token "
        f"{names[0] if eod is not None else 'among ' + ', '.join(EOD_CANDIDATES)}; pass --eod "
        "naming the tokenizer's EOD token"
    )


def _batches(paths: list[str], field: str, size: int) -> Iterator[tuple[list[str], int]]:
    """Batches of at most ``size`` documents, with the input bytes they account for."""
    texts: list[str] = []
    consumed = 0
    for path in paths:
        for text, nbytes in _documents(path, field):
            texts.append(text)
            consumed += nbytes
            if len(texts) == size:
                yield texts, consumed
                texts, consumed = [], 0
    if texts or consumed:
        yield texts, consumed


def _documents(path: str, field: str) -> Iterator[tuple[str, int]]:
    if path.endswith(".txt"):
        with open(path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ShardError(
                f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); convert it to "
                "UTF-8 (e.g. iconv -t UTF-8)"
            ) from None
        yield text, len(data)
    elif path.endswith(".jsonl"):
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield _json_text(path, number, line, field), len(line)
    else:
        yield from _parquet_texts(path, field)


def _json_text(path: str, number: int, line: bytes, field: str) -> str:
    try:
        text = json.loads(line)[field]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ShardError(f"{path}: line {number} is not JSON ({error}); fix or drop it") from None
    except (KeyError, TypeError):
        raise ShardError(
            f"{path}: line {number} has no field {field!r}; pass --field naming the text field"
        ) from None
    if not isinstance(text, str):
        raise ShardError(f"{path}: line {number}: field {field!r} is not a string")
    try:
        text.encode("utf-8")  # a lone surrogate escape ("\\ud800") is JSON but no text
    except UnicodeEncodeError as error:
        raise ShardError(
            f"{path}: line {number}: field {field!r} holds a lone surrogate at character "
            f"{error.start} ({error.reason}), which no tokenizer encodes; fix or drop the line"
        ) from None
    return text


def _parquet_texts(path: str, column: str) -> Iterator[tuple[str, int]]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    if column not in file.schema_arrow.names:
        raise ShardError(
            f"{path}: no column {column!r} (columns: {file.schema_arrow.names}); pass --field "
            "naming the text column"
        )
    size, groups = os.path.getsize(path), file.num_row_groups
    for group in range(groups):
        values = file.read_row_group(group, columns=[column]).column(column).to_pylist()
        for row, text in enumerate(values):
            if not isinstance(text, str):
                fix = "drop or fill the null rows" if text is None else "cast it to strings"
                raise ShardError(
                    f"{path}: row group {group}, row {row}: column {column!r} is {text!r}, not "
                    f"text; {fix}"
                )
            # the progress bar moves by the file's bytes, a group's share at its last row
            last = row == len(values) - 1
            yield text, size * (group + 1) // groups - size * group // groups if last else 0
