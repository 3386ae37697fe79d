"""Shard lists: local paths, globs, brace patterns and fsspec URLs, expanded in a stable order."""

from __future__ import annotations

import collections
import glob
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import braceexpand

from resumable_loader.errors import ConfigError, ShardError, StorageError
from resumable_loader.index.file import SUFFIX

# Remote shards under one prefix from which a listing replaces a HEAD request each.
LISTED = 8
# Options of the index's requests (stat, scan, fetch, publish) and of the datasets' reads: the
# endpoint, credentials and retry knobs of ``storage_options`` (see client_for).
StorageOptions = Mapping[str, Any] | None
# "s3:/bucket/key": a URL with one slash after its scheme, which would be read as a local path.
_ONE_SLASH_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):/(?P<rest>[^/].*)")


def fork_safe(storage_options: StorageOptions) -> dict[str, Any]:
    """``storage_options`` for the index's requests: through fsspec's client, which survives a
    fork, so that a main process that scans shards or fetches the index can fork DataLoader
    workers that read through obstore (docs/remote.md, "Fork safety"); the endpoint,
    credentials and retry knobs are the dataset's own."""
    return {**(storage_options or {}), "client": "fsspec"}


def is_url(path: str) -> bool:
    """Whether ``path`` names a remote file through fsspec (``s3://``, ``gs://``, ...)."""
    return "://" in path and not path.startswith("file://")


def expand_shards(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    storage_options: StorageOptions = None,
) -> list[str]:
    """Every shard ``spec`` names, in order: brace patterns expand, globs match (sorted).

    Local paths become absolute (``file://`` dropped, ``~`` expanded), so an index records
    where its shards are whatever the working directory; other URLs stay as given.

    Args:
        spec: one pattern or a list of them, e.g. ``"train-{000000..000127}.tar"``,
            ``"data/*.parquet"`` or ``"s3://bucket/shard-{0..9}.tar"``.
        storage_options: the endpoint, credentials and retry knobs a remote glob is listed
            with (see :func:`fork_safe`); default: the environment's.

    Raises:
        ShardError: a glob that matches nothing.
        ConfigError: no patterns, unbalanced braces, a shard named twice, or a directory (the
            message suggests a glob of its files).
    """
    patterns = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    shards: list[str] = []
    for pattern in patterns:
        try:
            expanded = list(braceexpand.braceexpand(os.fspath(pattern)))
        except braceexpand.UnbalancedBracesError as error:
            raise ConfigError(f"{pattern}: {error}; check the brace pattern") from None
        for path in expanded:
            path = path.removeprefix("file://")
            _refuse_one_slash_url(path)
            if not is_url(path):
                path = os.path.abspath(os.path.expanduser(path))
            if glob.has_magic(path) and (is_url(path) or not os.path.isfile(path)):
                matches = _glob(path, storage_options)  # a file named "a[1].tar" is itself
                if not matches:
                    raise ShardError(
                        f"{path}: the pattern matches no file; check the path (in a name, "
                        f"*, ? and [ are glob characters: write [[] for a [)"
                    )
                shards.extend(matches)
            elif os.path.isdir(path):
                raise ConfigError(_directory_hint(path))
            else:
                shards.append(path)
    if not shards:
        raise ConfigError(f"no shards given ({spec!r}); pass paths, globs or brace patterns")
    seen: dict[str, str] = {}  # the file (links resolved) -> the name it was given as
    for shard in shards:
        file = shard if is_url(shard) else os.path.realpath(shard)
        if file in seen:
            also = "" if seen[file] == shard else f" (as {seen[file]}: the same file)"
            raise ConfigError(
                f"{shard}: named twice in the shard list{also} (overlapping patterns, or a "
                "link?); each shard may appear once, or its samples would be read twice an epoch"
            )
        seen[file] = shard
    return shards


def _refuse_one_slash_url(path: str) -> None:
    """Refuse ``s3:/bucket/key`` when no such local file exists: a URL missing a slash, which
    would otherwise be looked for under the working directory and reported not found there."""
    typo = _ONE_SLASH_URL.fullmatch(path)
    if typo and not os.path.exists(path):
        scheme, rest = typo["scheme"], typo["rest"]
        raise ConfigError(
            f"{path}: looks like a URL with one slash after '{scheme}:'; write "
            f"'{scheme}://{rest}' (or './{path}' for a local path)"
        )


def _directory_hint(path: str) -> str:
    """The error for a directory given as a shard: globs of its files, commonest suffix first."""
    names = [name for name in os.listdir(path) if not name.startswith(".")]
    suffixes = collections.Counter(os.path.splitext(name)[1] for name in names)
    del suffixes[""]  # files without a suffix
    globs = " or ".join(
        f"'{os.path.join(path, '*' + suffix)}'" for suffix, _ in suffixes.most_common(3)
    )
    return (
        f"{path}: a directory, not a shard; pass the shards in it as a glob, e.g. "
        f"{globs or repr(os.path.join(path, '*.tar'))}"
    )


def _glob(pattern: str, storage_options: StorageOptions) -> list[str]:
    """The files ``pattern`` matches, sorted, less index files: an index published beside
    remote shards (``<first shard>.<hash>.rlindex``) matches a glob of them, and is never one.
    A remote pattern is listed through the storage client, with ``storage_options``."""
    if not is_url(pattern):
        matches = glob.glob(pattern)
    else:
        from resumable_loader.storage.client import client_for

        matches = client_for(pattern, fork_safe(storage_options)).glob(pattern)
    return sorted(match for match in matches if not match.endswith(SUFFIX))


def stat_shard(path: str, storage_options: StorageOptions = None) -> tuple[int, float | str]:
    """(size in bytes, modification stamp) of a shard, local or remote.

    The stamp is the mtime in seconds where the filesystem reports one, else whatever version
    text it gives (an ETag, say); the index compares it for equality only.

    ``storage_options``: a remote shard's (see :func:`fork_safe`).

    Raises:
        ShardError: the shard does not exist or cannot be read.
    """
    if is_url(path):
        return _stat_remote(path, storage_options)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard not found; check the path or the shard list") from None
    except OSError as error:
        raise ShardError(f"{path}: cannot read the shard ({error})") from None
    return info.st_size, info.st_mtime


def stat_shards(
    paths: Sequence[str], storage_options: StorageOptions = None
) -> list[tuple[int, float | str]]:
    """:func:`stat_shard` of each path, remote shards that share a parent prefix
    (``LISTED`` or more of them) listed once: at 10^5 shards, 100 listing requests instead of
    10^5 HEADs. A shard the listing lacks is stat'ed alone (and reported missing)."""
    parents: dict[str, list[str]] = collections.defaultdict(list)
    for path in paths:
        if is_url(path):
            parents[path.rpartition("/")[0]].append(path)
    listed: dict[str, tuple[int, float | str]] = {}
    for parent, members in parents.items():
        if len(members) >= LISTED:
            from resumable_loader.storage.client import client_for

            try:
                found = client_for(parent, fork_safe(storage_options)).stats(parent)
            except StorageError:  # no listing permission, say: a HEAD a shard below
                continue
            listed.update({url: (stat.size, stat.version) for url, stat in found.items()})
    return [listed[path] if path in listed else stat_shard(path, storage_options) for path in paths]


def _stat_remote(path: str, storage_options: StorageOptions) -> tuple[int, float | str]:
    """(size, version) of a remote shard through the storage client, retried: the version is
    the object's ETag where the store has one (it changes with the content), else its mtime."""
    from resumable_loader.storage.client import client_for

    try:
        stat = client_for(path, fork_safe(storage_options)).stat(path)
    except StorageError as error:
        if isinstance(error.__cause__, FileNotFoundError):
            raise ShardError(f"{path}: shard not found; check the path or the shard list") from None
        if isinstance(error.__cause__, IsADirectoryError):
            raise ShardError(
                f"{path}: not a file ({error.__cause__}); name the shard files"
            ) from None
        raise
    return stat.size, stat.version


def open_shard(path: str, storage_options: StorageOptions = None) -> BinaryIO:
    """A binary, seekable file object for a local path or a URL; a URL's is a
    :class:`~resumable_loader.storage.stream.RemoteFile` that streams the object in large
    ranged reads, several in flight (a scan runs at the link's bandwidth), through the
    fork-safe client with ``storage_options``.

    Raises:
        ShardError: the shard does not exist or cannot be opened.
    """
    try:
        if is_url(path):
            from resumable_loader.storage.client import client_for
            from resumable_loader.storage.stream import RemoteFile

            size, _ = _stat_remote(path, storage_options)
            client = client_for(path, fork_safe(storage_options))
            return RemoteFile(client, path, size)  # type: ignore[return-value]
        return open(path, "rb")
    except FileNotFoundError:
        raise ShardError(f"{path}: shard not found; check the path or the shard list") from None
    except OSError as error:
        raise ShardError(f"{path}: cannot open the shard ({error})") from None
