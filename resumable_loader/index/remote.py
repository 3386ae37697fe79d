"""The index of remote shards: kept beside them (or at a given URL), so later runs and other nodes
fetch it instead of scanning the shards again, and built once per job with the shards split
across the ranks of a torch.distributed process group.

Every decision (use the local copy, fetch, build) is taken by all ranks together, so no rank
waits in a collective the others skipped; a rank's failure is raised on every rank.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from resumable_loader.errors import SampleIndexError, ShardError
from resumable_loader.index.atomic import atomic_write
from resumable_loader.index.file import SUFFIX
from resumable_loader.index.partial import fetch_partial, partial_path
from resumable_loader.index.paths import StorageOptions, fork_safe, stat_shards
from resumable_loader.storage.client import client_for

logger = logging.getLogger("resumable_loader")
T = TypeVar("T")
_COPY_CHUNK = 8 * 2**20


# Why for_shards(build=False) refused, and what to do.
NOT_BUILT = (
    "an index built now would be taken from the shards' current bytes and match them "
    "whatever they hold, so none is built: build the index where the shards are known good "
    "(resumable-loader index ... --out FILE) and check copies against that file"
)


def remote_index_url(urls: Sequence[str]) -> str:
    """Where the index of remote shards ``urls`` is kept: beside the first shard, named
    ``<first shard>.<hash of the shard list>.rlindex`` (the local cache's name, without the dot).
    """
    digest = hashlib.blake2b("\n".join(urls).encode(), digest_size=8).hexdigest()
    parent, _, name = urls[0].rpartition("/")
    return f"{parent}/{name}.{digest}{SUFFIX}"


def fetch(url: str, path: Path, storage_options: StorageOptions = None) -> bool:
    """Copy the index at ``url`` to ``path`` (atomically, streamed); False if there is none or
    it cannot be read (logged: the caller builds instead)."""
    from resumable_loader.storage.stream import RemoteFile

    client = client_for(url, fork_safe(storage_options))
    try:
        size = client.size(url)
        with RemoteFile(client, url, size) as source, atomic_write(path) as target:
            while chunk := source.read(_COPY_CHUNK):
                target.write(chunk)
    except ShardError as error:
        if not isinstance(error.__cause__, FileNotFoundError):
            logger.warning("cannot fetch the index %s (%s); building it", url, error)
        return False
    logger.info("fetched the index %s to %s", url, path)
    return True


def upload(path: Path, url: str, storage_options: StorageOptions = None) -> None:
    """Upload the index file ``path`` to ``url``, where datasets of the same shards fetch it.

    Raises:
        StorageError: the upload failed (a missing bucket, refused credentials, an outage
            longer than the deadline).
    """
    client_for(url, fork_safe(storage_options)).put(url, path.read_bytes())


def publish(path: Path, url: str, storage_options: StorageOptions = None) -> None:
    """:func:`upload`, for other runs and nodes; a failure (a read-only bucket) is logged, not
    raised: this run has its index."""
    try:
        upload(path, url, storage_options)
    except (ShardError, OSError) as error:
        logger.warning(
            "cannot write the index to %s (%s); each new node will scan the shards again; "
            "pass a writable index URL, or copy %s there",
            url,
            error,
            path,
        )
    else:
        logger.info("wrote the index to %s", url)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default torch.distributed process group, (0, 1) without one."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def everyone(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (just ``flag`` without a process group)."""
    return all(gather(flag))


def gather(value: T) -> list[T]:
    """``value`` of every rank, by rank (``[value]`` without a process group)."""
    _, world = rank_and_world()
    if world == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values


def split_across_ranks(jobs: Sequence[Any], run: Callable[[Sequence[Any]], list[T]]) -> list[T]:
    """``run(jobs)``, with the jobs split across ranks (rank r runs jobs r, r+W, ...) and the
    results gathered back into job order on every rank. An error on any rank is raised on
    every rank (the lowest failing rank's), so none waits for the others forever.
    """
    rank, world = rank_and_world()
    if world == 1:
        return run(jobs)
    try:
        mine: tuple[bool, Any] = (True, run(jobs[rank::world]))
    except Exception as error:  # sent to every rank, raised below
        mine = (False, error)
    parts = gather(mine)
    failures = [part for ok, part in parts if not ok]
    if failures:
        raise failures[0]
    results: list[Any] = [None] * len(jobs)
    for r, (_, part) in enumerate(parts):
        results[r::world] = part
    return results


def for_remote_shards(
    cls: Any,
    urls: list[str],
    path: Path,
    *,
    index_url: str | None,
    on_error: str,
    workers: int | None,
    on_demand: bool = False,
    storage_options: StorageOptions = None,
    build: bool = True,
) -> Any:
    """The index of remote shards ``urls``, kept locally at ``path``: the local copy if every
    rank has a current one (checked against the shards' sizes and ETags, listed once by rank 0
    for the whole job); else fetched from ``index_url`` (default :func:`remote_index_url`)
    by the ranks that lack it; else built by all ranks together (each scanning its part) and
    published there by rank 0. ``cls`` is :class:`~resumable_loader.index.sharded.ShardedIndex`.

    ``on_demand``: short of a whole local copy, use or fetch a partial one
    (:func:`~resumable_loader.index.partial.fetch_partial`: the header now, each shard's rows
    when read) instead of the whole index.

    ``storage_options`` (endpoint, credentials, retry knobs) apply to every request: the
    listing, the fetch, the scans and the upload; the index keeps them for its later reads.
    ``build=False``: raise SampleIndexError where the index would be built.
    """
    stats = on_rank_zero(lambda: stat_shards(urls, storage_options))

    def current(at: Path) -> Any:
        return _current(cls, at, urls, on_error, stats, storage_options)

    index = current(path)
    if everyone(index is not None):
        return index
    remote = index_url or remote_index_url(urls)
    if on_demand:
        partial = partial_path(path)
        index = current(partial)
        if index is None and fetch_partial(remote, partial, storage_options):
            index = current(partial)
        if everyone(index is not None):
            return index
        index = current(path)
    if index is None and fetch(remote, path, storage_options):
        index = current(path)
    if everyone(index is not None):
        return index
    if not build:
        raise SampleIndexError(
            f"no current index of these shards at {path} or {remote} (missing, or the shards "
            f"changed since it was built); {NOT_BUILT}"
        )
    index = cls.build(
        urls,
        out=path,
        workers=workers,
        progress=False,
        on_error=on_error,
        storage_options=storage_options,
    )
    if rank_and_world()[0] == 0:
        publish(path, remote, storage_options)
    return index


def _current(
    cls: Any,
    path: Path,
    urls: list[str],
    on_error: str,
    stats: list[tuple[int, float | str]],
    storage_options: StorageOptions,
) -> Any:
    """The index at ``path`` if it is there, matches the shards (``stats``: their sizes and
    ETags now) and was built with a compatible ``on_error``; else None."""
    if not path.exists():
        return None
    try:
        index = cls.load(path, verify=False, storage_options=storage_options)
    except SampleIndexError as error:
        logger.info("not using %s: %s", path, error)
        return None
    if index.shard_urls != urls or (on_error != "skip" and index.skipped):
        return None
    try:
        index.check_shards(stats)
    except SampleIndexError as error:
        logger.info("not using %s: %s", path, error)
        return None
    return index


def on_rank_zero(run: Callable[[], T]) -> T:
    """``run()`` on rank 0, its result (or its error, raised) on every rank: one set of
    requests for the whole job instead of one per rank."""
    rank, world = rank_and_world()
    if world == 1:
        return run()
    mine: tuple[bool, Any] = (True, None)
    if rank == 0:
        try:
            mine = (True, run())
        except Exception as error:  # raised on every rank below
            mine = (False, error)
    ok, value = gather(mine)[0]
    if not ok:
        raise value
    return value
