"""HTTP connections with deadlines and a cap: uvicorn's httptools protocol, guarded.

uvicorn times out idle keep-alive connections only: a client that opens a connection and
sends nothing, half a request line, or headers and part of a body, holds its connection
(and a slot of the process's file descriptors) for as long as it likes. Here:

* the request's headers must be complete within ``header_timeout`` of the connection or
  of the request's first byte, its body within ``body_timeout`` of its headers; otherwise
  the relay answers ``408 request_timeout`` (when it has not started a reply) and closes;
* a reply the client has not read within ``body_timeout`` of its end (a page of up to
  ``page_max_bytes`` left in the socket's buffer) is dropped with the connection;
* over ``max_connections`` open connections (HTTP and WebSocket) in this process, a new
  one is answered ``503 too_many_connections`` with ``Retry-After`` and closed;
* a request httptools cannot parse gets a JSON ``400 malformed_request``, with the same
  headers as every other reply (``headers.py``), instead of uvicorn's plain text.

These are written to the socket here, outside the ASGI app, so they are built here too.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .headers import API_POLICY, COMMON_HEADERS

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Deadlines:
    header_timeout: float
    body_timeout: float
    max_connections: int


def raw_reply(status: int, code: str, detail: str, extra: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 reply with a JSON error body that closes the connection."""
    body = json.dumps({"error": code, "detail": detail}, ensure_ascii=True).encode("ascii")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
        *COMMON_HEADERS,
        (b"content-security-policy", API_POLICY.encode("ascii")),
        *((k.encode("ascii"), v.encode("ascii")) for k, v in (extra or {}).items()),
    ]
    head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
    return head + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """One HTTP connection (see the module docstring); ``deadlines`` is set by
    :func:`guarded_protocol` on a subclass per server."""

    deadlines: ClassVar[Deadlines]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.deadlines.max_connections:
            self._refuse(503, "too_many_connections", "the relay has too many connections; retry", {"Retry-After": "1"})
            return
        self._arm(self.deadlines.header_timeout, "the request's headers did not arrive in time")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._drain is not None:
            self._drain.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._drain is None and self.transport.get_write_buffer_size() > 0:
            self._drain = self.loop.call_later(self.deadlines.body_timeout, self._drop_if_unread)

    def _drop_if_unread(self) -> None:
        self._drain = None
        if self.transport.get_write_buffer_size() > 0:
            self.transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:
            self._arm(self.deadlines.header_timeout, "the request's headers did not arrive in time")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._arm(self.deadlines.body_timeout, "the request's body did not arrive in time")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed_request", "not a valid HTTP/1.1 request")

    def _arm(self, seconds: float, detail: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expire, detail)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, detail: str) -> None:
        self._timer = None
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        self._refuse(408, "request_timeout", detail)

    def _refuse(self, status: int, code: str, detail: str, extra: dict[str, str] | None = None) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is not None:  # the app reading this request sees it gone; its reply is dropped
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(raw_reply(status, code, detail, extra))
        self.transport.close()


def guarded_protocol(deadlines: Deadlines) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn builds each connection with (``uvicorn.run(http=...)``)."""
    return type("RelayHttpProtocol", (GuardedHttpProtocol,), {"deadlines": deadlines})
