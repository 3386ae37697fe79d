"""The package's exception and warning types, so callers can catch our failures by type."""

from __future__ import annotations


class ResumableLoaderError(Exception):
    """Base class of every error raised by resumable_loader."""


class ConfigError(ResumableLoaderError, ValueError):
    """An argument or setting is out of range or inconsistent (a seed, a size, a mode)."""


class StateDictError(ResumableLoaderError, ValueError):
    """A state_dict cannot be loaded: malformed, unknown version, or from another dataset/config."""


class SampleIndexError(ResumableLoaderError):
    """A sample index is missing, corrupt, or no longer matches its shards."""


class ShardError(ResumableLoaderError):
    """A shard is missing, truncated, corrupt, or does not follow its format's conventions."""


class WorkerError(ResumableLoaderError, RuntimeError):
    """A worker process failed (crashed, was killed, or exceeded its timeout)."""


class ResumeWarning(UserWarning):
    """A resume is possible but cannot be guaranteed exact; the message says why."""
