"""One small client for the read path: ranged reads, stat, get, put and listing of s3:// objects
(through obstore) and of any other fsspec URL, each request retried under a deadline.

Every request runs as a coroutine on one event loop thread per process, so a caller may keep
many in flight (:meth:`StorageClient.submit_range` returns a future) without a thread each, and
a stalled request is cancelled at its timeout instead of holding a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import fnmatch
import functools
import inspect
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.storage.child_listing import list_in_child
from resumable_loader.storage.retry import (
    TRANSIENT_STATUSES,
    RetryPolicy,
    missing_credentials,
    retrying,
)

T = TypeVar("T")

# storage_options keys that set the RetryPolicy (the rest go to the backend) and that pick it.
RETRY_OPTIONS = ("deadline", "request_timeout", "initial_backoff", "max_backoff")
BACKEND_OPTION = "client"
# Threads for the blocking fsspec calls; a stalled call keeps its thread until it returns.
FSSPEC_THREADS = 32
_STATUS = re.compile(r"status code: (\d{3})")


class ObjectChanged(ShardError):
    """A read conditional on an ETag found the object replaced since (HTTP 412)."""


class RangeMismatch(ConnectionError):
    """A ranged read answered with another number of bytes than asked, short of the object's
    end: a cut response, or a server (or proxy) that ignored the Range header. Transient: the
    read is tried again under the deadline, since its bytes would be at the wrong offsets."""


@dataclass(frozen=True)
class ObjectStat:
    """What the index compares to know an object is unchanged: its size and version (the ETag
    of an object store, else the modification time)."""

    size: int
    version: str | float


class _Loop:
    """A private event loop on a daemon thread of this process (remade after a fork)."""

    _instance: _Loop | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(FSSPEC_THREADS, thread_name_prefix="storage")
        )
        thread = threading.Thread(target=self.loop.run_forever, name="storage-loop", daemon=True)
        thread.start()

    @classmethod
    def submit(cls, coroutine: Awaitable[T]) -> concurrent.futures.Future[T]:
        with cls._lock:
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = _Loop()
            loop = cls._instance.loop
        return asyncio.run_coroutine_threadsafe(coroutine, loop)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may pass if the request is tried again: connection errors, timeouts,
    throttling (429) and server errors (5xx), not a missing object or a refused credential."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, ValueError)):
        return False
    if missing_credentials(error):  # botocore found none: trying again finds none either
        return False
    if type(error).__name__.endswith("ValidationError"):  # botocore: a malformed request
        return False
    if isinstance(error, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True
    status = getattr(error, "status", None) or getattr(error, "status_code", None)
    if status is None:
        found = _STATUS.search(str(error))
        status = int(found.group(1)) if found else None
    if status is not None:
        return int(status) in TRANSIENT_STATUSES
    module = type(error).__module__
    # obstore's GenericError without a status, botocore/aiohttp transport errors, other OSErrors
    return isinstance(error, OSError) or module.startswith(("obstore", "botocore", "aiohttp"))


class StorageClient(ABC):
    """Reads and writes objects by URL, each call retried with backoff under ``policy``.

    Subclasses implement one attempt of each request as a coroutine; this class adds the
    timeouts, the retries and the typed error
    (:class:`~resumable_loader.errors.StorageError`).
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy={self.policy})"

    # --- one attempt of each request (backends) -------------------------------------------
    @abstractmethod
    async def _read_range(self, url: str, start: int, length: int, etag: str | None) -> bytes:
        """One ranged read; with an ``etag``, conditional on the object still having it (S3
        ``If-Match``) where the backend can make it so."""

    @abstractmethod
    async def _stat(self, url: str) -> ObjectStat: ...

    @abstractmethod
    async def _get(self, url: str) -> bytes: ...

    @abstractmethod
    async def _put(self, url: str, data: bytes) -> None: ...

    @abstractmethod
    async def _list(self, prefix: str) -> dict[str, ObjectStat]: ...

    @abstractmethod
    async def _prepare(self, url: str, *, request: str) -> None:
        """Make what the requests of kind ``request`` ("read" a range, "list" a prefix, or
        "other") for ``url`` need in this process once (a filesystem, a session): outside the
        request timeout, since a client's first set-up (imports, credentials) can take seconds
        on a loaded machine."""

    # --- the interface --------------------------------------------------------------------
    def _submit(
        self,
        attempt: Callable[[], Awaitable[T]],
        url: str,
        start: int | None = None,
        length: int | None = None,
        *,
        request: str = "other",
    ) -> concurrent.futures.Future[T]:
        async def prepared() -> T:
            # a failed set-up is left to the attempts, whose error names URL and range
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._prepare(url, request=request), self.policy.deadline)
            return await retrying(
                attempt,
                policy=self.policy,
                transient=is_transient,
                url=url,
                start=start,
                length=length,
            )

        return _Loop.submit(prepared())

    def submit_range(
        self, url: str, start: int, length: int, *, etag: str | None = None
    ) -> concurrent.futures.Future[bytes]:
        """Start reading ``length`` bytes of ``url`` at ``start``; the future's result is
        the bytes (fewer only past the object's end: a response of another length is tried
        again, :class:`RangeMismatch`) or a StorageError.

        ``etag``: the ETag the caller's index recorded for the object. The read is then
        conditional on it (S3 ``If-Match``, obstore's and s3fs's S3 reads), so the bytes of an
        object replaced since are never returned (nor cached by the caller): the future fails
        with a :class:`~resumable_loader.errors.ShardError` saying to rebuild the index.
        Other fsspec protocols cannot make a read conditional and ignore it.
        """
        if start < 0 or length < 0:
            raise ConfigError(f"{url}: byte range start={start}, length={length} must be >= 0")
        read = self._read_range

        async def attempt() -> bytes:
            try:
                data = await read(url, start, length, etag)
                if len(data) != length:
                    await self._check_short(url, start, length, len(data))
                return data
            except Exception as error:
                if etag is None or not _precondition_failed(error):
                    raise
                raise ObjectChanged(
                    f"{url}: the shard changed since the index was built (its ETag is no "
                    f"longer {etag}), so its indexed byte offsets no longer hold; rebuild the "
                    "index (delete the cached and published index, or run resumable-loader "
                    "index), or restore the object"
                ) from error

        return self._submit(attempt, url, start, length, request="read")

    async def _check_short(self, url: str, start: int, length: int, got: int) -> None:
        """Accept a read of ``got`` bytes for ``length`` only if it ends at the object's end
        (a stat tells); else raise :class:`RangeMismatch`."""
        await self._prepare(url, request="stat")
        size = (await self._stat(url)).size
        if got > length or start + got != size:
            raise RangeMismatch(
                f"{url}: {got} bytes answered for the {length} asked at offset {start} of an "
                f"object of {size} bytes (a cut response, or Range ignored)"
            )

    def read_range(self, url: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        """``length`` bytes of ``url`` at ``start`` (fewer only past the object's end);
        ``etag`` as for :meth:`submit_range`."""
        return self.submit_range(url, start, length, etag=etag).result()

    def read_ranges(
        self, url: str, ranges: Sequence[tuple[int, int]], *, etag: str | None = None
    ) -> list[bytes]:
        """The bytes of each ``(start, length)`` of ``url``, all requested at once; ``etag``
        as for :meth:`submit_range`."""
        futures = [self.submit_range(url, start, length, etag=etag) for start, length in ranges]
        return [future.result() for future in futures]

    def stat(self, url: str) -> ObjectStat:
        """The object's size and version (ETag or modification time)."""
        return self._submit(lambda: self._stat(url), url).result()

    def size(self, url: str) -> int:
        """The object's size in bytes."""
        return self.stat(url).size

    def get(self, url: str) -> bytes:
        """The whole object."""
        return self._submit(lambda: self._get(url), url).result()

    def put(self, url: str, data: bytes) -> None:
        """Write ``data`` as the whole object at ``url`` (replacing it)."""
        self._submit(lambda: self._put(url, bytes(data)), url).result()

    def list(self, prefix: str) -> list[str]:
        """The URLs of the objects under ``prefix`` (a "directory" URL), sorted."""
        return sorted(self.stats(prefix))

    def stats(self, prefix: str) -> dict[str, ObjectStat]:
        """Size and version of every object under ``prefix``, by URL: one listing (a request
        per 1,000 objects on S3) instead of a HEAD per object."""
        return self._submit(lambda: self._list(prefix), prefix, request="list").result()

    def glob(self, pattern: str) -> list[str]:
        """The URLs matching ``pattern`` (``*``, ``?``, ``[...]`` within a path segment),
        sorted; the listing starts at the pattern's last segment without a wildcard."""
        base = pattern[: pattern.rfind("/", 0, _first_magic(pattern)) + 1]
        depth = pattern.count("/")
        return [
            url
            for url in self.list(base)
            if url.count("/") == depth and fnmatch.fnmatchcase(url, pattern)
        ]


def _first_magic(pattern: str) -> int:
    positions = [pattern.find(c) for c in "*?[" if c in pattern]
    return min(positions) if positions else len(pattern)


class ObstoreClient(StorageClient):
    """``s3://bucket/key`` objects through obstore (Rust ``object_store``).

    The endpoint, credentials and region come from the standard environment variables
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``...)
    unless ``options`` names them (obstore's S3Config keys, or fsspec's ``endpoint_url``,
    ``key``, ``secret``, ``token``, ``region``). obstore's own retries are off: ours apply.

    Only the ranged reads go through obstore; stat, get, put and listing go through s3fs. The
    reason is fork safety: obstore's runtime does not survive a fork, so a process that used it
    must not fork DataLoader workers that read (they fall back to s3fs, see ``_OBSTORE_PID``).
    The main process typically only builds or fetches the index and stats shards: done through
    s3fs, it leaves obstore unstarted for the workers, which do the ranged reads.
    """

    _ALIASES: ClassVar[dict[str, str]] = {
        "endpoint_url": "endpoint",
        "aws_endpoint": "endpoint",  # obstore's own S3Config names, so that allow_http follows
        "aws_endpoint_url": "endpoint",
        "key": "access_key_id",
        "secret": "secret_access_key",
        "token": "session_token",
        "region_name": "region",
    }

    def __init__(self, policy: RetryPolicy, options: Mapping[str, Any]) -> None:
        super().__init__(policy)
        self.options = self.aliased(options)
        self._stores: dict[tuple[int, str, str], Any] = {}
        self._metadata = FsspecClient(policy, _s3fs_options(self.options))

    @classmethod
    def aliased(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` with fsspec's names (``endpoint_url``, ``key``...) as obstore's."""
        return {cls._ALIASES.get(k, k): v for k, v in options.items()}

    def _store(self, bucket: str) -> Any:
        endpoint = self.options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL", "")
        key = (os.getpid(), bucket, endpoint)
        store = self._stores.get(key)
        if store is None:
            client_options = {
                "allow_http": endpoint.startswith("http://"),
                "timeout": datetime.timedelta(seconds=self.policy.request_timeout),
                "connect_timeout": datetime.timedelta(seconds=self.policy.request_timeout),
            }
            retry = {
                "max_retries": 0,
                "backoff": {},
                "retry_timeout": datetime.timedelta(seconds=self.policy.request_timeout),
            }
            store = _s3_store(
                bucket, self.options, client_options=client_options, retry_config=retry
            )
            self._stores[key] = store
            global _OBSTORE_PID
            _OBSTORE_PID = _OBSTORE_PID or os.getpid()
        return store

    def _split(self, url: str) -> tuple[Any, str]:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"{url}: not an s3://bucket/key URL")
        return self._store(parts.netloc), parts.path.lstrip("/")

    async def _read_range(self, url: str, start: int, length: int, etag: str | None) -> bytes:
        if length == 0:
            return b""
        store, path = self._split(url)
        try:
            return await _obstore_range(store, path, start, start + length, etag)
        except Exception as error:
            if "range" not in str(error).lower() or "416" not in str(error):
                raise
            # past the end: read what there is, as a file would
            size = (await self._stat(url)).size
            if start >= size:
                return b""
            return await _obstore_range(store, path, start, size, etag)

    async def _prepare(self, url: str, *, request: str) -> None:
        if request != "read":
            await self._metadata._prepare(url, request=request)

    async def _stat(self, url: str) -> ObjectStat:
        return await self._metadata._stat(url)

    async def _get(self, url: str) -> bytes:
        return await self._metadata._get(url)

    async def _put(self, url: str, data: bytes) -> None:
        await self._metadata._put(url, data)

    async def _list(self, prefix: str) -> dict[str, ObjectStat]:
        return await self._metadata._list(prefix)


async def _obstore_range(store: Any, path: str, start: int, end: int, etag: str | None) -> bytes:
    """Bytes ``[start, end)`` of ``path`` in ``store``, with ``If-Match: etag`` if given."""
    import obstore

    options: dict[str, Any] = {"range": (start, end)}
    if etag is not None:
        options["if_match"] = etag
    result = await obstore.get_async(store, path, options=options)
    return bytes(await result.bytes_async())


# S3 settings by their obstore (S3Config) and fsspec names, as s3fs's S3FileSystem names them.
_S3FS_NAMES = {
    "endpoint": "endpoint_url",
    "aws_endpoint": "endpoint_url",
    "aws_endpoint_url": "endpoint_url",
    "access_key_id": "key",
    "aws_access_key_id": "key",
    "secret_access_key": "secret",
    "aws_secret_access_key": "secret",
    "session_token": "token",
    "aws_session_token": "token",
    "skip_signature": "anon",
}
# The region's names; s3fs takes it as botocore's client argument ``region_name``.
_REGION_NAMES = ("region", "aws_region", "region_name")


def _s3fs_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """s3fs's S3FileSystem arguments for S3 ``options`` named either way the docs allow:
    fsspec's (``endpoint_url``, ``key``, ``secret``, ``token``, ``region``) or obstore's
    S3Config keys (``endpoint``, ``access_key_id``, ...), the region moved into
    ``client_kwargs``. Keys s3fs takes pass as they are; obstore's other settings
    (``allow_http``, ``virtual_hosted_style_request``...) have no s3fs counterpart (s3fs
    follows the endpoint's scheme) and are left out: s3fs would hand them to aiobotocore's
    session, which refuses them. Retry knobs never get here (see :func:`client_for`)."""
    found: dict[str, Any] = {}
    region = None
    for key, value in options.items():
        if key in _REGION_NAMES:
            region = value
        elif key in _S3FS_NAMES or key in _s3fs_parameters():  # s3fs imported only for these
            found[_S3FS_NAMES.get(key, key)] = value
    if region is not None:
        found["client_kwargs"] = {**(found.get("client_kwargs") or {}), "region_name": region}
    return found


@functools.cache
def _s3fs_parameters() -> frozenset[str]:
    """The named parameters of s3fs's S3FileSystem (none without s3fs)."""
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(S3FileSystem.__init__).parameters) - {"self", "kwargs"}


async def _s3fs_range(filesystem: Any, path: str, start: int, end: int, etag: str) -> bytes:
    """Bytes ``[start, end)`` of ``path`` through s3fs with ``If-Match: etag``: botocore's
    get_object takes the condition, s3fs's ``cat_file`` does not. Past the end: b"", as
    ``cat_file`` gives."""
    bucket, key, _ = filesystem.split_path(path)
    try:
        response = await filesystem._call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", IfMatch=etag
        )
    except OSError as error:
        if _error_code(error) == "InvalidRange":
            return b""
        raise
    body = response["Body"]
    try:
        return await body.read()
    finally:
        body.close()


def _error_code(error: BaseException | None) -> str | None:
    """The S3 error code (``PreconditionFailed``...) of ``error`` or an error it was raised
    from (s3fs raises an OSError from botocore's ClientError, which has the code)."""
    while error is not None:
        response = getattr(error, "response", None)
        if isinstance(response, dict) and "Error" in response:
            return response["Error"].get("Code")
        error = error.__cause__
    return None


def _precondition_failed(error: BaseException) -> bool:
    """Whether a conditional read failed for its condition (HTTP 412): the object changed."""
    if type(error).__name__ == "PreconditionError":  # obstore's
        return True
    return _error_code(error) == "PreconditionFailed"


class FsspecClient(StorageClient):
    """Any fsspec URL (``gs://``, ``https://``, ``memory://``, a local path...), with
    ``options`` as the filesystem's storage_options; each blocking call runs on a thread."""

    def __init__(self, policy: RetryPolicy, options: Mapping[str, Any]) -> None:
        super().__init__(policy)
        self.options = dict(options)
        self._filesystems: dict[tuple[int, str, str], Any] = {}
        self._prepared: set[tuple[int, str, str]] = set()
        self._connecting: dict[int, threading.Lock] = {}  # per process

    def _fs(self, url: str) -> tuple[Any, str]:
        import fsspec

        protocol = urlsplit(url).scheme if "://" in url else "file"
        # the environment's endpoint is read when a filesystem is made: one per endpoint
        key = (os.getpid(), protocol, os.environ.get("AWS_ENDPOINT_URL", ""))
        filesystem = self._filesystems.get(key)
        if filesystem is None:
            s3 = protocol in ("s3", "s3a")
            options = _without_s3_retries(self.options) if s3 else self.options
            filesystem = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
            if s3:
                filesystem.retries = 1  # s3fs's own retries (a class attribute): ours apply
            self._filesystems[key] = filesystem
        return filesystem, filesystem._strip_protocol(url)

    async def _prepare(self, url: str, *, request: str) -> None:
        if request == "list" and _s3(url):
            return  # listed in a child first (see _list); s3fs is set up only if that fails

        def connect() -> None:
            # one connect a process: the prefetch's many first requests, each setting up its
            # own s3fs session on fsspec's one I/O thread, queued for seconds (a lock per
            # process: a lock held by a parent's thread at a fork stays held in the child)
            with self._connecting.setdefault(os.getpid(), threading.Lock()):
                if key in self._prepared:
                    return
                filesystem, _ = self._fs(url)
                if urlsplit(url).scheme in ("s3", "s3a"):
                    filesystem.connect()  # s3fs: the aiobotocore session and client
                self._prepared.add(key)

        key = (os.getpid(), urlsplit(url).scheme, os.environ.get("AWS_ENDPOINT_URL", ""))
        if key not in self._prepared:
            await self._call(connect)

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def _read_range(self, url: str, start: int, length: int, etag: str | None) -> bytes:
        if length == 0:  # an empty range is not a range to every filesystem (s3fs: all)
            return b""
        filesystem, path = self._fs(url)
        if etag is not None and _s3(url):
            from fsspec.asyn import sync

            end = start + length
            return await self._call(
                sync, filesystem.loop, _s3fs_range, filesystem, path, start, end, etag
            )
        read = functools.partial(filesystem.cat_file, path, start=start, end=start + length)
        return await self._call(read)

    async def _stat(self, url: str) -> ObjectStat:
        filesystem, path = self._fs(url)
        info = await self._call(filesystem.info, path)
        if info.get("type", "file") != "file":
            raise IsADirectoryError(f"{url} is a {info.get('type')}, not an object")
        return ObjectStat(int(info["size"]), _version(info))

    async def _get(self, url: str) -> bytes:
        filesystem, path = self._fs(url)
        return await self._call(filesystem.cat_file, path)

    async def _put(self, url: str, data: bytes) -> None:
        filesystem, path = self._fs(url)
        await self._call(filesystem.pipe_file, path, data)

    async def _list(self, prefix: str) -> dict[str, ObjectStat]:
        # the child reads the endpoint and credentials from the environment, as s3fs does
        # when it has no options
        if _s3(prefix) and not self.options:
            endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
            timeout = self.policy.request_timeout
            listed = await self._call(list_in_child, prefix, endpoint, timeout)
            if listed is not None:
                return {url: ObjectStat(size, etag) for url, (size, etag) in listed.items()}
        filesystem, path = self._fs(prefix)
        found = await self._call(functools.partial(filesystem.find, path, detail=True))
        # spelled as the caller spelled the prefix (fsspec strips or adds slashes per protocol)
        base, path = prefix.rstrip("/"), path.rstrip("/")
        return {
            f"{base}/{p[len(path) :].lstrip('/')}": ObjectStat(int(info["size"]), _version(info))
            for p, info in found.items()
            if p.startswith(path) and info.get("type", "file") == "file"
        }


def _s3(url: str) -> bool:
    return urlsplit(url).scheme in ("s3", "s3a")


def _without_s3_retries(options: Mapping[str, Any]) -> dict[str, Any]:
    """s3fs's ``options`` with botocore's retries off, as obstore's are: ours apply. Besides
    doubling the retries, botocore draws its retry jitter from the global ``random``, which the
    loader seeds per sample for the augmentations: a draw on a storage thread during an outage
    shifted a sample's ``random.random()`` in a worker (a stream unequal to the local one)."""
    config = dict(options.get("config_kwargs") or {})
    config["retries"] = {"total_max_attempts": 1, "mode": "standard"}
    return {**options, "config_kwargs": config}


def _version(info: Mapping[str, Any]) -> str | float:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if value:
            return str(value)
    return 0.0


_CLIENTS: dict[tuple[str, str], StorageClient] = {}
# The process that started obstore's (tokio) runtime. The runtime's threads do not survive a
# fork, so its requests hang in a forked child (a DataLoader worker) and time out: a process
# forked after its parent used obstore reads through fsspec instead.
_OBSTORE_PID: int | None = None
_CLIENTS_LOCK = threading.Lock()


def check_storage_options(url: str, storage_options: Mapping[str, Any] | None) -> None:
    """Refuse now what the client of ``url`` would refuse at its first read: an unknown
    ``client``, a bad retry knob, or a key obstore does not know (a dataset checks them before
    its index is built or fetched with them). obstore's store is only configured, no request
    made: its runtime is not started, so workers forked afterwards still read through it."""
    _, backend, _, options = _parse(url, storage_options)
    if backend == "obstore":
        _s3_store(urlsplit(url).netloc or "bucket", ObstoreClient.aliased(options))


def _parse(
    url: str, storage_options: Mapping[str, Any] | None
) -> tuple[str, str, RetryPolicy, dict[str, Any]]:
    """(scheme, backend, retry policy, the backend's own options) of ``url``'s client; the
    backend is obstore for ``s3://`` (when installed), fsspec for the rest.

    Raises:
        ConfigError: an unknown ``client``, obstore for another scheme, a bad retry knob.
    """
    options = dict(storage_options or {})
    policy = RetryPolicy(**{k: options.pop(k) for k in RETRY_OPTIONS if k in options})
    scheme = urlsplit(url).scheme if "://" in url else "file"
    backend = options.pop(BACKEND_OPTION, None) or ("obstore" if scheme == "s3" else "fsspec")
    if backend == "obstore" and scheme == "s3":
        try:
            import obstore  # noqa: F401
        except ImportError:
            backend = "fsspec"
    elif backend not in ("obstore", "fsspec") or backend == "obstore":
        raise ConfigError(
            f"storage_options client={backend!r} for {url}: use 'fsspec', or 'obstore' for "
            "s3:// URLs"
        )
    return scheme, backend, policy, options


def _s3_store(bucket: str, options: Mapping[str, Any], **settings: Any) -> Any:
    """obstore's S3Store of ``bucket`` (configured: no request made); a key obstore does not
    know is a ConfigError naming the keys given."""
    from obstore.store import S3Store

    try:
        return S3Store(bucket, **settings, **options)
    except Exception as error:
        if type(error).__name__ != "UnknownConfigurationKeyError":
            raise
        raise ConfigError(
            f"storage_options for s3://{bucket}: obstore does not know a key of "
            f"{sorted(options)} ({str(error).strip().splitlines()[0]}); give obstore's "
            "S3Config keys or fsspec's endpoint_url/key/secret/token/region, plus "
            "deadline/request_timeout/client, or client='fsspec' for s3fs's own arguments"
        ) from None


def client_for(url: str, storage_options: Mapping[str, Any] | None = None) -> StorageClient:
    """The client for ``url``: obstore for ``s3://`` (when installed), fsspec for the rest.

    Args:
        url: an object or prefix URL (``s3://bucket/key``, ``gs://...``, a local path).
        storage_options: the retry knobs (``deadline``, ``request_timeout``,
            ``initial_backoff``, ``max_backoff``: see :class:`RetryPolicy`), ``client``
            (``"obstore"`` or ``"fsspec"`` to force one), and the backend's own options
            (endpoint, credentials...). Clients are shared per process and options.
    """
    scheme, backend, policy, options = _parse(url, storage_options)
    if backend == "obstore" and _OBSTORE_PID not in (None, os.getpid()):
        backend = "fsspec"  # obstore's runtime started in a parent: a fork cannot use it
    if backend == "fsspec" and scheme in ("s3", "s3a"):
        options = _s3fs_options(options)  # the documented names, either scheme, as s3fs's
    key = (f"{backend}:{scheme}", repr((policy, sorted(options.items(), key=str))))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            factory = ObstoreClient if backend == "obstore" else FsspecClient
            client = _CLIENTS[key] = factory(policy, options)
    return client
