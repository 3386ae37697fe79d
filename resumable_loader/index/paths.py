"""Shard lists: local paths, globs, brace patterns and fsspec URLs, expanded in a stable order."""

from __future__ import annotations

import datetime
import glob
import os
from collections.abc import Sequence
from typing import Any, BinaryIO

import braceexpand

from resumable_loader.errors import ConfigError, ShardError


def is_url(path: str) -> bool:
    """Whether ``path`` names a remote file through fsspec (``s3://``, ``gs://``, ...)."""
    return "://" in path and not path.startswith("file://")


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Every shard ``spec`` names, in order: brace patterns expand, globs match (sorted).

    Local paths become absolute (``file://`` dropped, ``~`` expanded), so an index records
    where its shards are whatever the working directory; other URLs stay as given.

    Args:
        spec: one pattern or a list of them, e.g. ``"train-{000000..000127}.tar"``,
            ``"data/*.parquet"`` or ``"s3://bucket/shard-{0..9}.tar"``.

    Raises:
        ShardError: a glob that matches nothing.
        ConfigError: no patterns, unbalanced braces, or a shard named twice.
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
            if not is_url(path):
                path = os.path.abspath(os.path.expanduser(path))
            if glob.has_magic(path):
                matches = _glob(path)
                if not matches:
                    raise ShardError(f"{path}: the pattern matches no file; check the path")
                shards.extend(matches)
            else:
                shards.append(path)
    if not shards:
        raise ConfigError(f"no shards given ({spec!r}); pass paths, globs or brace patterns")
    seen: set[str] = set()
    for shard in shards:
        if shard in seen:
            raise ConfigError(
                f"{shard}: named twice in the shard list (overlapping patterns?); each shard "
                "may appear once, or its samples would be read twice an epoch"
            )
        seen.add(shard)
    return shards


def _glob(pattern: str) -> list[str]:
    if not is_url(pattern):
        return sorted(glob.glob(pattern))
    import fsspec

    filesystem, _, paths = fsspec.get_fs_token_paths(pattern)
    return sorted(filesystem.unstrip_protocol(path) for path in paths)


def stat_shard(path: str) -> tuple[int, float | str]:
    """(size in bytes, modification stamp) of a shard, local or remote.

    The stamp is the mtime in seconds where the filesystem reports one, else whatever version
    text it gives (an ETag, say); the index compares it for equality only.

    Raises:
        ShardError: the shard does not exist or cannot be read.
    """
    try:
        if not is_url(path):
            info = os.stat(path)
            return info.st_size, info.st_mtime
        import fsspec

        filesystem, remote = fsspec.core.url_to_fs(path)
        details = filesystem.info(remote)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard not found; check the path or the shard list") from None
    except OSError as error:
        raise ShardError(f"{path}: cannot read the shard ({error})") from None
    if details.get("type", "file") != "file":
        raise ShardError(f"{path}: not a file ({details.get('type')}); name the shard files")
    return int(details["size"]), _stamp(details)


def _stamp(details: dict[str, Any]) -> float | str:
    for key in ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag", "created"):
        value = details.get(key)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if value:
            return str(value)
    return 0.0


def open_shard(path: str) -> BinaryIO:
    """A binary, seekable file object for a local path or an fsspec URL.

    Raises:
        ShardError: the shard does not exist or cannot be opened.
    """
    try:
        if is_url(path):
            import fsspec

            return fsspec.open(path, "rb").open()
        return open(path, "rb")
    except FileNotFoundError:
        raise ShardError(f"{path}: shard not found; check the path or the shard list") from None
    except OSError as error:
        raise ShardError(f"{path}: cannot open the shard ({error})") from None
