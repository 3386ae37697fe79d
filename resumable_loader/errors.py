"""The package's exception and warning types, so callers can catch our failures by type."""

from __future__ import annotations

# The fix for a shard whose bytes differ from its index: the bytes are the suspect (a rebuilt
# index would match damaged bytes whatever they hold).
RESTORE_OR_REINDEX = (
    "restore it from a good copy, or rebuild the index if it was changed on purpose"
)


class ResumableLoaderError(Exception):
    """Base class of every error raised by resumable_loader."""


class ConfigError(ResumableLoaderError, ValueError):
    """An argument or setting is out of range or inconsistent (a seed, a size, a mode)."""


class StateDictError(ResumableLoaderError, ValueError):
    """A state_dict cannot be loaded: malformed, unknown version, or from another dataset/config."""


class NotResumableError(StateDictError, AttributeError):
    """A loader over an ``IterableDataset`` has no position to save or load: its order lives in
    the dataset's ``__iter__``. Raised by reading ``state_dict``/``load_state_dict`` of such a
    loader; an ``AttributeError`` too, so ``hasattr`` is False there as on torch's DataLoader and
    frameworks that save whatever has a ``state_dict`` (Lightning's checkpoints, DCP's
    ``Stateful``) treat the loader as torch's."""


class SampleIndexError(ResumableLoaderError):
    """A sample index is missing, corrupt, or no longer matches its shards."""


class ShardError(ResumableLoaderError):
    """A shard is missing, truncated, corrupt, or does not follow its format's conventions."""


class StorageError(ShardError):
    """A read or write of object storage failed for good: a permanent error (not found, access
    denied), or transient ones (connection errors, timeouts, 5xx, 429) that outlasted the retry
    deadline. The message names the URL, the byte range, the attempts, the time spent and the
    fix; ``sample`` (set by the read path) names the sample that needed the bytes.

    Built from the fields (keywords), or from a ``message`` alone: how torch's DataLoader
    re-raises a worker's error in the main process (``type(error)(text)``, where ``text`` is
    the worker's traceback), which keeps the type only if the type takes one string. The
    fields of an error rebuilt so are their defaults; its message has them all.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        url: str = "",
        start: int | None = None,
        length: int | None = None,
        attempts: int = 1,
        elapsed: float = 0.0,
        reason: str = "",
        transient: bool = True,
        sample: int | None = None,
    ) -> None:
        self.url, self.start, self.length = url, start, length
        self.attempts, self.elapsed, self.reason = attempts, elapsed, reason
        self.transient, self.sample = transient, sample
        # a message alone: the error rebuilt from its text, as torch's DataLoader re-raises an
        # error of a worker (``type(error)(text)``), which keeps the type only if this works
        self._text = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self._text is not None:
            return self._text
        where = self.url
        if self.start is not None:
            end = "end" if self.length is None else self.start + self.length
            where += f" bytes [{self.start}, {end})"
        if self.sample is not None:
            where += f" (sample {self.sample})"
        tries = f"{self.attempts} attempt{'s' * (self.attempts != 1)} over {self.elapsed:.1f} s"
        if self.transient:
            return (
                f"{where}: storage kept failing, {tries} (last: {self.reason}); check that the "
                "endpoint (AWS_ENDPOINT_URL or storage_options['endpoint']) is reachable, or "
                "allow longer outages with storage_options={'deadline': <seconds>}"
            )
        return (
            f"{where}: storage refused the request, {tries} ({self.reason}); check the URL, "
            "the bucket and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
        )

    def __reduce__(self):  # keyword-only fields: rebuild from them (errors cross processes)
        return _rebuild_storage_error, (self.__dict__.copy(),)


def _rebuild_storage_error(fields: dict) -> StorageError:
    error = StorageError.__new__(StorageError)
    error.__dict__.update(fields)
    Exception.__init__(error, str(error))
    return error


class WorkerError(ResumableLoaderError, RuntimeError):
    """A worker process failed (crashed, was killed, or exceeded its timeout)."""


class BadSampleError(ResumableLoaderError):
    """Too many samples failed to load with ``on_sample_error="substitute"`` (more than
    ``max_bad_fraction``), or no substitute for a failed sample could be loaded."""


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
