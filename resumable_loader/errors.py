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


class CheckpointError(ResumableLoaderError):
    """A checkpoint cannot be saved or loaded: incomplete, damaged, or not matching the state."""


class MissingDependencyError(ResumableLoaderError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip command."""


class PipelineError(ResumableLoaderError):
    """The user's code (the factory, the dataset, the collate_fn) raised: verify could not run
    the pipeline, which is no verdict on it. The original exception is the ``__cause__``.
    """


class ResumeWarning(UserWarning):
    """A resume is possible but cannot be guaranteed exact; the message says why."""


class TopologyWarning(UserWarning):
    """The data-parallel coordinates were guessed (from the environment); the message says how
    to be explicit.
    """
