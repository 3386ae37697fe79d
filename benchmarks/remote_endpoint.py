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

# boto3, obstore and litdata read AWS_ENDPOINT_URL; MosaicML Streaming reads S3_ENDPOINT_URL;
# obstore (which litdata uses too) needs AWS_ALLOW_HTTP=true for an http:// endpoint.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
__all__ = ["CREDENTIALS", "make_bucket", "remote_endpoint", "s3_client", "store_cpu_seconds"]


class ProxyProcess:
    """The fault proxy in a process of its own, steered over its stdin (``fault_proxy.main``)."""

    def __init__(self, upstream: str, delay: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "fault_proxy.py"), upstream, "--delay", str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.endpoint = self.process.stdout.readline().strip()

    def command(self, line: str) -> tuple[int, int]:
        """Send ``line``; the proxy's (bytes sent to clients, requests) after it."""
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        sent, requests = self.process.stdout.readline().split()
        return int(sent), int(requests)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def store_cpu_seconds() -> float:
    """CPU seconds used so far by this process's store children (moto's server and the
    proxy): on this machine the store shares the loaders' cores, which a remote store does
    not, so the benches report what it took beside each loader's own CPU time."""
    total = 0.0
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            if b"moto.server" in command or b"fault_proxy" in command:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextmanager
def remote_endpoint(delay: float) -> Iterator[tuple[str, ProxyProcess]]:
    """Yield (server endpoint, proxy adding ``delay`` s a round trip), with the credentials
    and the endpoint variables (the proxy) set in this process's environment meanwhile."""
    with moto_server() as server:
        proxy = ProxyProcess(server, delay)
        endpoints = {name: proxy.endpoint for name in ENDPOINT_VARIABLES}
        saved = {k: os.environ.get(k) for k in [*CREDENTIALS, *endpoints, "AWS_ALLOW_HTTP"]}
        os.environ.update({**CREDENTIALS, **endpoints, "AWS_ALLOW_HTTP": "true"})
        try:
            yield server, proxy
        finally:
            proxy.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
