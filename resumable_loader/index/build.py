"""Scanning a shard list in parallel into an index header and arrays, with a progress bar."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.index.parquet import ParquetScan, scan_parquet
from resumable_loader.index.paths import StorageOptions, is_url, stat_shards
from resumable_loader.index.remote import on_rank_zero, split_across_ranks
from resumable_loader.index.tar import TarScan, scan_tar
from resumable_loader.index.tar import records as tar_records

ON_ERROR = ("raise", "skip")
# Threads scanning remote shards at once: each streams its shard (several ranged reads in
# flight), so a build runs at the link's bandwidth rather than at one shard's round trips.
REMOTE_THREADS = 16
_BAR_WIDTH = 30


def check_policy(on_error: str) -> None:
    """Refuse an ``on_error`` other than "raise" or "skip"."""
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def scan_shards(
    urls: Sequence[str],
    *,
    workers: int | None,
    progress: bool,
    on_error: str,
    storage_options: StorageOptions = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The index header (all but the fingerprint) and arrays of ``urls``, remote ones read
    with ``storage_options`` (endpoint, credentials, retry knobs).

    Shards are stat'ed before they are scanned, so a shard written during the scan shows up
    as changed on the next load instead of being trusted; remote ones by rank 0 of a process
    group for all (one listing a job, and its failure raised on every rank, as a scan's is).
    """
    kind = _format_of(urls)
    if any(is_url(url) for url in urls):  # the ranks build together (see _scan_all)
        stats = on_rank_zero(lambda: stat_shards(urls, storage_options))
    else:
        stats = stat_shards(urls, storage_options)
    scans = _scan_all(urls, kind, on_error, workers, progress, storage_options)
    header: dict[str, Any] = {"format": kind, "on_error": on_error, "schema": None}
    arrays = {}
    if kind == "tar":
        header["fields"] = sorted(set().union(*(s.extensions for s in scans)))
        header["magic"] = all(s.magic for s in scans)  # the fast read check looks for it
        arrays.update(tar_records(scans, header["fields"]))
    else:
        header["schema"], header["fields"] = _common_schema(urls, scans, on_error)
    entries, skipped = [], []
    for url, (size, mtime), scan in zip(urls, stats, scans, strict=True):
        entry = {"url": url, "bytes": size, "mtime": mtime}
        if isinstance(scan, TarScan):
            entry["samples"] = len(scan.spans)
        else:
            entry["samples"], entry["row_groups"] = sum(scan.row_groups), scan.row_groups
        entries.append(entry)
        skipped += [f"{url}: {reason}" for reason in scan.skipped]
    header.update(shards=entries, skipped=skipped)
    return header, arrays


_COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def _format_of(urls: Sequence[str]) -> str:
    """The format of every one of ``urls``, by its suffix: "tar" or "parquet"."""
    compressed = [url for url in urls if url.lower().endswith(_COMPRESSED_TARS)]
    if compressed:
        raise ConfigError(
            f"{compressed[0]}: a compressed tar, whose samples cannot be read in place; "
            "decompress the shards (e.g. gunzip) and index the .tar files"
        )
    kinds = {url.rsplit(".", 1)[-1].lower() if "." in url else url for url in urls}
    if len(kinds) != 1 or not kinds <= {"tar", "parquet"}:
        raise ConfigError(
            f"shards must be all .tar or all .parquet files, got {sorted(kinds)}; index each "
            "format separately"
        )
    return kinds.pop()


def _common_schema(
    urls: Sequence[str], scans: Sequence[ParquetScan], on_error: str
) -> tuple[str | None, list[str]]:
    """The schema of the first readable file; other files must match it (or, with "skip",
    count no rows)."""
    reference = next(((u, s) for u, s in zip(urls, scans, strict=True) if s.schema), None)
    if reference is None:
        return None, []
    first_url, first = reference
    for url, scan in zip(urls, scans, strict=True):
        if not scan.schema or scan.schema == first.schema:
            continue
        message = (
            f"its schema differs from {first_url}'s:\n{scan.schema}\nvs\n{first.schema}\n"
            "index files of one schema together, or convert this file"
        )
        if on_error != "skip":
            raise ShardError(f"{url}: {message}")
        scan.row_groups, scan.skipped = [], [*scan.skipped, message.replace("\n", " ")]
    return first.schema, first.columns


# A shard to scan: its URL, format, on_error policy and storage_options.
_Job = tuple[str, str, str, StorageOptions]


def _scan_one(job: _Job) -> TarScan | ParquetScan:
    url, kind, on_error, storage_options = job
    scan = scan_tar if kind == "tar" else scan_parquet
    return scan(url, on_error=on_error, storage_options=storage_options)


def _scan_all(
    urls: Sequence[str],
    kind: str,
    on_error: str,
    workers: int | None,
    progress: bool,
    storage_options: StorageOptions,
) -> list[TarScan | ParquetScan]:
    """Scan every shard: processes for local files (header parsing holds the GIL), threads for
    URLs (``REMOTE_THREADS`` by default: they wait on the network; storage clients are not
    fork-safe). Under a torch.distributed process group, remote shards are split across the
    ranks (rank r scans shards r, r+W, ...) and the scans gathered on every rank.

    A failure raises the error of the first failing shard in list order, whichever finished
    first, so a build over several bad shards always reports the same one.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    jobs = [(url, kind, on_error, storage_options) for url in urls]
    if any(is_url(url) for url in urls):
        return split_across_ranks(
            jobs, lambda part: _scan_jobs(part, workers or REMOTE_THREADS, progress, remote=True)
        )
    return _scan_jobs(jobs, workers or os.cpu_count() or 1, progress, remote=False)


def _scan_jobs(
    jobs: Sequence[_Job], workers: int, progress: bool, *, remote: bool
) -> list[TarScan | ParquetScan]:
    """Scan ``jobs`` on up to ``workers`` threads (``remote``) or processes."""
    workers = min(workers, len(jobs))
    bar = _Progress(len(jobs), enabled=progress)
    try:
        if workers <= 1:
            return [bar.advance(_scan_one(job)) for job in jobs]
        if remote:
            pool: concurrent.futures.Executor = concurrent.futures.ThreadPoolExecutor(workers)
        else:
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
        with pool:
            try:
                return _gather(pool, jobs, bar)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.end()  # a failed build leaves no unfinished line on the terminal


def _gather(
    pool: concurrent.futures.Executor, jobs: Sequence[_Job], bar: _Progress
) -> list[TarScan | ParquetScan]:
    """Run ``jobs`` on ``pool``; on failure, raise the first failing job's error in list order.

    A failure cancels the jobs after it (they cannot change which error is reported) and waits
    for the ones before it, which might fail too.
    """
    futures = [pool.submit(_scan_one, job) for job in jobs]
    position = {future: i for i, future in enumerate(futures)}
    first_failure = len(futures)
    for future in concurrent.futures.as_completed(futures):
        if future.cancelled():
            continue
        if future.exception() is None:
            bar.advance(None)
        elif position[future] < first_failure:
            first_failure = position[future]
            for later in futures[first_failure + 1 :]:
                later.cancel()
    return [future.result() for future in futures]  # raises the first failure in list order


class _Progress:
    """``indexing [#####.....] 12/40 shards`` on stderr, redrawn in place."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled

    def advance(self, result: Any) -> Any:
        self.done += 1
        if self.enabled:
            filled = _BAR_WIDTH * self.done // self.total
            bar = "#" * filled + "." * (_BAR_WIDTH - filled)
            sys.stderr.write(f"\rindexing [{bar}] {self.done}/{self.total} shards")
            sys.stderr.flush()
        return result

    def end(self) -> None:
        """End the bar's line, if one was drawn (complete or not)."""
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()
