"""Shard lists: local paths, globs, brace patterns and fsspec URLs, expanded in a stable order."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import braceexpand

from resumable_loader.errors import ShardError


def is_url(path: str) -> bool:
    """Whether ``path`` names a remote file through fsspec (``s3://``, ``gs://``, ...)."""
    return "://" in path and not path.startswith("file://")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Every shard ``spec`` names, in order: brace patterns expand, globs match (sorted).

    Raises:
        ShardError: a pattern that matches nothing, or an empty list.
    """
    patterns = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    shards: list[str] = []
    for pattern in patterns:
        for path in braceexpand.braceexpand(os.fspath(pattern)):
            path = path.removeprefix("file://")
            if glob.has_magic(path):
                matches = _glob(path)
                if not matches:
                    raise ShardError(f"{path}: the pattern matches no file; check the path")
                shards.extend(matches)
            else:
                shards.append(path)
    if not shards:
        raise ShardError(f"no shards given ({spec!r}); pass paths, globs or brace patterns")
    return shards


def _glob(pattern: str) -> list[str]:
    if not is_url(pattern):
        return sorted(glob.glob(pattern))
    import fsspec

    _, _, paths = fsspec.get_fs_token_paths(pattern)
    protocol = pattern.split("://", 1)[0]
    return sorted(f"{protocol}://{p}" for p in paths)


def stat_shard(path: str) -> tuple[int, float]:
    """(size in bytes, modification time) of a shard, local or remote.

    Raises:
        ShardError: the shard does not exist or cannot be read.
    """
    try:
        if not is_url(path):
            info = os.stat(path)
            return info.st_size, info.st_mtime
        import fsspec

        fs, _, (remote,) = fsspec.get_fs_token_paths(path)
        info = fs.info(remote)
        return int(info["size"]), float(info.get("mtime") or info.get("LastModified", 0) or 0)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard not found; check the path or the shard list") from None
    except OSError as error:
        raise ShardError(f"{path}: cannot read the shard ({error})") from None
