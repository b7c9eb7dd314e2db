"""Bounds on HTTP connections: how long they may be silent or slow, how big a request head may
be, and how many may be open at once in one process.

uvicorn's ``timeout_keep_alive`` is armed only after a response, so a connection that never
sends a byte, or sends its headers a byte at a time, is kept forever, and neither uvicorn nor
httptools limits the size or number of header fields. Each such connection holds a file
descriptor and memory, and enough of them stop a process. :class:`GatewayHttpProtocol` is
uvicorn's httptools protocol with those bounds added; they cost one timer per connection (one
more for a request head that does not arrive in one read) and a few integer operations per read
and per header field, never work per byte. Refusals are answered in the gateway's error shape
and close the connection.

It also writes what one turn of the event loop wrote to a connection in one send: uvicorn
writes a response's head and its body separately, two system calls and two TCP segments for
every small answer, which cost about a seventh of a request's CPU.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import http
import logging
import resource
from typing import Any, cast

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from asyncgate.config import Settings
from asyncgate.errors import error_body

log = logging.getLogger("asyncgate.connections")

RETRY_AFTER_SECONDS = 1
"""``Retry-After`` of the ``503`` answered to a connection past ``server.max_connections``."""

_REQUEST_LINE_BYTES = 12
"""What a request line adds to its target on the wire, about (``GET `` and `` HTTP/1.1\\r\\n``)."""
_FIELD_FRAMING_BYTES = 4
"""What a header field adds to its name and value on the wire (``: `` and ``\\r\\n``)."""
_OTHER_DESCRIPTORS = 64
"""File descriptors a process needs besides its connections and pools (logs, listeners, ...)."""


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """The bounds one API process applies to each of its connections."""

    header_timeout: float
    idle_timeout: float
    max_header_bytes: int
    max_headers: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        server = settings.server
        return cls(
            header_timeout=server.header_timeout_seconds,
            idle_timeout=server.idle_timeout_seconds,
            max_header_bytes=server.max_header_bytes,
            max_headers=server.max_headers,
            max_connections=server.max_connections,
        )


_COALESCE_BYTES = 64 * 1024


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request that is answered with an error."""


@functools.cache
def _error_head_and_body(status: int, message: str, retry_after: bool) -> tuple[bytes, bytes]:
    """Status line and fixed headers, and the body, of an error answer (built once each)."""
    phrase = http.HTTPStatus(status).phrase
    body = orjson.dumps(error_body(status, message))
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    if retry_after:
        head += f"retry-after: {RETRY_AFTER_SECONDS}\r\n"
    return head.encode("ascii"), body


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of a :class:`ConnectionLimits`.

    A connection gets ``idle_timeout`` to start a request, and a request whose head is not
    complete in its first read gets ``header_timeout`` from then to the end of its headers
    (``408``, then closed); between requests uvicorn's keep-alive timeout is ``idle_timeout``.
    A head over ``max_header_bytes`` or with more than ``max_headers`` fields is answered
    ``431``. A connection opened while ``max_connections`` others are open never reaches the
    app: its request is answered ``503`` with ``Retry-After`` as soon as its head has arrived.
    Build it with :func:`protocol_factory`.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timeout = limits.header_timeout
        self._idle_timeout = limits.idle_timeout
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_connections = limits.max_connections
        self._deadline: asyncio.TimerHandle | None = None
        self._head_deadline = False
        self._reading_head = True
        self._head_received = 0
        self._head_bytes = _REQUEST_LINE_BYTES
        self._head_fields = 0
        self._over_capacity = False
        self._refusal: tuple[int, str, bool] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = cast(asyncio.Transport, _CoalescingTransport(transport, self.loop))
        self._over_capacity = len(self.connections) > self._max_connections
        self._deadline = self.loop.call_later(self._idle_timeout, self._idle_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
            return
        if self._reading_head and self._head_received:
            if self._head_received > self._max_header_bytes:
                self._refuse(*self._too_large())
            elif not self._head_deadline:
                self._disarm()
                self._deadline = self.loop.call_later(self._header_timeout, self._head_expired)
                self._head_deadline = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        self._head_bytes += len(name) + len(value) + _FIELD_FRAMING_BYTES
        if self._head_fields > self._max_headers:
            self._refusal = (431, f"more than {self._max_headers} header fields", False)
            raise _Refused
        if self._head_bytes > self._max_header_bytes:
            self._refusal = self._too_large()
            raise _Refused
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._deadline is not None:
            self._disarm()
        self._reading_head = False
        self._head_received = 0
        head_bytes = len(self.url) + self._head_bytes
        self._head_bytes = _REQUEST_LINE_BYTES
        self._head_fields = 0
        if head_bytes > self._max_header_bytes:
            self._refusal = self._too_large()
            raise _Refused
        if self._over_capacity:
            self._refusal = (503, "too many open connections; retry later", True)
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_head = True
        super().on_message_complete()

    def _too_large(self) -> tuple[int, str, bool]:
        return 431, f"request line and headers over {self._max_header_bytes} bytes", False

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._head_deadline = False

    def _idle_expired(self) -> None:
        self._deadline = None
        self._head_deadline = False
        if not self.transport.is_closing():
            self.transport.close()

    def _head_expired(self) -> None:
        self._deadline = None
        self._head_deadline = False
        self._refuse(408, f"request headers not received within {self._header_timeout:g} s", False)

    def _refuse(self, status: int, message: str, retry_after: bool) -> None:
        """Answer ``status`` in the error shape (unless already closing) and close."""
        self._disarm()
        if self.transport.is_closing():
            return
        head, body = _error_head_and_body(status, message, retry_after)
        parts = [head]
        for name, value in self.server_state.default_headers:
            parts.extend([name, b": ", value, b"\r\n"])
        parts.extend([b"\r\n", body])
        self.transport.write(b"".join(parts))
        self.transport.close()


class _CoalescingTransport:
    """A connection's transport whose writes of one loop turn go out as one write at its end;
    ``close`` sends what is pending first. Everything else is the transport's own."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if not pending or self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        elif sum(map(len, pending)) <= _COALESCE_BYTES:
            self._transport.write(b"".join(pending))
        else:  # a large body is not copied to save one system call
            self._transport.writelines(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def protocol_factory(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """What uvicorn's ``http`` option takes: :class:`GatewayHttpProtocol` bound to ``limits``.

    It is a :func:`functools.partial` (uvicorn only calls it), so it pickles by reference for
    the spawned processes of ``api --processes N``.
    """
    return cast(type[asyncio.Protocol], functools.partial(GatewayHttpProtocol, limits=limits))


def connection_limits(settings: Settings, *, run_worker: bool) -> ConnectionLimits:
    """The connection limits of ``settings``, after raising this process's soft open-file limit
    to its hard limit where the system lets it.

    ``max_connections`` is lowered, if need be, to what the open-file limit leaves after the
    database pool, the upstream connections of a worker in this process and a few other
    descriptors. Logs one line. Processes started afterwards (those of ``api --processes N``)
    inherit the limit.
    """
    limits = ConnectionLimits.from_settings(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    wanted = hard if hard != resource.RLIM_INFINITY else _system_file_maximum()
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    reserve = _OTHER_DESCRIPTORS + settings.database.pool_size
    if run_worker:
        reserve += sum(provider.max_concurrency for provider in settings.providers.values())
    allowed = max(1, soft - reserve)
    raised = f"raised from {before} to {soft}" if soft != before else f"{soft}"
    if limits.max_connections > allowed:
        log.warning(
            "open-file limit %s (hard %s): server.max_connections %d lowered to %d",
            raised,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
            limits.max_connections,
            allowed,
        )
        return dataclasses.replace(limits, max_connections=allowed)
    log.info(
        "open-file limit %s; at most %d connections per process",
        raised,
        limits.max_connections,
    )
    return limits


def _system_file_maximum() -> int:
    """The most a soft open-file limit may be raised to when the hard limit is unlimited."""
    try:
        with open("/proc/sys/fs/nr_open") as nr_open:
            return int(nr_open.read())
    except (OSError, ValueError):
        return 1 << 20
