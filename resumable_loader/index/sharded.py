"""The sample index of a shard set: counts, where each sample's bytes are, and a fingerprint.

Built once by scanning every shard in parallel (:mod:`resumable_loader.index.build`), stored in
one file (:mod:`resumable_loader.index.file`: msgpack header + raw arrays, a fixed-width record
per tar sample, see :mod:`resumable_loader.index.tar` for why), memory-mapped on load so worker
processes share it without copies, and pickled as its path so sending it to a worker costs
nothing.

Stale shards: :meth:`ShardedIndex.load` compares every shard's size and mtime with the index
and raises :class:`SampleIndexError` naming the shard, unless asked to ``rebuild``; the index the
datasets keep beside the shards themselves (:meth:`ShardedIndex.for_shards`) is rebuilt
automatically (and logged): its fingerprint changes with the shards, so a saved cursor from the
old shards is still refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resumable_loader.errors import ConfigError, SampleIndexError
from resumable_loader.index.build import check_policy, scan_shards
from resumable_loader.index.file import (
    INDEX_VERSION,
    SUFFIX,
    IndexVersionError,
    check_arrays,
    read_index,
    write_index,
)
from resumable_loader.index.partial import ROWS, ShardRows
from resumable_loader.index.paths import StorageOptions, expand_shards, is_url, stat_shards
from resumable_loader.index.remote import NOT_BUILT, for_remote_shards
from resumable_loader.index.tar import LENGTH, RECORD, START

logger = logging.getLogger("resumable_loader")
# Index arrays up to this many bytes (~6 million tar samples) are checked against their
# digests at every load (~15 ms); larger ones by ShardedIndex.check_digests (verify-data).
CHECKED_AT_LOAD = 256 * 2**20

Shards = str | os.PathLike | Sequence[str | os.PathLike]
_FINGERPRINT_VERSION = 2  # what fingerprints hash as the format version (see _fingerprint)
_LOGGED_SKIPS = 20  # skip lines a load logs; `resumable-loader inspect --show N` lists the rest


class ShardedIndex:
    """Which samples a shard set holds and where; built once, then memory-mapped.

    Sample ids are global: shard by shard in index order, then in order within a shard.

    Attributes:
        path: the index file.
        format: "tar" or "parquet".
        shard_urls: the shards, in index order.
        shard_sizes: samples per shard (np.int64), what a shard-local order needs.
        shard_offsets: the global id of each shard's first sample, then the total (np.int64).
        fingerprint: a hash of the format version, shard file names (not directories, so a
            moved copy keeps it), byte sizes and sample counts.
        records: tar only: a row per sample (shard, span, key place, members' payload
            offsets and sizes; columns in :mod:`resumable_loader.index.tar`), uint32 or int64.
        spans: tar only: (samples, 2) view of ``records``, each sample's byte start and length.
        checksums: tar only: (samples, fields) uint32, each member's CRC32C (0: no member).
        row_groups: Parquet only: per shard, the rows of each row group.
        fields: tar extensions, or Parquet column names, found in the shards.
        skipped: what ``on_error="skip"`` left out, one "shard: what and where" line each.
        header: the whole msgpack header of the file.
        partial: a partial copy of a remote index (:mod:`resumable_loader.index.partial`):
            which shards' rows are here; None for a whole index. Rows of a partial index are
            read only after :meth:`ensure_rows` (or :meth:`ensure_shards`) for them.
        storage_options: the remote shards' (and remote index's) endpoint, credentials and
            retry knobs, for the index's own requests (stat, rows on demand); kept when the
            index is pickled to a worker.
    """

    def __init__(
        self,
        header: dict[str, Any],
        arrays: dict[str, np.ndarray],
        path: Path,
        storage_options: StorageOptions = None,
    ) -> None:
        try:
            self.format: str = header["format"]
            self.shard_urls: list[str] = [s["url"] for s in header["shards"]]
            self.shard_sizes = np.array([s["samples"] for s in header["shards"]], np.int64)
            self.row_groups: list[list[int]] = [s.get("row_groups", []) for s in header["shards"]]
            self.fingerprint: str = header["fingerprint"]
            self.fields: list[str] = list(header["fields"])
            self.skipped: list[str] = list(header["skipped"])
        except (KeyError, TypeError) as error:
            raise SampleIndexError(
                f"{path}: corrupt index header ({error!r}); rebuild it"
            ) from None
        self.header, self.path = header, path
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.shard_offsets = np.concatenate([[0], np.cumsum(self.shard_sizes)]).astype(np.int64)
        self._arrays = arrays
        self._copies: list[str] | None = None  # set by relocated(): pickled with the index
        self.records: np.ndarray | None = arrays.get("records")
        self.checksums: np.ndarray | None = arrays.get("checksums")
        self.spans = self.records[:, START : LENGTH + 1] if self.records is not None else None
        partial = "partial" in header
        self.partial = ShardRows(path, header, self.storage_options) if partial else None
        tar = self.format == "tar"
        shapes = [a.shape if a is not None else None for a in (self.records, self.checksums)]
        samples, width = self.num_samples, len(self.fields)
        if shapes != ([(samples, RECORD + 2 * width), (samples, width)] if tar else [None, None]):
            raise SampleIndexError(
                f"{path}: corrupt index (records for {samples} {self.format} samples of "
                f"{width} fields expected, found {shapes}); rebuild it"
            )

    def check_digests(self) -> None:
        """Refuse an index whose arrays changed since they were written (a damaged file):
        their xxh3_64 against the digests of the header (version 4; a version 3 file has
        none). Reads every byte of the arrays (~20 GB/s from the page cache); a load does it
        for arrays up to ``CHECKED_AT_LOAD`` bytes, ``verify-data`` always. A partial copy's
        rows are fetched as needed, so it has nothing whole to check.

        Raises:
            SampleIndexError: naming the array that differs and the rebuild command.
        """
        if self.partial is None:
            check_arrays(self.path, self.header, self._arrays)

    @property
    def num_samples(self) -> int:
        """Samples in all shards."""
        return int(self.shard_offsets[-1])

    @property
    def num_shards(self) -> int:
        """Shards in the index (including any that hold no sample)."""
        return len(self.shard_urls)

    @property
    def mean_sample_bytes(self) -> float:
        """The mean bytes of a sample's span (of a shard's bytes per sample for a partial
        index, whose spans are not all here)."""
        if self.spans is None or self.partial is not None:
            total = sum(int(s["bytes"]) for s in self.header["shards"])
        else:
            total = int(self.spans[:, 1].sum())
        return max(1.0, total / max(self.num_samples, 1))

    def ensure_shards(self, shards: Any) -> None:
        """Make the rows of ``shards`` (ints) readable: a no-op for a whole index; for a
        partial one, fetch those not here yet."""
        if self.partial is not None:
            self.partial.ensure(np.asarray(shards, dtype=np.int64).reshape(-1))

    def ensure_rows(self, sample_ids: Any) -> None:
        """:meth:`ensure_shards` for the shards holding ``sample_ids`` (ints; negative ones
        count from the end; anything else is left for the read to refuse)."""
        if self.partial is None:
            return
        ids = np.asarray(sample_ids).reshape(-1)
        if ids.dtype.kind not in "iu" or ids.dtype == bool:
            return
        ids = np.where(ids < 0, ids + self.num_samples, ids)
        ids = ids[(ids >= 0) & (ids < self.num_samples)]
        if len(ids):
            self.ensure_shards(np.searchsorted(self.shard_offsets, ids, side="right") - 1)

    def shard_etag(self, shard: int) -> str | None:
        """The ETag ``shard`` had when indexed (its recorded version, when the store gave one
        rather than an mtime), or None: what a read of it makes its condition (S3
        ``If-Match``), so bytes of a shard changed since are refused, never served or cached."""
        version = self.header["shards"][shard]["mtime"]
        return version if isinstance(version, str) and is_url(self.shard_urls[shard]) else None

    def locate(self, sample_id: int) -> tuple[int, int]:
        """(shard, index within the shard) of a global sample id in [0, num_samples)."""
        if not 0 <= sample_id < self.num_samples:
            raise IndexError(f"sample id {sample_id} out of range [0, {self.num_samples})")
        shard = int(np.searchsorted(self.shard_offsets, sample_id, side="right")) - 1
        return shard, sample_id - int(self.shard_offsets[shard])

    def check_shards(self, stats: Sequence[tuple[int, float | str]] | None = None) -> None:
        """Raise unless every shard still has the size and mtime (ETag, remote) it had when
        indexed.

        Args:
            stats: the shards' (size, stamp) now, in index order, if already known (one rank
                lists them for a whole job); default: stat them (remote shards that share a
                prefix: one listing, see :func:`~resumable_loader.index.paths.stat_shards`).

        Raises:
            SampleIndexError: a shard changed; the message names it and both values.
            ShardError: a shard is gone.
        """
        if stats is None:
            stats = stat_shards(self.shard_urls, self.storage_options)
        for shard, stat in enumerate(stats):
            self.check_shard(shard, stat)

    def check_shard(self, shard: int, stat: tuple[int, float | str]) -> None:
        """Raise unless ``stat``, the (size, stamp) of ``shard`` now, is what was indexed.

        Raises:
            SampleIndexError: as :meth:`check_shards`.
        """
        entry = self.header["shards"][shard]
        size, mtime = stat
        if size != entry["bytes"] or mtime != entry["mtime"]:
            raise SampleIndexError(
                f"{entry['url']}: changed since it was indexed in {self.path} (size "
                f"{entry['bytes']} -> {size}, mtime {entry['mtime']} -> {mtime}); rebuild "
                f"the index (resumable-loader index ... --out {self.path}, or "
                "ShardedIndex.load(..., rebuild=True)), or restore the shard"
            )

    def relocated(self, urls: Sequence[str]) -> ShardedIndex:
        """This index over copies of its shards at ``urls``: what checks copied shards against
        the index taken from the originals (``verify-data --index``). A copy is matched to its
        original by file name (in index order if every name differs), must have the recorded
        byte size, and is taken with its mtime (or ETag) as it is now.

        Raises:
            SampleIndexError: another number of shards, a copy of another size, or copies
                some of which have their original's name and some not.
            ShardError: a copy is missing.
        """
        entries = self.header["shards"]
        if len(urls) != len(entries):
            raise SampleIndexError(
                f"{self.path} indexes {len(entries)} shards, but {len(urls)} copies were given; "
                "give the copies of all of them"
            )
        by_name = {os.path.basename(url): url for url in urls}
        names = [os.path.basename(entry["url"]) for entry in entries]
        if len(by_name) == len(urls) and set(names) == set(by_name):
            urls = [by_name[name] for name in names]
        elif set(names) & set(by_name):  # some named as originals, some not: which is which?
            strays = sorted(set(by_name) - set(names))
            raise SampleIndexError(
                f"copies {strays[:3]} match no shard name of {self.path} (it lacks copies of "
                f"{sorted(set(names) - set(by_name))[:3]}); name the copies as the originals, "
                "or give all of them under other names, in the index's order"
            )
        shards = []
        for entry, url, (size, stamp) in zip(
            entries, urls, stat_shards(urls, self.storage_options), strict=True
        ):
            if size != entry["bytes"]:
                raise SampleIndexError(
                    f"{url}: {size} bytes, but {entry['url']}, whose copy it is taken for, had "
                    f"{entry['bytes']} when indexed in {self.path}: not a whole copy; copy it "
                    "again (or give the copies in the index's order)"
                )
            shards.append(dict(entry, url=url, mtime=stamp))
        copy = ShardedIndex(
            dict(self.header, shards=shards), self._arrays, self.path, self.storage_options
        )
        copy._copies = list(urls)
        return copy

    def __reduce__(self) -> tuple[Any, ...]:
        return _reopen, (str(self.path), self.fingerprint, self.storage_options, self._copies)

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(format={self.format!r}, shards={self.num_shards}, "
            f"samples={self.num_samples}, fingerprint={self.fingerprint!r})"
        )

    @classmethod
    def build(
        cls,
        shards: Shards,
        *,
        out: str | os.PathLike | None = None,
        workers: int | None = None,
        progress: bool = True,
        on_error: str = "raise",
        storage_options: StorageOptions = None,
    ) -> ShardedIndex:
        """Index ``shards`` in parallel and write the index atomically to ``out``.

        Args:
            shards: paths, globs, brace patterns or fsspec URLs, all ``.tar`` or all
                ``.parquet``.
            out: the index file; default :func:`default_index_path` (beside the first shard).
            workers: processes (threads for URLs) scanning shards; default: the CPU count.
            progress: draw a progress bar on stderr.
            on_error: "raise" (default) at the first bad sample or file, or "skip" it
                deterministically: logged, listed in :attr:`skipped`, and the same on every
                run (a damaged or foreign Parquet file then counts zero rows).
            storage_options: remote shards' endpoint, credentials and retry knobs (see
                :func:`~resumable_loader.storage.client_for`); default: the environment's.

        Raises:
            ShardError: a missing or bad shard; SampleIndexError, ConfigError.
        """
        built = cls._build(
            shards,
            out=out,
            workers=workers,
            progress=progress,
            on_error=on_error,
            storage_options=storage_options,
        )
        return _log_skipped(built)

    @classmethod
    def _build(
        cls,
        shards: Shards,
        *,
        out: str | os.PathLike | None,
        workers: int | None,
        progress: bool,
        on_error: str,
        storage_options: StorageOptions = None,
    ) -> ShardedIndex:
        """:meth:`build` without logging what it skipped."""
        check_policy(on_error)
        urls = expand_shards(shards, storage_options)
        path = Path(out) if out is not None else default_index_path(urls)
        header, arrays = scan_shards(
            urls,
            workers=workers,
            progress=progress,
            on_error=on_error,
            storage_options=storage_options,
        )
        header["fingerprint"] = _fingerprint(header)
        write_index(path, header, arrays)
        return cls._load(path, verify=False, rebuild=False, storage_options=storage_options)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        verify: bool = True,
        rebuild: bool = False,
        storage_options: StorageOptions = None,
    ) -> ShardedIndex:
        """Memory-map an index file.

        An index built with ``on_error="skip"`` that left samples out says so at every load
        (one warning on the ``resumable_loader`` logger listing them), so a run reusing it
        never skips silently.

        Args:
            path: the index file.
            verify: stat every shard and refuse an index that no longer matches them.
            rebuild: instead of refusing, rebuild a stale index in place from its recorded
                shard list and ``on_error`` policy.
            storage_options: remote shards' endpoint, credentials and retry knobs, for the
                checks, a rebuild and the index's later requests.

        Raises:
            SampleIndexError: a missing or corrupt file, another format version, or a shard
                that changed since (unless ``rebuild``).
        """
        loaded = cls._load(path, verify=verify, rebuild=rebuild, storage_options=storage_options)
        return _log_skipped(loaded)

    @classmethod
    def _load(
        cls,
        path: str | os.PathLike,
        *,
        verify: bool,
        rebuild: bool,
        storage_options: StorageOptions = None,
    ) -> ShardedIndex:
        """:meth:`load` without logging what the index skipped."""
        path = Path(path).absolute()  # workers unpickling it may run elsewhere
        try:
            header, arrays = read_index(path)
        except IndexVersionError as error:  # an older format: rebuilt from its shard list
            if not rebuild or error.shards is None:
                raise
            logger.info("%s: upgrading the index to format version %d", path, INDEX_VERSION)
            return cls._build(
                error.shards,
                out=path,
                workers=None,
                progress=True,
                on_error=error.on_error,
                storage_options=storage_options,
            )
        index = cls(header, arrays, path, storage_options)
        if verify and sum(array.nbytes for array in arrays.values()) <= CHECKED_AT_LOAD:
            index.check_digests()
        if verify or rebuild:
            try:
                index.check_shards()
            except SampleIndexError:
                if not rebuild:
                    raise
                logger.info("%s: shards changed since indexed; rebuilding", path)
                return cls._build(
                    index.shard_urls,
                    out=path,
                    workers=None,
                    progress=True,
                    on_error=header["on_error"],
                    storage_options=storage_options,
                )
        return index

    @classmethod
    def for_shards(
        cls,
        shards: Shards,
        *,
        cache_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
        workers: int | None = None,
        index_url: str | None = None,
        index_rows: str = "all",
        storage_options: StorageOptions = None,
        build: bool = True,
    ) -> ShardedIndex:
        """The index of ``shards`` at :func:`default_index_path`: loaded if it is up to date
        (and was built with a compatible ``on_error``), else built or rebuilt there (unless
        ``build`` is False).

        Remote shards' index is also kept in the bucket (``index_url``, default beside the
        first shard): fetched from there rather than rebuilt, and when built (each rank of a
        torch.distributed job scanning its share of the shards) written there for other runs
        and nodes (:mod:`resumable_loader.index.remote`).

        Args:
            shards: as for :meth:`build`.
            cache_dir: where to keep the index; default beside the first local shard.
            on_error: as for :meth:`build`.
            workers: as for :meth:`build`.
            index_url: remote shards only: where their index is kept in storage.
            index_rows: remote shards only: "all" (fetch the whole index) or "on_demand":
                when the index is in storage, fetch its header (the shard list) and each
                shard's rows when a read first needs them (:mod:`~resumable_loader.index.partial`),
                what a shard-local order over many shards wants. Local shards' index is memory
                mapped, so only the pages read are loaded either way.
            storage_options: remote shards only: the endpoint, credentials and retry knobs
                (see :func:`~resumable_loader.storage.client_for`) of every request made for
                the index (listing, fetch, scans, upload), and of its later ones; the deadline
                bounds each. Default: the environment's.
            build: False: never build one; what checks shards against the index taken when
                they were known good (``verify-data``) wants, since an index built from the
                bytes at hand matches them whatever they hold.

        Raises:
            SampleIndexError: with ``build=False``, no current index of ``shards``.
        """
        check_policy(on_error)
        if index_rows not in ROWS:
            raise ConfigError(f"index_rows must be one of {ROWS}, got {index_rows!r}")
        urls = expand_shards(shards, storage_options)
        path = default_index_path(urls, cache_dir)
        if is_url(urls[0]):
            return for_remote_shards(
                cls,
                urls,
                path,
                index_url=index_url,
                on_error=on_error,
                workers=workers,
                on_demand=index_rows == "on_demand",
                storage_options=storage_options,
                build=build,
            )
        if index_url is not None:
            raise ConfigError(
                f"index_url={index_url!r} is for shards in storage, and {urls[0]} is a local "
                "file (its index is kept beside it); leave index_url out, or name the shards "
                "by URL"
            )
        stale = f"no index of these shards at {path}"
        if path.exists():
            try:
                index = cls._load(path, verify=True, rebuild=False)
            except SampleIndexError as error:
                logger.info("rebuilding the index: %s", error)
                stale = str(error)
            else:
                if index.shard_urls == urls and (on_error == "skip" or not index.skipped):
                    return _log_skipped(index)
                if index.shard_urls == urls:
                    stale = (
                        f"the index at {path} left out {len(index.skipped)} damaged sample(s) "
                        "when it was built with on_error='skip', and on_error='raise' refuses "
                        "it; pass on_error='skip' (--on-error skip) to use it"
                    )
        if not build:
            raise SampleIndexError(f"{stale}; {NOT_BUILT}")
        # a progress bar as tqdm shows one: on a terminal only, never into a log file
        progress = sys.stderr.isatty()
        return cls.build(urls, out=path, workers=workers, progress=progress, on_error=on_error)


def default_index_path(urls: Sequence[str], cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the index of ``urls`` lives by default.

    ``.<first shard>.<hash of the shard list>.rlindex`` beside the first shard when it is
    local and no ``cache_dir`` is given, else ``<first shard>.<hash>.rlindex`` in ``cache_dir``
    (default ``~/.cache/resumable_loader``).
    """
    digest = hashlib.blake2b("\n".join(urls).encode(), digest_size=8).hexdigest()
    name = f"{Path(urls[0]).name}.{digest}{SUFFIX}"
    if cache_dir is None and not is_url(urls[0]):
        return Path(urls[0]).parent / f".{name}"
    return Path(cache_dir or Path.home() / ".cache" / "resumable_loader") / name


def _log_skipped(index: ShardedIndex) -> ShardedIndex:
    """Warn, once per build or load, of the samples or files the index leaves out.

    Loads log as well as builds, so a run that reuses an index still says what it skips;
    worker processes, which unpickle the index (:func:`_reopen`), do not repeat it.
    """
    skipped = index.skipped
    if skipped:
        shown = "".join(f"\n  {line}" for line in skipped[:_LOGGED_SKIPS])
        more = len(skipped) - _LOGGED_SKIPS
        if more > 0:
            shown += (
                f"\n  ... and {more} more (resumable-loader inspect {index.path} "
                f"--show {len(skipped)} lists them all)"
            )
        logger.warning(
            "%s leaves out (built with on_error='skip'; the same in every run and resume):%s",
            index.path,
            shown,
        )
    return index


def _fingerprint(header: dict[str, Any]) -> str:
    # The sample set's identity, not the file's: version 3's new record format left the
    # samples as version 2 had them, so it keeps their fingerprints (and saved cursors).
    lines = [f"v{_FINGERPRINT_VERSION}\t{header['format']}"]
    lines += [f"{Path(s['url']).name}\t{s['bytes']}\t{s['samples']}" for s in header["shards"]]
    return hashlib.blake2b("\n".join(lines).encode(), digest_size=12).hexdigest()


def _reopen(
    path: str,
    fingerprint: str,
    storage_options: StorageOptions = None,
    copies: list[str] | None = None,
) -> ShardedIndex:
    """Unpickle an index: map its file again (cheap), refusing a file rebuilt since (and
    relocated to the same copies)."""
    # the parent logged skips
    index = ShardedIndex._load(path, verify=False, rebuild=False, storage_options=storage_options)
    if index.fingerprint != fingerprint:
        raise SampleIndexError(
            f"{path}: the index was rebuilt (fingerprint {fingerprint} -> {index.fingerprint}) "
            "while a copy of it was in use; restart the job"
        )
    return index if copies is None else index.relocated(copies)
