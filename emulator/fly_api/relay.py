"""The emulated Fly proxy's I/O: HTTP/1.1 on both sides with h11, then raw bytes after a
``101``. :mod:`emulator.fly_api.proxy` decides where requests go; this module moves them.

The client side is one :class:`HttpPeer` (h11 server role) kept across keep-alive
requests; each forwarded request opens a new :class:`Upstream` (h11 client role) to the
chosen machine, sends the request and reads the answer's head, which the proxy inspects for
``fly-replay`` before anything of it reaches the client. Bodies are passed on event by event
(streamed, never buffered whole); only the request body is kept, up to the replay limit, so
that it can be sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import TracebackType

import h11

from emulator.fly_api import replay as hdr
from emulator.fly_api.errors import FlyEmulatorError

READ_SIZE = 65536
CONNECT_LIMIT_S = 5.0
"""How long the proxy retries connecting to a machine (a just-started one may still be
opening its port), as Fly's proxy retries."""
CLOSE_GRACE_S = 5.0
"""After one side of a relayed connection closes, how long the other may still send."""
MAX_EVENTS = 10_000_000


class MachineConnectionError(FlyEmulatorError):
    """A machine accepted the connection but gave no usable HTTP answer (proxy: 502)."""


@dataclass
class Exchange:
    """One client request as read: its head, its body up to the replay limit, and whether
    that is all of it."""

    request: h11.Request
    body: list[bytes] = field(default_factory=list)
    complete: bool = False
    client_ip: str = ""
    request_id: str = ""


class HttpPeer:
    """One end of an HTTP/1.1 connection, driven by an h11 state machine."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: h11.Connection
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next event, reading as much as it takes."""
        for _ in range(MAX_EVENTS):
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            self.conn.receive_data(await self.reader.read(READ_SIZE))
        raise h11.RemoteProtocolError("too many reads for one event")

    async def send(self, event: h11.Event) -> None:
        """Send ``event``, waiting until the socket takes it (back-pressure)."""
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def read_request(self, limit: int) -> Exchange | None:
        """The next request with up to ``limit`` bytes of its body; None when the client
        closed instead."""
        event = await self.next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError(f"expected a request, got {event!r}")
        exchange = Exchange(event)
        if self.conn.they_are_waiting_for_100_continue:
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        size = 0
        while size <= limit:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                exchange.body.append(bytes(event.data))
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                exchange.complete = True
                break
            else:
                raise h11.RemoteProtocolError(f"expected a request body, got {event!r}")
        return exchange


class Upstream(HttpPeer):
    """A connection to a machine's service for one request."""

    _body: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> Upstream | None:
        """Connect, retrying refusals for up to :data:`CONNECT_LIMIT_S`; None if it never
        accepts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_LIMIT_S
        delay = 0.02
        for _ in range(1000):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                if loop.time() + delay > deadline:
                    return None
                await asyncio.sleep(delay)  # a retry backoff, as Fly's proxy retries
                delay = min(delay * 2, 0.5)
                continue
            return cls(reader, writer, h11.Connection(h11.CLIENT))
        return None

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._body is not None:
            self._body.cancel()
            await asyncio.gather(self._body, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def send_request(
        self, exchange: Exchange, headers: hdr.Headers, client: HttpPeer
    ) -> h11.Response | h11.InformationalResponse:
        """Send the request and read the answer's head (a final response, or a 101). The
        body goes in the background (the rest of one over the limit streamed from
        ``client``), so that a machine answering before it has read the body is heard."""
        request = exchange.request
        try:
            await self.send(
                h11.Request(
                    method=request.method,
                    target=request.target,
                    headers=hdr.without(headers, b"expect"),
                )
            )
        except (h11.ProtocolError, OSError) as exc:
            raise MachineConnectionError(
                f"fly-proxy: the machine's service broke the connection ({exc}): "
                "it must answer HTTP/1.1."
            ) from exc
        if exchange.complete and not exchange.body:
            # No body (every upgrade): end the request now, so that h11 expects the 101.
            await self._send_body(exchange, client)
        else:
            self._body = asyncio.create_task(self._send_body(exchange, client))
        try:
            for _ in range(100):
                event = await self.next_event()
                if isinstance(event, h11.Response):
                    return event
                if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                    return event
                if not isinstance(event, h11.InformationalResponse):
                    break
        except (h11.ProtocolError, OSError) as exc:
            raise MachineConnectionError(
                f"fly-proxy: the machine's service broke the connection ({exc}): "
                "it must answer HTTP/1.1."
            ) from exc
        raise MachineConnectionError(
            "fly-proxy: the machine's service closed the connection without an answer: "
            "it must answer HTTP/1.1."
        )

    async def _send_body(self, exchange: Exchange, client: HttpPeer) -> None:
        with contextlib.suppress(h11.ProtocolError, OSError):
            for chunk in exchange.body:
                await self.send(h11.Data(data=chunk))
            for _ in range(0 if exchange.complete else MAX_EVENTS):
                event = await client.next_event()
                if not isinstance(event, h11.Data):
                    break
                exchange.body = []  # too large to keep: it cannot be replayed
                await self.send(h11.Data(data=bytes(event.data)))
            await self.send(h11.EndOfMessage())

    async def relay_answer(
        self, head: h11.Response | h11.InformationalResponse, client: HttpPeer, request_id: str
    ) -> bool:
        """Pass the answer on: a response streamed event by event (False), or a 101 and then
        raw bytes both ways until either side closes (True)."""
        if isinstance(head, h11.InformationalResponse):
            headers = hdr.forwarded_response(head.headers, request_id=request_id, switching=True)
            await client.send(
                h11.InformationalResponse(status_code=101, headers=headers, reason=head.reason)
            )
            await relay_bytes(client, self)
            return True
        headers = hdr.forwarded_response(head.headers, request_id=request_id)
        await client.send(
            h11.Response(status_code=head.status_code, headers=headers, reason=head.reason)
        )
        for _ in range(MAX_EVENTS):
            event = await self.next_event()
            if isinstance(event, h11.Data):
                await client.send(h11.Data(data=bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                await client.send(h11.EndOfMessage())
                break
            else:
                raise h11.RemoteProtocolError(f"expected a response body, got {event!r}")
        return False


async def answer(
    client: HttpPeer,
    status: int,
    text: str,
    request_id: str,
    extra: hdr.Headers | None = None,
) -> None:
    """The proxy's own answer (an error): plain text, with ``fly-request-id``."""
    body = (text + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await client.send(
        h11.Response(
            status_code=status, headers=hdr.forwarded_response(headers, request_id=request_id)
        )
    )
    await client.send(h11.Data(data=body))
    await client.send(h11.EndOfMessage())


async def relay_bytes(a: HttpPeer, b: HttpPeer) -> None:
    """After a protocol switch: bytes both ways (what h11 read past the heads first) until
    one side closes; the other then gets an end of stream and :data:`CLOSE_GRACE_S` to
    finish. No idle timeout: a quiet WebSocket stays open."""

    async def pump(src: HttpPeer, dst: HttpPeer) -> None:
        pending = src.conn.trailing_data[0]
        if pending:
            dst.writer.write(pending)
        for _ in range(MAX_EVENTS):
            await dst.writer.drain()
            data = await src.reader.read(READ_SIZE)
            if not data:
                break
            dst.writer.write(data)
        if dst.writer.can_write_eof():
            with contextlib.suppress(OSError):
                dst.writer.write_eof()

    tasks = [asyncio.create_task(pump(a, b)), asyncio.create_task(pump(b, a))]
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_GRACE_S)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
