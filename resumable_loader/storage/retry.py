"""Retries with exponential backoff and jitter for transient storage errors, under a deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from resumable_loader.errors import ConfigError, ShardError, StorageError

T = TypeVar("T")

# The jitter's own generator: the global one is reseeded per sample for the augmentations, and
# a draw from it on a fetch thread would shift the draws of the sample being loaded.
_JITTER = random.Random()
# HTTP statuses worth retrying: request timeout, throttling, and the server-side failures.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# botocore's errors for credentials it could not find (or found half of) before any request.
_NO_CREDENTIALS = frozenset({"NoCredentialsError", "PartialCredentialsError"})


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a failing storage request is retried.

    Args:
        deadline: seconds from the first attempt after which a request that still fails (or
            hangs) raises :class:`~resumable_loader.errors.StorageError`.
        request_timeout: seconds one attempt may take, connecting to the last byte; a stalled
            request is abandoned after it and retried.
        initial_backoff: seconds slept after the first failure; doubled after each further
            failure up to ``max_backoff``, with full jitter (a uniform draw below it), so that
            many workers hitting one outage do not retry in lockstep.
        max_backoff: the longest sleep between attempts.
    """

    deadline: float = 120.0
    request_timeout: float = 30.0
    initial_backoff: float = 0.05
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        for name in ("deadline", "request_timeout", "initial_backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"RetryPolicy {name}={value!r}: must be a number of seconds > 0")

    def backoff(self, failures: int) -> float:
        """Seconds to sleep after ``failures`` consecutive failures (>= 1), jittered."""
        ceiling = min(self.max_backoff, self.initial_backoff * 2 ** (failures - 1))
        return _JITTER.uniform(0.0, ceiling)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    transient: Callable[[BaseException], bool],
    url: str,
    start: int | None = None,
    length: int | None = None,
) -> T:
    """Await ``attempt()`` until it returns, retrying the errors ``transient`` accepts.

    Each attempt is cancelled after the request timeout, cut to what is left of the deadline,
    so the whole call ends within the deadline (plus one backoff's rounding). A permanent
    error, or a transient one at the deadline, raises :class:`StorageError` naming ``url``,
    the byte range, the attempts and the time spent; the last error is its ``__cause__``. A
    :class:`ShardError` of the attempt itself (a verdict on the data, such as a shard changed
    since it was indexed, not a failed request), or a :class:`ConfigError` (settings the client
    refuses), is raised as it is, at once.
    """
    began = time.monotonic()
    failures = 0
    while True:
        left = policy.deadline - (time.monotonic() - began)
        try:
            return await asyncio.wait_for(attempt(), max(0.001, min(policy.request_timeout, left)))
        except (ShardError, ConfigError):  # a verdict on the data or the settings: no retry
            raise
        except Exception as error:  # classified below; the original is kept as __cause__
            failures += 1
            elapsed = time.monotonic() - began
            retry = transient(error)
            pause = policy.backoff(failures) if retry else 0.0
            if not retry or elapsed + pause >= policy.deadline:
                raise StorageError(
                    url=url,
                    start=start,
                    length=length,
                    attempts=failures,
                    elapsed=elapsed,
                    reason=_describe(error),
                    transient=retry,
                ) from error
            await asyncio.sleep(pause)


def missing_credentials(error: BaseException) -> bool:
    """Whether the client found no (or incomplete) credentials to sign the request with: a
    permanent error, which only giving them fixes."""
    return type(error).__name__ in _NO_CREDENTIALS


def _describe(error: BaseException) -> str:
    """The error's type and first line (obstore appends pages of debug detail); for missing
    credentials, where to give them."""
    text = str(error).strip().split("\n", 1)[0]
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)) and not text:
        text = "no answer within the request timeout"
    if missing_credentials(error):
        text += (
            ": credentials are missing; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "give storage_options 'key' and 'secret' (or 'access_key_id' and "
            "'secret_access_key')"
        )
    return f"{type(error).__name__}: {text}"
