"""A real S3-compatible server for the tests: moto's server on 127.0.0.1, started once a
session in its own process group, stopped by pid (and killed with the process that started it),
plus helpers to fill a bucket."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# Credentials and region moto accepts; the tests set them per test (monkeypatch), never for
# the whole suite, so no other test sees an AWS environment.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
# Seconds to wait for the server to answer its first request.
START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_answering(endpoint: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto server at {endpoint} did not answer within {START_TIMEOUT} s")


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGKILL when the thread that started it ends
    (Linux's PR_SET_PDEATHSIG), so a test process killed before its fixtures' teardown leaves
    no server behind; it exits at once if ``parent`` died before the signal was armed."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)

    return arm


def start_moto_server(port: int) -> subprocess.Popen:
    """``python -m moto.server`` on ``127.0.0.1:port`` in its own process group, killed when
    the thread that started it ends (:func:`die_with_parent`: start it from the main thread)."""
    return subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **CREDENTIALS},
        preexec_fn=die_with_parent(os.getpid()),
    )


@contextmanager
def moto_server() -> Iterator[str]:
    """Run ``python -m moto.server`` on a free port of 127.0.0.1 and yield its endpoint URL;
    on exit kill its process group (by pid) and reap it, whatever happened inside."""
    port = free_port()
    process = start_moto_server(port)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(endpoint, process)
        yield endpoint
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL (``http://127.0.0.1:<port>``) of a moto server shared by the session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set moto's credentials and region in the environment for one test only."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return dict(CREDENTIALS)


def s3_client(endpoint: str, *, attempts: int | None = None):
    """A boto3 S3 client for ``endpoint`` with moto's credentials (the environment untouched);
    ``attempts`` caps botocore's own retries (1: none)."""
    import boto3
    import botocore.config

    retries = {"total_max_attempts": attempts, "mode": "standard"} if attempts else None
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        config=botocore.config.Config(retries=retries),
    )


def make_bucket(
    endpoint: str,
    files: Mapping[str, Path | bytes] | None = None,
    *,
    bucket: str | None = None,
    prefix: str = "",
    create: bool = True,
) -> str:
    """Create a bucket (a fresh unique name unless given; ``create=False``: it exists) on
    ``endpoint``, upload ``files`` (object name under ``prefix`` -> local path or bytes) and
    return ``s3://bucket/prefix`` without a trailing slash."""
    bucket = bucket or f"test-{uuid.uuid4().hex[:16]}"
    client = s3_client(endpoint)
    if create:
        client.create_bucket(Bucket=bucket)
    for name, content in (files or {}).items():
        key = f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name
        body = content if isinstance(content, bytes) else Path(content).read_bytes()
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")


def upload_dir(endpoint: str, directory: Path, pattern: str = "*", **kwargs) -> str:
    """:func:`make_bucket` with the files of ``directory`` matching ``pattern`` (by name)."""
    files = {path.name: path for path in sorted(Path(directory).glob(pattern)) if path.is_file()}
    return make_bucket(endpoint, files, **kwargs)


# Retry knobs that make a test's storage errors quick: a deadline of 1.5 s.
QUICK_RETRIES = {
    "deadline": 1.5,
    "request_timeout": 0.5,
    "initial_backoff": 0.02,
    "max_backoff": 0.2,
}


def indexed_bucket(endpoint: str, root: Path, shards: int, samples: int) -> tuple[list[str], Any]:
    """``shards`` tar shards of ``samples`` samples under ``root``, uploaded to a new bucket of
    the server at ``endpoint``, and the bucket's index (cached under ``root``): (local paths,
    ShardedIndex)."""
    from shard_factory import write_tar_shards

    from resumable_loader.index.sharded import ShardedIndex

    paths = write_tar_shards(root / "shards", num_shards=shards, samples_per_shard=samples)
    url = upload_dir(endpoint, root / "shards", "*.tar")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            patch.setenv(name, value)
        pattern = f"{url}/shard-{{0000..{shards - 1:04d}}}.tar"
        index = ShardedIndex.for_shards(pattern, cache_dir=root / "idx")
    return paths, index
