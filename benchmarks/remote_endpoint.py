"""The benchmarks' object store: moto's S3 server behind the fault proxy (a delay per round
trip), each in its own process, both stopped by pid; helpers shared by bench_clients and
bench_remote."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from s3_server import CREDENTIALS, make_bucket, moto_server, s3_client  # noqa: E402

__all__ = ["CREDENTIALS", "make_bucket", "remote_endpoint", "s3_client"]


@contextmanager
def remote_endpoint(delay: float) -> Iterator[tuple[str, str]]:
    """Yield (server endpoint, proxy endpoint adding ``delay`` s a round trip), with the
    credentials and ``AWS_ENDPOINT_URL`` (the proxy) set in this process's environment."""
    with moto_server() as server:
        proxy = subprocess.Popen(
            [sys.executable, str(TESTS / "fault_proxy.py"), server, "--delay", str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            endpoint = proxy.stdout.readline().strip()
            saved = {k: os.environ.get(k) for k in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
            os.environ.update({**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
            try:
                yield server, endpoint
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        finally:
            proxy.kill()
            proxy.wait()
