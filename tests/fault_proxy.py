"""A TCP proxy on 127.0.0.1 in front of the test S3 server that adds latency and faults on
command: a delay per round trip, dropped connections, stalled responses and outages.

It runs in threads of the test process and is steered from the test through a
:class:`FaultProxy` object. HTTP/1.1 is request-response on each connection, so the proxy sees
a request start whenever the client sends after the server last answered; every fault applies
to whole requests. A new connection costs one more delay (its handshake's round trip).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

_METHODS = (b"GET ", b"HEAD ", b"PUT ", b"POST ", b"DELETE ", b"OPTIONS ", b"PATCH ")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Request:
    """One request seen by the proxy: method, path (with query) and Range header, if any."""

    method: str
    path: str
    range: str | None
    at: float = field(compare=False)


@dataclass
class _Fault:
    """What happens to one request: dropped before forwarding, cut after some response bytes,
    or its response held for some seconds."""

    drop: bool = False
    cut_after: int | None = None
    stall: float = 0.0
    range: str | None = None  # a ranged read's Range header: "ignore" it, or "shorten" it


def _mangle_range(data: bytes, how: str) -> bytes:
    """The request ``data`` without its Range header ("ignore": the server then answers 200
    with the whole object), or asking for 100 bytes fewer ("shorten": a well-formed short
    206, as a proxy or server with a bug returns)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = []
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"range:"):
            if how == "ignore":
                continue
            first, last = line.split(b"=", 1)[1].split(b"-")
            line = b"Range: bytes=%d-%d" % (int(first), max(int(first), int(last) - 100))
        lines.append(line)
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


def _parse_request(data: bytes) -> Request | None:
    if not data.startswith(_METHODS):
        return None
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    method, path = head[0].split(" ")[:2]
    ranges = [
        line.split(":", 1)[1].strip() for line in head[1:] if line.lower().startswith("range:")
    ]
    return Request(method, path, ranges[0] if ranges else None, time.monotonic())


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (what a crashed or overloaded server does)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked in recv; sends nothing
    with contextlib.suppress(OSError):
        sock.close()


class _Connection:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.answered = True  # the next client bytes start a request
        self.fault = _Fault()
        self.closed = threading.Event()

    def close(self, *, reset: bool = False) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def run(self) -> None:
        proxy = self.proxy
        try:
            self.upstream = socket.create_connection(proxy.upstream, timeout=10)
            self.upstream.settimeout(None)
        except OSError:
            self.close(reset=True)
            return
        proxy._sleep(proxy.delay)  # the handshake's round trip
        downstream = threading.Thread(target=self._pump_down, daemon=True)
        downstream.start()
        try:
            self._pump_up()
        finally:
            downstream.join()
            proxy._forget(self)

    def _pump_up(self) -> None:
        """Client -> upstream: note each request, apply its fault, add the delay, forward."""
        proxy = self.proxy
        while not self.closed.is_set():
            try:
                data = self.client.recv(_CHUNK)
            except OSError:
                break
            if not data:
                with contextlib.suppress(OSError):
                    self.upstream.shutdown(socket.SHUT_WR)
                return
            request = _parse_request(data) if self.answered else None
            if request is not None:
                self.answered = False
                proxy._record(request)
                if not proxy._through_outage():
                    self.close(reset=True)
                    return
                self.fault = proxy._next_fault(ranged=request.range is not None)
                if self.fault.drop:
                    self.close(reset=True)
                    return
                if self.fault.range is not None:
                    data = _mangle_range(data, self.fault.range)
                proxy._sleep(proxy.delay)
            try:
                self.upstream.sendall(data)
            except OSError:
                break
        self.close()

    def _pump_down(self) -> None:
        """Upstream -> client: hold a stalled response, cut a dropped one, count bytes."""
        proxy = self.proxy
        while not self.closed.is_set():
            try:
                data = self.upstream.recv(_CHUNK)
            except OSError:
                break
            if not data:
                break
            fault = self.fault
            if fault.stall:
                proxy._sleep(fault.stall)
                fault.stall = 0.0
            if fault.cut_after is not None:
                data = data[: fault.cut_after]
                fault.cut_after -= len(data)
            # Counted before it is sent: a client that has read the whole response must see it
            # counted (counting after sendall raced with the reader's next look at the count).
            proxy._count(len(data))
            try:
                self.client.sendall(data)
            except OSError:
                break
            self.answered = True
            if fault.cut_after == 0:
                self.close(reset=True)
                return
        self.close()


class FaultProxy:
    """A latency-and-fault proxy from ``127.0.0.1:<port>`` to ``upstream`` (an http URL).

    Args:
        upstream: the server's endpoint, e.g. ``http://127.0.0.1:5000``.
        delay: seconds added to every request's round trip (and to each new connection's).

    Steer it while it runs: set :attr:`delay`, :meth:`drop_next`, :meth:`stall_next`,
    :meth:`outage`, :meth:`end_outage`; read :attr:`requests` and :attr:`bytes_down`.
    """

    def __init__(self, upstream: str, *, delay: float = 0.0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.delay = delay
        self.requests: list[Request] = []
        self.bytes_down = 0
        self._faults: list[_Fault] = []
        self._range_faults: list[_Fault] = []  # for ranged reads only
        self._outage_until: float | None = None
        self._outage_mode = "refuse"
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._connections: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._acceptor.start()

    def __repr__(self) -> str:
        return f"FaultProxy({self.endpoint} -> {self.upstream}, delay={self.delay})"

    # --- steering -------------------------------------------------------------------------
    def drop_next(self, count: int = 1, *, after_bytes: int | None = None) -> None:
        """Reset the connection of each of the next ``count`` requests: before forwarding it,
        or after ``after_bytes`` bytes of its response (a truncated response)."""
        with self._lock:
            self._faults += [
                _Fault(drop=after_bytes is None, cut_after=after_bytes) for _ in range(count)
            ]

    def mangle_range_next(self, count: int = 1, *, how: str) -> None:
        """Change the Range header of each of the next ``count`` ranged reads (requests
        without one pass untouched): ``how="ignore"`` drops it, ``how="shorten"`` asks for 100
        bytes fewer, so the client gets a well-formed response of another length."""
        if how not in ("ignore", "shorten"):
            raise ValueError(f"how={how!r}: use 'ignore' or 'shorten'")
        with self._lock:
            self._range_faults += [_Fault(range=how) for _ in range(count)]

    def stall_next(self, count: int = 1, *, seconds: float) -> None:
        """Hold the response of each of the next ``count`` requests for ``seconds``."""
        with self._lock:
            self._faults += [_Fault(stall=seconds) for _ in range(count)]

    def outage(self, seconds: float | None = None, *, mode: str = "refuse") -> None:
        """Make the server unreachable for ``seconds`` (None: until :meth:`end_outage`).

        ``mode="refuse"`` resets new connections and requests; ``mode="stall"`` holds each
        request until the outage ends (forever, for a permanent one), as a hung server does.
        """
        if mode not in ("refuse", "stall"):
            raise ValueError(f"outage mode={mode!r}: use 'refuse' or 'stall'")
        with self._lock:
            self._outage_mode = mode
            self._outage_until = float("inf") if seconds is None else time.monotonic() + seconds

    def end_outage(self) -> None:
        """End an outage now."""
        with self._lock:
            self._outage_until = None

    def reset_stats(self) -> None:
        """Forget the requests and bytes seen so far."""
        with self._lock:
            self.requests = []
            self.bytes_down = 0

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        """How many requests (of ``method``, with ``path_contains`` in the path) were seen."""
        with self._lock:
            return sum(
                (method is None or r.method == method) and path_contains in r.path
                for r in self.requests
            )

    # --- life -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop accepting, reset every open connection and join the threads."""
        self._stopped.set()
        self._acceptor.join(timeout=5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close(reset=True)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals used by the connections ------------------------------------------------
    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._outage_active() and self._outage_mode == "refuse":
                _reset(client)
                continue
            connection = _Connection(self, client)
            thread = threading.Thread(target=connection.run, daemon=True)
            with self._lock:
                self._connections.add(connection)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _outage_active(self) -> bool:
        until = self._outage_until
        return until is not None and time.monotonic() < until

    def _through_outage(self) -> bool:
        """Whether a request may pass: False to refuse it; in a stall outage, wait it out."""
        if not self._outage_active():
            return True
        if self._outage_mode == "refuse":
            return False
        while self._outage_active() and not self._stopped.is_set():
            self._stopped.wait(0.02)
        return not self._stopped.is_set()

    def _next_fault(self, *, ranged: bool) -> _Fault:
        with self._lock:
            if ranged and self._range_faults:
                return self._range_faults.pop(0)
            return self._faults.pop(0) if self._faults else _Fault()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _count(self, size: int) -> None:
        with self._lock:
            self.bytes_down += size

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopped.wait(seconds)


@pytest.fixture
def fault_proxy(s3_server: str) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` (no delay, no faults) in front of the session's moto server,
    stopped after the test."""
    with FaultProxy(s3_server) as proxy:
        yield proxy


def main() -> None:
    """``python tests/fault_proxy.py UPSTREAM [--delay SECONDS]``: serve a proxy in its own
    process (benchmarks: no GIL shared with the loaders measured), killed with its parent, and
    print its endpoint. Then one command a line on stdin, each answered with a line: ``stats``
    (bytes sent to clients, requests), ``outage SECONDS`` (refused), ``reset``; it stops when
    stdin closes."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("upstream")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    from s3_server import die_with_parent  # this file's directory is on sys.path as a script

    die_with_parent(os.getppid())()  # stdin's end stops it too, unless another process holds it
    with FaultProxy(args.upstream, delay=args.delay) as proxy:
        print(proxy.endpoint, flush=True)
        for line in sys.stdin:
            command, *values = line.split()
            if command == "outage":
                proxy.outage(float(values[0]))
            elif command == "reset":
                proxy.reset_stats()
            print(proxy.bytes_down, len(proxy.requests), flush=True)


if __name__ == "__main__":
    main()
