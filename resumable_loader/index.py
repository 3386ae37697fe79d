"""The sample index of a shard set: counts, where each sample's bytes are, and a fingerprint.

Stored as one file: an 8-byte magic, a msgpack header (format version, shard list with sizes,
mtimes and sample counts, fingerprint, skipped samples) and, 64-byte aligned, the raw arrays
(for tar: each sample's byte span, 16 bytes a sample), memory-mapped on load so worker
processes share them through the page cache without copies. Written atomically (temporary
file, fsync, rename), beside the shards or in a cache directory.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from resumable_loader.atomic import atomic_write
from resumable_loader.errors import ConfigError, SampleIndexError
from resumable_loader.parquet_index import scan_parquet
from resumable_loader.shards import expand_shards, is_url, stat_shard
from resumable_loader.tar_index import scan_tar

MAGIC = b"RLINDEX\x00"
# Version 1: tar spans (int64 start, length) per sample, or Parquet row groups per file.
INDEX_VERSION = 1
_ALIGN = 64


class ShardedIndex:
    """Which samples a shard set holds and where; built once, then memory-mapped.

    Attributes:
        format: "tar" or "parquet".
        shard_urls: the shards, in index order.
        shard_sizes: samples per shard (np.int64).
        fingerprint: a hash of the format version, shard names, byte sizes and sample counts.
        spans: for tar, (samples, 2) int64 of byte start and length per sample.
        row_groups: for Parquet, per shard the rows of each row group.
    """

    def __init__(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.header = header
        self.format: str = header["format"]
        self.shard_urls: list[str] = [s["url"] for s in header["shards"]]
        self.shard_sizes = np.array([s["samples"] for s in header["shards"]], dtype=np.int64)
        self.shard_offsets = np.concatenate([[0], np.cumsum(self.shard_sizes)]).astype(np.int64)
        self.fingerprint: str = header["fingerprint"]
        self.spans = arrays.get("spans")
        self.row_groups: list[list[int]] = [s.get("row_groups", []) for s in header["shards"]]

    @property
    def num_samples(self) -> int:
        return int(self.shard_offsets[-1])

    @property
    def num_shards(self) -> int:
        return len(self.shard_urls)

    def locate(self, sample_id: int) -> tuple[int, int]:
        """(shard, index within the shard) of a global sample id."""
        if not 0 <= sample_id < self.num_samples:
            raise IndexError(f"sample id {sample_id} out of range [0, {self.num_samples})")
        shard = int(np.searchsorted(self.shard_offsets, sample_id, side="right")) - 1
        return shard, sample_id - int(self.shard_offsets[shard])

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(format={self.format!r}, shards={self.num_shards}, "
            f"samples={self.num_samples}, fingerprint={self.fingerprint!r})"
        )

    # -- building ------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        shards: str | Sequence[str],
        *,
        out: str | os.PathLike | None = None,
        workers: int | None = None,
        progress: bool = True,
        on_error: str = "raise",
    ) -> ShardedIndex:
        """Index ``shards`` in parallel and write the index atomically to ``out``.

        Args:
            shards: paths, globs, brace patterns or fsspec URLs (``.tar`` or ``.parquet``).
            out: where to write; default :func:`default_index_path`.
            workers: processes scanning shards (default: CPU count).
            progress: draw a progress bar on stderr.
            on_error: "raise" (default) or "skip" unreadable tar samples, deterministically
                (the index lists what it left out).
        """
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        urls = expand_shards(shards)
        kind = _format_of(urls)
        stats = [stat_shard(url) for url in urls]
        scans = _scan_all(urls, kind, on_error, workers, progress)
        entries, arrays, skipped = [], {}, []
        if kind == "tar":
            arrays["spans"] = np.concatenate([s.spans for s in scans]).reshape(-1, 2)
            fields = sorted(set().union(*(s.extensions for s in scans)))
        else:
            _check_schemas(urls, scans)
            fields = [scans[0].schema]
        for url, (size, mtime), scan in zip(urls, stats, scans, strict=True):
            entry = {"url": url, "bytes": size, "mtime": mtime}
            if kind == "tar":
                entry["samples"] = len(scan.spans)
                skipped.extend(f"{url}: {reason}" for reason in scan.skipped)
            else:
                entry["samples"], entry["row_groups"] = sum(scan.row_groups), scan.row_groups
            entries.append(entry)
        header = {
            "version": INDEX_VERSION,
            "format": kind,
            "shards": entries,
            "fields": fields,
            "skipped": skipped,
            "fingerprint": _fingerprint(kind, entries),
        }
        path = Path(out) if out is not None else default_index_path(urls)
        _write(path, header, arrays)
        return cls(header, arrays)

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = True) -> ShardedIndex:
        """Memory-map an index file; with ``verify``, check that no shard changed since.

        Raises:
            SampleIndexError: missing or corrupt file, unknown version, or a changed shard.
        """
        header, arrays = _read(Path(path))
        index = cls(header, arrays)
        if verify:
            for entry in header["shards"]:
                size, mtime = stat_shard(entry["url"])
                if size != entry["bytes"] or mtime != entry["mtime"]:
                    raise SampleIndexError(
                        f"{entry['url']}: changed since it was indexed in {path} (size "
                        f"{entry['bytes']} -> {size}, mtime {entry['mtime']} -> {mtime}); "
                        "rebuild the index (resumable-loader index ...), or restore the shard"
                    )
        return index

    @classmethod
    def for_shards(
        cls,
        shards: str | Sequence[str],
        *,
        cache_dir: str | os.PathLike | None = None,
        **build_options: Any,
    ) -> ShardedIndex:
        """The index of ``shards``: loaded if an up-to-date one exists, else (re)built."""
        urls = expand_shards(shards)
        path = default_index_path(urls, cache_dir)
        if path.exists():
            try:
                index = cls.load(path)
                if index.shard_urls == urls:
                    return index
            except SampleIndexError:
                pass  # stale or damaged: an index we made ourselves is rebuilt
        return cls.build(urls, out=path, progress=False, **build_options)


def default_index_path(urls: Sequence[str], cache_dir: str | os.PathLike | None = None) -> Path:
    """Beside the first (local) shard, or in ``cache_dir`` / ~/.cache for remote shards."""
    digest = hashlib.blake2b("\n".join(urls).encode(), digest_size=8).hexdigest()
    name = f".{Path(urls[0]).name}.{digest}.rlindex"
    if cache_dir is None and not is_url(urls[0]):
        return Path(urls[0]).parent / name
    base = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "resumable_loader"
    return base / name.lstrip(".")


def _format_of(urls: Sequence[str]) -> str:
    kinds = {
        "tar" if u.endswith(".tar") else "parquet" if u.endswith(".parquet") else u for u in urls
    }
    if len(kinds) != 1 or not kinds <= {"tar", "parquet"}:
        raise ConfigError(f"shards must be all .tar or all .parquet files, got {sorted(kinds)}")
    return kinds.pop()


def _scan_one(args: tuple[str, str, str]) -> Any:
    url, kind, on_error = args
    return scan_tar(url, on_error=on_error) if kind == "tar" else scan_parquet(url)


def _scan_all(urls, kind, on_error, workers, progress) -> list[Any]:
    workers = workers or os.cpu_count() or 1
    jobs = [(url, kind, on_error) for url in urls]
    if workers == 1 or len(urls) == 1:
        results = map(_scan_one, jobs)
        return [_progress(i, len(urls), progress) or r for i, r in enumerate(results, 1)]
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return [
            _progress(i, len(urls), progress) or r
            for i, r in enumerate(pool.map(_scan_one, jobs), 1)
        ]


def _progress(done: int, total: int, enabled: bool) -> None:
    if enabled:
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\rindexing [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _check_schemas(urls: Sequence[str], scans: Sequence[Any]) -> None:
    for url, scan in zip(urls, scans, strict=True):
        if scan.schema != scans[0].schema:
            raise SampleIndexError(
                f"{url}: its schema differs from {urls[0]}'s:\n{scan.schema}\nvs\n"
                f"{scans[0].schema}\nindex files of one schema together, or convert this file"
            )


def _fingerprint(kind: str, entries: Sequence[dict]) -> str:
    text = "\n".join(f"{Path(e['url']).name}\t{e['bytes']}\t{e['samples']}" for e in entries)
    return hashlib.blake2b(f"v{INDEX_VERSION}\t{kind}\n{text}".encode(), digest_size=12).hexdigest()


def _write(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    layout, offset = {}, 0
    for name, array in arrays.items():
        layout[name] = {"offset": offset, "dtype": array.dtype.str, "shape": list(array.shape)}
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    head = msgpack.packb({**header, "arrays": layout})
    data_start = -(-(len(MAGIC) + 8 + len(head)) // _ALIGN) * _ALIGN
    with atomic_write(path) as f:
        f.write(MAGIC + len(head).to_bytes(8, "little") + head)
        for name, array in arrays.items():
            f.seek(data_start + layout[name]["offset"])
            f.write(np.ascontiguousarray(array).tobytes())
        f.truncate(data_start + offset)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with open(path, "rb") as f:
            prefix = f.read(len(MAGIC) + 8)
            if len(prefix) < len(MAGIC) + 8 or prefix[: len(MAGIC)] != MAGIC:
                raise SampleIndexError(
                    f"{path}: not a resumable_loader index; rebuild it with "
                    "resumable-loader index SHARDS... --out PATH"
                )
            head_length = int.from_bytes(prefix[len(MAGIC) :], "little")
            header = msgpack.unpackb(f.read(head_length))
    except FileNotFoundError:
        raise SampleIndexError(
            f"{path}: index file not found; build it with "
            "resumable-loader index SHARDS... --out PATH"
        ) from None
    except (ValueError, msgpack.UnpackException) as error:
        raise SampleIndexError(f"{path}: corrupt index header ({error}); rebuild it") from None
    if not isinstance(header, dict) or header.get("version") != INDEX_VERSION:
        raise SampleIndexError(
            f"{path}: index format version "
            f"{header.get('version') if isinstance(header, dict) else '?'}, "
            f"this release reads {INDEX_VERSION}; rebuild the index"
        )
    data_start = -(-(len(MAGIC) + 8 + head_length) // _ALIGN) * _ALIGN
    arrays = {}
    try:
        for name, spec in header["arrays"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            if int(np.prod(shape)) == 0:  # np.memmap cannot map zero bytes
                arrays[name] = np.empty(shape, dtype=dtype)
                continue
            offset = data_start + spec["offset"]
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    except (KeyError, TypeError, ValueError) as error:
        raise SampleIndexError(
            f"{path}: corrupt or truncated index ({error}); rebuild it"
        ) from None
    return header, arrays
