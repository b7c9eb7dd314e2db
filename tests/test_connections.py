"""Connection bounds of a real API process: silent and slow connections are closed, big request
heads are answered 431, connections past ``server.max_connections`` are answered 503, and the
process keeps serving others (and its memory) throughout."""

from __future__ import annotations

import json
import resource
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from asyncgate import connections
from asyncgate.config import DatabaseConfig, ProviderConfig, Settings
from asyncgate.connections import connection_limits
from tests.conftest import wait_for
from tests.processes import Client, GatewayProcess, Processes
from tests.spec_check import SpecChecker
from tests.upstream import UpstreamThread

CHAT = "/v1/async/chat/completions"
SILENT = 2000
SLACK = 15.0
"""Seconds allowed past a configured timeout before a test gives up waiting (a busy machine)."""
RSS_SLACK = 30 * 1024 * 1024
BOUNDS: dict[str, Any] = {
    "header_timeout_seconds": 2.0,
    "idle_timeout_seconds": 2.0,
    "max_header_bytes": 8192,
    "max_headers": 50,
}


@pytest.fixture
def procs(tmp_path: Path, database_url: str, upstream: UpstreamThread) -> Iterator[Processes]:
    with Processes(tmp_path, database_url, upstream.url) as processes:
        yield processes


def raise_own_file_limit(needed: int) -> None:
    """This test process opens ``needed`` sockets at once: raise its soft limit or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"open-file hard limit {hard} is below the {needed} sockets this test opens")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def connect(process: GatewayProcess, *, blocking: bool = True) -> socket.socket:
    assert process.port is not None
    sock = socket.create_connection(("127.0.0.1", process.port), timeout=10)
    if not blocking:
        sock.setblocking(False)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed the non-blocking ``sock`` (answers are dropped)."""
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return True


def request_head(fields: int, *, padding: int = 0) -> bytes:
    """A ``GET /health`` head with ``fields`` header fields in all (Host and Connection among
    them) and ``padding`` bytes in one of them."""
    lines = [b"GET /health HTTP/1.1", b"Host: gateway", b"Connection: close"]
    lines += [b"X-Field-%d: v" % index for index in range(fields - 3)]
    lines.append(b"X-Padding: " + b"p" * padding)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def exchange(process: GatewayProcess, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    with connect(process) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one raw HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_error_shape(answer: bytes, status: int) -> dict[str, str]:
    """``answer`` is ``status`` in the gateway's error shape, closing the connection."""
    code, headers, body = parse(answer)
    assert code == status, answer[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)
    assert error["is_bifrost_error"] is True
    assert error["status_code"] == status
    assert isinstance(error["error"]["type"], str) and error["error"]["type"]
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    return headers


class Slowloris(threading.Thread):
    """Sends a request head one byte every half second until the server closes the socket."""

    def __init__(self, process: GatewayProcess) -> None:
        super().__init__(daemon=True)
        self.sock = connect(process, blocking=False)
        self.answer = b""
        self.closed = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        head = b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"s" * 10_000
        try:
            for byte in head:
                if self._closed_yet():
                    break
                self.sock.send(bytes([byte]))
                if self.stopped.wait(0.5):
                    return
        except OSError:
            pass
        self.sock.settimeout(SLACK)
        try:
            while chunk := self.sock.recv(65536):
                self.answer += chunk
        except OSError:
            pass
        self.closed.set()

    def _closed_yet(self) -> bool:
        try:
            while chunk := self.sock.recv(65536):
                self.answer += chunk
        except BlockingIOError:
            return False
        return True

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        self.sock.close()


def serve_one(client: Client) -> None:
    """One health check and one chat submission, both answered as usual."""
    assert client.session.get(f"{client.url}/health", timeout=10).status_code == 200
    chat = {"model": "fake/ok", "messages": [{"role": "user", "content": "hello"}]}
    client.submit_ok(CHAT, chat)


class Served(threading.Thread):
    """Serves :func:`serve_one` rounds until stopped, noting the server's open connections
    (``psutil``) before and after each round and the process's peak RSS."""

    def __init__(self, client: Client, process: GatewayProcess) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.child = psutil.Process(process.pid)
        self.port = process.port
        self.rounds_while_held = 0
        self.rss_peak = 0
        self.failures: list[BaseException] = []
        self.stopped = threading.Event()

    def server_connections(self) -> int:
        return sum(
            1
            for conn in self.child.net_connections("tcp")
            if conn.laddr and conn.laddr.port == self.port and conn.status == "ESTABLISHED"
        )

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                before = self.server_connections()
                serve_one(self.client)
                if min(before, self.server_connections()) >= SILENT:
                    self.rounds_while_held += 1
                self.rss_peak = max(self.rss_peak, self.child.memory_info().rss)
            except BaseException as exc:
                self.failures.append(exc)
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


def test_silent_and_slow_connections_are_closed_while_others_are_served(
    procs: Processes, spec_checker: SpecChecker
) -> None:
    raise_own_file_limit(SILENT + 500)
    bounds = {**BOUNDS, "idle_timeout_seconds": 4.0, "max_connections": SILENT + 100}
    api = procs.start("api", server=bounds)
    client = Client(api.url, spec_checker)
    serve_one(client)
    child = psutil.Process(api.pid)
    rss_start = child.memory_info().rss
    served = Served(client, api)
    served.start()

    silent = [connect(api, blocking=False) for _ in range(SILENT)]
    slow = Slowloris(api)
    slow.start()

    def all_closed() -> bool:
        for sock in [sock for sock in silent if closed_by_server(sock)]:
            sock.close()
            silent.remove(sock)
        return not silent and slow.closed.is_set()

    try:
        wait_for(all_closed, timeout=bounds["idle_timeout_seconds"] + SLACK, interval=0.1)
        wait_for(lambda: served.rounds_while_held or served.failures or not served.is_alive())
        served_after = served.rounds_while_held
    finally:
        served.stop()
        slow.stop()
        for sock in silent:
            sock.close()

    assert not served.failures, served.failures
    assert served_after >= 1
    assert_error_shape(slow.answer, 408)
    wait_for(lambda: child.memory_info().rss <= rss_start + RSS_SLACK, timeout=SLACK)
    print(
        f"RSS start {rss_start / 2**20:.1f} MB, peak {served.rss_peak / 2**20:.1f} MB with "
        f"{SILENT} silent sockets, after {child.memory_info().rss / 2**20:.1f} MB"
    )
    serve_one(client)
    assert api.terminate() == 0


def test_big_request_heads_get_431_in_the_error_shape(procs: Processes) -> None:
    api = procs.start("api", server=BOUNDS)
    limit = BOUNDS["max_header_bytes"]

    within = exchange(api, request_head(BOUNDS["max_headers"], padding=limit - 2000))
    assert parse(within)[0] == 200, within[:300]

    too_many = exchange(api, request_head(BOUNDS["max_headers"] + 1))
    assert_error_shape(too_many, 431)
    assert b"header fields" in too_many

    too_big = exchange(api, request_head(5, padding=limit + 1))
    assert_error_shape(too_big, 431)
    assert b"bytes" in too_big

    endless = exchange(api, b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Endless: " + b"e" * limit)
    assert_error_shape(endless, 431)

    assert api.terminate() == 0


def test_connections_past_the_cap_get_503_until_others_close(procs: Processes) -> None:
    cap = 20
    api = procs.start(
        "api",
        server={
            "max_connections": cap,
            "idle_timeout_seconds": 60.0,
            "header_timeout_seconds": 60.0,
        },
    )
    health = b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    held = [connect(api) for _ in range(cap)]

    def refusal() -> bytes | None:
        answer = exchange(api, health)
        return answer if parse(answer)[0] == 503 else None

    refused = wait_for(refusal)
    headers = assert_error_shape(refused, 503)
    assert headers["retry-after"] == "1"

    for sock in held[1:]:
        sock.close()
    wait_for(lambda: parse(exchange(api, health))[0] == 200)

    assert api.terminate() == 0, "SIGTERM with an idle connection open"
    held[0].close()


@pytest.mark.parametrize("command", ["serve", "api --processes 2"])
def test_serve_and_api_processes_apply_the_bounds(procs: Processes, command: str) -> None:
    name, *_ = command.split()
    server = {**BOUNDS, "idle_timeout_seconds": 1.0, "max_headers": 10}
    if command.endswith("2"):
        server["processes"] = 2
    process = procs.start(name, server=server)
    if command.endswith("2"):
        wait_for(lambda: process.logs().count("Application startup complete") == 2)

    for _ in range(6):
        assert_error_shape(exchange(process, request_head(11)), 431)
    silent = connect(process, blocking=False)
    wait_for(lambda: closed_by_server(silent), timeout=1.0 + SLACK, interval=0.05)
    silent.close()
    with connect(process) as kept_alive:
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200 ")
        kept_alive.setblocking(False)
        wait_for(lambda: closed_by_server(kept_alive), timeout=1.0 + SLACK, interval=0.05)
    assert process.logs().count("open-file limit") == 1

    assert process.terminate() == 0


class FileLimits:
    """A stand-in for :mod:`resource`'s open-file limit calls, recording what is set."""

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)

    def getrlimit(self, _which: int) -> tuple[int, int]:
        return self.limits

    def setrlimit(self, _which: int, limits: tuple[int, int]) -> None:
        self.limits = limits


def file_limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> FileLimits:
    fake = FileLimits(soft, hard)
    monkeypatch.setattr(connections.resource, "getrlimit", fake.getrlimit)
    monkeypatch.setattr(connections.resource, "setrlimit", fake.setrlimit)
    return fake


def test_the_open_file_limit_is_raised_to_the_hard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = file_limits(monkeypatch, 1024, 65536)
    limits = connection_limits(Settings(), run_worker=False)
    assert fake.limits == (65536, 65536)
    assert limits.max_connections == Settings().server.max_connections


def test_max_connections_is_lowered_to_what_the_open_file_limit_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    file_limits(monkeypatch, 1024, 1024)
    provider = ProviderConfig(name="p", base_url="http://upstream", max_concurrency=100)
    settings = Settings(database=DatabaseConfig(pool_size=10), providers={"p": provider})
    api = connection_limits(settings, run_worker=False).max_connections
    serve = connection_limits(settings, run_worker=True).max_connections
    assert 0 < serve < api < 1024 - 10
    assert api - serve == 100
