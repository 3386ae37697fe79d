"""The test servers die with the process that started them: a pytest killed before its fixtures'
teardown (SIGKILL, a CI timeout) leaves no moto server or fault proxy listening behind it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
# A parent that starts moto's server and a fault proxy process, prints their pids and waits.
PARENT = f"""
import subprocess, sys, time
sys.path.insert(0, {str(TESTS)!r})
from s3_server import free_port, start_moto_server
server = start_moto_server(free_port())
proxy = subprocess.Popen(
    [sys.executable, {str(TESTS / "fault_proxy.py")!r}, "http://127.0.0.1:9"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
)
proxy.stdout.readline()  # its endpoint: it is serving
print(server.pid, proxy.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped by its new parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_servers_die_with_a_killed_parent() -> None:
    pids: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    ) as parent:
        try:
            pids = [int(pid) for pid in parent.stdout.readline().split()]
            assert len(pids) == 2 and all(map(alive, pids))  # moto's server, the proxy
            os.kill(parent.pid, signal.SIGKILL)  # no teardown, no closing of anything
            parent.wait(timeout=10)
            deadline = time.monotonic() + 10
            while any(map(alive, pids)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(map(alive, pids))
        finally:
            for pid in [parent.pid, *pids]:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
