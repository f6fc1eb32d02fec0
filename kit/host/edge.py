"""The host's HTTP edge: what a connection must get right before kit's app sees it.

uvicorn serves kit's apps (h11 for HTTP/1.1, websockets' sans-I/O protocol for WebSocket
upgrades). uvicorn has no setting for most of what an edge facing other processes needs,
so :class:`EdgeConfig` puts a small guard into uvicorn's own protocol classes:

- **every request head** on a connection, keep-alive and pipelined ones included, has at
  most :data:`MAX_HEADERS` fields, no line over :data:`MAX_LINE_BYTES` and at most
  :data:`MAX_HEAD_BYTES` in all; else 431 (414 for the request line) and a close;
- ``Content-Length`` with ``Transfer-Encoding`` is refused with 400 and a close (RFC 9112
  §6.1), and so is a WebSocket upgrade that carries a body;
- a head must be complete within :data:`HEAD_TIMEOUT_S` of the connection opening or of
  the previous response ending: else 408 and a close (a plain close if none of it came).
  A WebSocket's opening handshake is its upgrade request's head; after it, kit's app
  gives the ``hello`` its own deadline (``kit.host.app.HELLO_TIMEOUT_S``);
- a peer address may hold :data:`UNAUTHENTICATED_PER_PEER` connections that have not
  authenticated; one more is answered 429 and closed at once. The app calls
  :func:`authenticated` with a connection's scope once it has proved who it is (a
  WebSocket ``hello`` accepted, a ``Bearer`` token checked); the connection no longer
  counts.

uvicorn logs a line for each malformed request it refuses (and a traceback for WebSocket
text that is not UTF-8); :class:`QuietRefusals` lets each such line through once per
:data:`REFUSAL_LOG_S`, saying how many it held back, so a neighbour cannot flood the log.

Refusals are JSON, as kit's other HTTP errors: ``{"error": <code>, "message": <text>}``,
followed by a lingering close (:data:`LINGER_S`).
Malformed ``Sec-WebSocket-*`` headers are websockets' to refuse (400 and a close).

This relies on uvicorn's ``H11Protocol`` and ``WebSocketsSansIOProtocol`` internals, so
pyproject.toml pins uvicorn's minor version; tests/host/test_edge.py checks each limit
against a real server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NamedTuple, cast

import h11
import uvicorn
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import InvalidState
from websockets.http11 import Request

MAX_HEADERS = 100
"""Header fields one request head may have (431 past it)."""
MAX_LINE_BYTES = 8 * 1024
"""The longest request line or header field line, in bytes (414 or 431 past it)."""
MAX_HEAD_BYTES = 32 * 1024
"""The largest request head in all, in bytes (431 past it)."""
HEAD_TIMEOUT_S = 10.0
"""How long a connection may take to send a complete request head, from its opening or
from the end of the previous response (408 past it)."""
LINGER_S = 2.0
"""After a refusal, how long the edge goes on reading (and dropping) what the client still
sends: closing with unread data would reset the connection, and the client could lose the
answer."""
UNAUTHENTICATED_PER_PEER = 64
"""Connections one peer address may hold open before they authenticate (429 past it).
Every local client shares 127.0.0.1: ``KIT_PEER_CONNECTIONS`` raises it for ``kit dev``."""

REFUSAL_LOG_S = 10.0
"""How often uvicorn's line about a refused malformed request may reach the log."""
REFUSAL_MESSAGES = frozenset(
    {
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "Invalid UTF-8 sequence received from client.",
    }
)
"""uvicorn's log lines (logger ``uvicorn.error``) about a peer's malformed input."""

_STATE_KEY = "kit.edge"

SEND_MANY = "kit.send_many"
"""An ASGI extension of :class:`EdgeWebSocket`: where ``scope["extensions"]`` holds it, a
``websocket.send`` message may carry a list of texts under this key instead of ``text``;
they go out as that many text frames, in order, in one write to the socket (a replay of a
thousand events costs one system call, not a thousand)."""


class QuietRefusals(logging.Filter):
    """A filter for ``uvicorn.error``: each of :data:`REFUSAL_MESSAGES` passes once per
    ``interval_s``, without a traceback, saying how many were held back since; every other
    record passes untouched."""

    def __init__(
        self, interval_s: float = REFUSAL_LOG_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def forget(self) -> None:
        """Start afresh, as if nothing had been logged yet."""
        self._last.clear()
        self._held.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str) or message not in REFUSAL_MESSAGES:
            return True
        now = self.clock()
        if now - self._last.get(message, -self.interval_s) < self.interval_s:
            self._held[message] = self._held.get(message, 0) + 1
            return False
        self._last[message] = now
        held = self._held.pop(message, 0)
        if held:
            record.msg = (
                f"{message} ({held} more like it in the last {self.interval_s:g} s not shown)"
            )
        record.exc_info, record.exc_text = None, None
        return True


def quiet_refusals(logger: logging.Logger | None = None) -> None:
    """Install one :class:`QuietRefusals` on ``uvicorn.error`` (again: nothing)."""
    target = logger or logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietRefusals) for f in target.filters):
        target.addFilter(QuietRefusals())


@dataclass(frozen=True)
class EdgeLimits:
    """The edge's limits; the defaults are the module's constants."""

    max_headers: int = MAX_HEADERS
    max_line_bytes: int = MAX_LINE_BYTES
    max_head_bytes: int = MAX_HEAD_BYTES
    head_timeout_s: float = HEAD_TIMEOUT_S
    unauthenticated_per_peer: int | None = UNAUTHENTICATED_PER_PEER
    """None: no cap (a server whose only clients are kit's own, the offline model)."""


class Refusal(NamedTuple):
    """An HTTP error answer, after which the connection closes."""

    status: int
    code: str
    message: str

    def serialize(self) -> bytes:
        """The whole HTTP/1.1 response."""
        body = json.dumps({"error": self.code, "message": self.message}).encode()
        head = (
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        return head.encode() + body


def check_head(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], limits: EdgeLimits
) -> Refusal | None:
    """Why a parsed request head is refused, or None. ``headers``: lowercase names."""
    if len(headers) > limits.max_headers:
        return Refusal(
            431,
            "headers_too_large",
            f"A request may have at most {limits.max_headers} header fields.",
        )
    size = len(method) + len(target) + len(b"  HTTP/1.1")
    if size > limits.max_line_bytes:
        return Refusal(
            414, "uri_too_long", f"The request line is longer than {limits.max_line_bytes} bytes."
        )
    lengths: list[bytes] = []
    chunked = upgrade = False
    for name, value in headers:
        line = len(name) + 2 + len(value)
        if line > limits.max_line_bytes:
            return Refusal(
                431,
                "headers_too_large",
                f"A header field is longer than {limits.max_line_bytes} bytes.",
            )
        size += 2 + line
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"upgrade" and value.lower() == b"websocket":
            upgrade = True
    if size > limits.max_head_bytes:
        return Refusal(
            431,
            "headers_too_large",
            f"The request head is larger than {limits.max_head_bytes} bytes.",
        )
    if lengths and chunked:
        return Refusal(
            400,
            "bad_request",
            "A request may not have both Content-Length and Transfer-Encoding (RFC 9112, section 6.1).",
        )
    if upgrade and (chunked or any(value != b"0" for value in lengths)):
        return Refusal(400, "bad_request", "A WebSocket upgrade request carries no body.")
    return None


class PeerCounts:
    """Connections per peer address that have not authenticated yet."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def admit(self, peer: str) -> Ticket | None:
        """A ticket for one more connection from ``peer``, or None if it is at the cap."""
        count = self._open.get(peer, 0)
        if self.limit is not None and count >= self.limit:
            return None
        self._open[peer] = count + 1
        return Ticket(self, peer)

    def _release(self, peer: str) -> None:
        count = self._open[peer] - 1
        if count:
            self._open[peer] = count
        else:
            del self._open[peer]


class Ticket:
    """One connection's place under its peer's cap, held until it authenticates or closes."""

    def __init__(self, counts: PeerCounts, peer: str) -> None:
        self._counts: PeerCounts | None = counts
        self.peer = peer

    def release(self) -> None:
        """Stop counting this connection (once; later calls do nothing)."""
        if self._counts is not None:
            self._counts._release(self.peer)
            self._counts = None


def authenticated(scope: MutableMapping[str, Any]) -> None:
    """Mark the connection of this ASGI ``scope`` authenticated: it no longer counts against
    its peer's cap. Does nothing for a scope not served through :class:`EdgeConfig`."""
    ticket = scope.get("state", {}).get(_STATE_KEY)
    if isinstance(ticket, Ticket):
        ticket.release()


class EdgeConfig(uvicorn.Config):
    """A uvicorn config whose connections pass kit's edge; other arguments as uvicorn's."""

    def __init__(self, app: Any, *, limits: EdgeLimits | None = None, **kwargs: Any) -> None:
        self.limits = limits or EdgeLimits()
        self.peers = PeerCounts(self.limits.unauthenticated_per_peer)
        quiet_refusals()
        super().__init__(
            app,
            http=EdgeHttp,
            ws=EdgeWebSocket,
            h11_max_incomplete_event_size=self.limits.max_head_bytes,
            **kwargs,
        )


class _Connection(h11.Connection):
    """h11's server side, checking each request head as it is parsed."""

    def __init__(self, limits: EdgeLimits, on_head: Callable[[], None]) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self.limits = limits
        self.on_head = on_head
        self.refusal: Refusal | None = None
        """Why the request was refused, when ``next_event`` raised."""

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:  # its buffer filled before a head was complete
                self.refusal = Refusal(
                    431,
                    "headers_too_large",
                    f"The request head is larger than {self.limits.max_head_bytes} bytes.",
                )
            elif exc.error_status_hint == 501:  # a transfer coding other than chunked
                self.refusal = Refusal(501, "not_implemented", f"{exc}")
            else:  # h11's own message may quote the request: not echoed
                self.refusal = Refusal(400, "bad_request", "The request is not valid HTTP/1.1.")
            raise
        if isinstance(event, h11.Request):
            refusal = check_head(event.method, event.target, event.headers, self.limits)
            if refusal is not None:
                self.refusal = refusal
                raise h11.RemoteProtocolError(refusal.message, refusal.status)
            self.on_head()
        return event


def _peer(transport: asyncio.BaseTransport) -> str:
    name = transport.get_extra_info("peername")
    return str(name[0]) if isinstance(name, tuple) and name else "local"


class EdgeHttp(H11Protocol):
    """uvicorn's h11 protocol behind kit's edge (head limits, head timeout, peer cap)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, EdgeConfig)
        self.limits = config.limits
        self.peers = config.peers
        self.guard = _Connection(self.limits, self._head_complete)
        self.conn = self.guard
        self.ticket: Ticket | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ticket = self.peers.admit(_peer(transport))
        if ticket is None:
            self._refuse(
                Refusal(
                    429,
                    "too_many_connections",
                    f"More than {self.peers.limit} connections from this address have not "
                    "authenticated; close some, or authenticate them.",
                )
            )
            return
        self.ticket = ticket
        # Each scope's "state" is a copy of app_state: the app finds the ticket there, and
        # so does the WebSocket protocol this connection may upgrade to.
        self.app_state = {**self.app_state, _STATE_KEY: ticket}
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.ticket is not None:
            self.ticket.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is not None:
            self._head_bytes += len(data)
        super().data_received(data)

    def on_response_complete(self) -> None:
        if self._refused:
            return
        # Armed first: a pipelined request that the call below parses disarms it.
        if not self.transport.is_closing():
            self._arm()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 or :class:`_Connection` refused."""
        refusal = self.guard.refusal or Refusal(400, "bad_request", msg)
        if self.guard.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._refuse(refusal)
        else:  # a response is under way: all that is left is to close
            self._disarm()
            self.transport.close()

    def _refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal``, end the writing side and close after :data:`LINGER_S`, or at
        once when the client closes its side (``eof_received``)."""
        self._disarm()
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self.transport.write(refusal.serialize())
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        try:
            self.transport.write_eof()
        except OSError:  # the client is gone already
            self.transport.close()
            return
        self._deadline = self.loop.call_later(LINGER_S, self.transport.close)

    def _head_complete(self) -> None:
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes = 0
        self._deadline = self.loop.call_later(self.limits.head_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timeout(self) -> None:
        self._deadline = None
        if not self._head_bytes:
            self.transport.close()
            return
        self._refuse(
            Refusal(
                408,
                "request_timeout",
                f"The request head did not arrive within {self.limits.head_timeout_s:g} seconds.",
            )
        )


class EdgeWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol; an upgraded connection keeps its place under the cap
    until it authenticates or closes. It offers the app :data:`SEND_MANY` in the scope's
    ``extensions``: one ASGI message writes many text frames with one transport write."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # only an accepted upgrade has one
        if scope is not None:  # the app's task has not run yet: it sees the extension
            scope["extensions"][SEND_MANY] = {}

    async def send(self, message: ASGISendEvent) -> None:
        texts: list[str] | None = (
            cast("dict[str, Any]", message).get(SEND_MANY)
            if message["type"] == "websocket.send"
            else None
        )
        if texts is None:
            await super().send(message)
            return
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if not self.handshake_complete or self.close_sent or self.initial_response is not None:
            raise RuntimeError(f"Unexpected ASGI message {SEND_MANY!r} in this state.")
        try:
            for text in texts:
                self.conn.send_text(text.encode())
        except InvalidState as exc:
            raise ClientDisconnected() from exc
        self.transport.write(b"".join(self.conn.data_to_send()))

    def connection_lost(self, exc: Exception | None) -> None:
        ticket = self.app_state.get(_STATE_KEY)
        if isinstance(ticket, Ticket):
            ticket.release()
        super().connection_lost(exc)
