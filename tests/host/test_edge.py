"""The host's HTTP edge (kit.host.edge) against a real ``kit dev`` host on 127.0.0.1, over
raw sockets: head limits, the head timeout, Content-Length with Transfer-Encoding, and the
cap on unauthenticated connections per peer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from kit.cli.stack import Stack, run_stack
from kit.client import create_session
from kit.host.edge import SEND_MANY, EdgeLimits, QuietRefusals, Refusal, check_head
from kit.host.gateway import serve, tcp_socket, url_of
from tests.conftest import stack_settings
from tests.host.wsdriver import Driver

HEAD_TIMEOUT_S = 1.0
"""The hosts here give a request head this long, so the timeout tests end quickly."""
BOUND_S = 10.0
"""The longest any test here waits for the host to answer or close."""
WS_PATH = "/v1/sessions/00000000-0000-4000-8000-000000000000/ws"


@contextlib.asynccontextmanager
async def _host(kit_tmp: Path, per_peer: int | None) -> AsyncIterator[Stack]:
    limits = EdgeLimits(head_timeout_s=HEAD_TIMEOUT_S, unauthenticated_per_peer=per_peer)
    async with run_stack(stack_settings(kit_tmp / "state", edge=limits)) as running:
        yield running


@pytest.fixture
async def host(kit_tmp: Path) -> AsyncIterator[Stack]:
    """A local stack whose edge has a short head timeout and no per-peer cap."""
    async with _host(kit_tmp, None) as running:
        yield running


class Raw:
    """One TCP connection to the host, speaking bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Raw:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        return cls(*await asyncio.open_connection(parts.hostname, parts.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lowercase names), body (Content-Length)."""
        async with asyncio.timeout(BOUND_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in filter(None, lines):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    async def rest(self) -> tuple[bytes, bool]:
        """Everything until the host closes, and whether it did within :data:`BOUND_S`."""
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(BOUND_S):
                while chunk := await self.reader.read(65536):
                    data += chunk
                return data, True
        return data, False

    async def closed_within(self, seconds: float) -> bool:
        """Whether the host closes within ``seconds``, reading (and dropping) what it sends."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(seconds):
                while await self.reader.read(65536):
                    pass
                return True
        return False

    def close(self) -> None:
        self.writer.close()


def upgrade(extra: bytes = b"") -> bytes:
    """A WebSocket upgrade request to a session socket, with ``extra`` header lines."""
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + WS_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _refused(data: bytes, status: int) -> None:
    assert data.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    assert data.count(b"HTTP/1.1 ") == 1, data


# -- the sans-I/O check ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"host", b"a")], None),
        ([(b"x-%d" % i, b"a") for i in range(101)], 431),
        ([(b"x", b"a" * 8189)], None),  # "x: aaa…": 8192 bytes
        ([(b"x", b"a" * 8190)], 431),
        ([(b"x-%d" % i, b"a" * 8000) for i in range(5)], 431),
        ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], 400),
        ([(b"upgrade", b"WebSocket"), (b"content-length", b"5")], 400),
        ([(b"upgrade", b"websocket"), (b"transfer-encoding", b"chunked")], 400),
        ([(b"upgrade", b"websocket"), (b"content-length", b"0")], None),
        ([(b"upgrade", b"h2c"), (b"content-length", b"5")], None),
    ],
)
def test_check_head(headers: list[tuple[bytes, bytes]], status: int | None) -> None:
    """A head is refused with the status its first broken limit gives, or passes."""
    refusal = check_head(b"GET", b"/", headers, EdgeLimits())
    assert (refusal.status if refusal else None) == status


def test_check_head_long_target() -> None:
    """A request line over the line limit is 414."""
    refusal = check_head(b"GET", b"/" + b"a" * 8192, [], EdgeLimits())
    assert refusal is not None
    assert refusal.status == 414


def test_refusal_closes() -> None:
    """A refusal is a JSON error with its code that tells the client the connection closes."""
    data = Refusal(431, "headers_too_large", "Too many.").serialize()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close" in head
    assert json.loads(body) == {"error": "headers_too_large", "message": "Too many."}


# -- head limits and framing -----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"".join(b"X-%d: a\r\n" % i for i in range(129)), 431),
        (b"".join(b"X-%d: a\r\n" % i for i in range(101)), 431),  # websockets takes 128
        (b"X-Big: " + b"a" * 9 * 1024 + b"\r\n", 431),
        (b"Content-Length: 5\r\n", 400),
        (b"Sec-WebSocket-Protocol: a b,,;\r\n", 400),
        (b"Sec-WebSocket-Extensions: ;;=\r\n", 400),
    ],
    ids=[
        "129-headers",
        "101-headers",
        "9KiB-line",
        "content-length",
        "bad-protocol",
        "bad-extensions",
    ],
)
async def test_bad_upgrade_is_refused_and_closed(host: Stack, extra: bytes, status: int) -> None:
    """A malformed WebSocket upgrade gets its 4xx at once and the connection closes."""
    conn = await Raw.open(host.url)
    await conn.send(upgrade(extra) + (b"hello" if b"Content-Length" in extra else b""))
    data, closed = await conn.rest()
    _refused(data, status)
    assert closed


BIG_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
    b"X-%d: %s\r\n" % (i, b"a" * 7000) for i in range(5)
)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
        (BIG_HEAD + b"\r\n", 431),
        (BIG_HEAD, 431),  # not complete yet: h11's buffer limit
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n", 400),  # TLS, not HTTP
    ],
    ids=["long-target", "big-head", "big-head-arriving", "not-http"],
)
async def test_bad_heads_are_refused_and_closed(host: Stack, head: bytes, status: int) -> None:
    """A request line over 8 KiB, a head over 32 KiB (whole, or still arriving) and bytes
    that are not HTTP get their 4xx at once and the connection closes."""
    conn = await Raw.open(host.url)
    await conn.send(head)
    data, closed = await conn.rest()
    _refused(data, status)
    assert closed


async def test_a_flood_of_bad_requests_is_one_log_line(
    host: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Thirty requests that are not HTTP are each refused, but uvicorn's line about them
    reaches the log once (then once per REFUSAL_LOG_S, counting what it held back)."""
    (quiet,) = [
        f for f in logging.getLogger("uvicorn.error").filters if isinstance(f, QuietRefusals)
    ]
    quiet.forget()  # earlier tests of this process were refused too
    for _ in range(30):
        conn = await Raw.open(host.url)
        await conn.send(b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n")
        data, closed = await conn.rest()
        _refused(data, 400)
        assert closed
    said = [r for r in caplog.records if r.getMessage().startswith("Invalid HTTP request")]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].exc_info is None


def test_quiet_refusals_counts_what_it_held_back() -> None:
    """After the interval the next line says how many were held back; other lines pass."""
    now = [0.0]
    quiet = QuietRefusals(10, clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, message, (), None)

    assert quiet.filter(record("Invalid HTTP request received."))
    assert not any(quiet.filter(record("Invalid HTTP request received.")) for _ in range(4))
    assert quiet.filter(record("Something else."))
    now[0] = 10.0
    late = record("Invalid HTTP request received.")
    assert quiet.filter(late)
    assert "4 more like it" in late.getMessage()


async def test_refusal_reaches_a_client_still_sending(host: Stack) -> None:
    """A client still sending when its head is refused reads the 431 and then the close,
    not a reset that loses it."""
    conn = await Raw.open(host.url)
    conn.writer.write(BIG_HEAD + b"X-More: " + b"a" * 1024 * 1024)
    data, closed = await conn.rest()
    _refused(data, 431)
    assert closed


async def test_every_head_on_a_keep_alive_connection_is_checked(host: Stack) -> None:
    """The second request on a kept-alive connection is held to the limits too."""
    conn = await Raw.open(host.url)
    await conn.send(HEALTHZ)
    status, _, _ = await conn.response()
    assert status == 200
    await conn.send(HEALTHZ.replace(b"\r\n\r\n", b"\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"))
    data, closed = await conn.rest()
    _refused(data, 431)
    assert closed


async def test_content_length_with_transfer_encoding_is_refused(host: Stack) -> None:
    """Content-Length with Transfer-Encoding → 400 and a close; a request smuggled behind
    it is never answered."""
    conn = await Raw.open(host.url)
    await conn.send(
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + HEALTHZ
    )
    data, closed = await conn.rest()
    _refused(data, 400)
    assert closed


async def test_normal_requests_pass(host: Stack) -> None:
    """Keep-alive requests, a body far larger than a head, and a session socket held open
    past the head timeout all work as before."""
    async with httpx.AsyncClient(base_url=host.url) as http:
        for _ in range(3):
            assert (await http.get("/healthz")).status_code == 200
        answer = await http.post(
            "/v1/sessions",
            headers={"authorization": f"Bearer {host.api_token}"},
            content=b"x" * 256 * 1024,
        )
        assert answer.status_code == 201
    info = await create_session(host.url, host.api_token)
    driver = await Driver.open(info.ws_url)
    await driver.send({"type": "hello", "token": info.token, "last_seq": None})
    assert (await driver.recv())["type"] == "welcome"
    with pytest.raises(TimeoutError):  # nothing comes for longer than a head may take
        await asyncio.wait_for(driver.ws.recv(), HEAD_TIMEOUT_S * 2)
    await driver.send({"type": "ping"})
    assert (await driver.recv())["type"] == "pong"
    await driver.close()


# -- the head timeout ------------------------------------------------------------------


async def test_trickled_heads_are_closed(host: Stack) -> None:
    """Connections that send a header line now and then, never ending the head, get 408
    and are closed after the head timeout: more lines do not extend it."""
    conns = [await Raw.open(host.url) for _ in range(20)]
    for conn in conns:
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle(conn: Raw) -> bytes | None:
        for n in range(int(BOUND_S / 0.1)):
            try:
                async with asyncio.timeout(0.1):
                    data = await conn.reader.read(65536)
            except TimeoutError:
                with contextlib.suppress(ConnectionError):
                    await conn.send(b"X-%d: a\r\n" % n)
                continue
            except ConnectionError:
                return b""
            rest, _ = await conn.rest()
            return data + rest
        return None  # still open

    answers = await asyncio.gather(*(trickle(conn) for conn in conns))
    for answer in answers:
        assert answer is not None, "a trickling connection was held past the head timeout"
        _refused(answer, 408)


async def test_silent_connection_is_closed(host: Stack) -> None:
    """A connection that never sends a byte is closed after the head timeout."""
    conn = await Raw.open(host.url)
    data, closed = await conn.rest()
    assert closed
    assert data == b""


# -- unauthenticated connections per peer ----------------------------------------------


async def test_unauthenticated_connections_per_peer(kit_tmp: Path) -> None:
    """Past the cap a new connection gets 429 and a close at once; the others stay usable;
    a socket whose hello was accepted and a request that passed the Bearer check no longer
    count."""
    async with _host(kit_tmp, 2) as stack:
        info = await create_session(stack.url, stack.api_token)
        driver = await Driver.open(info.ws_url)
        await driver.send({"type": "hello", "token": info.token, "last_seq": None})
        assert (await driver.recv())["type"] == "welcome"  # it no longer counts

        a, b = await Raw.open(stack.url), await Raw.open(stack.url)
        over = await Raw.open(stack.url)
        data, closed = await over.rest()
        _refused(data, 429)
        assert json.loads(data.partition(b"\r\n\r\n")[2])["error"] == "too_many_connections"
        assert closed

        await a.send(HEALTHZ)
        assert (await a.response())[0] == 200
        await b.send(
            b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
            b"Authorization: Bearer " + stack.api_token.encode() + b"\r\n\r\n"
        )
        assert (await b.response())[0] == 201  # b no longer counts: one more fits
        c = await Raw.open(stack.url)
        await c.send(HEALTHZ)
        assert (await c.response())[0] == 200
        refused = await Raw.open(stack.url)
        data, closed = await refused.rest()
        _refused(data, 429)
        assert closed

        await driver.send({"type": "ping"})
        assert (await driver.recv())["type"] == "pong"
        await b.send(HEALTHZ)
        assert (await b.response())[0] == 200
        await driver.close()
        for conn in (a, b, c, over, refused):
            conn.close()


async def test_send_many_writes_every_text_in_order_then_more() -> None:
    """:data:`SEND_MANY`: an app offered the extension sends a list of texts in one message;
    the client reads each as its own frame, in order, and what the app sends after it."""
    texts = [f"frame {i} é€😀" for i in range(300)]
    offered: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        offered.append(SEND_MANY in scope["extensions"])
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", SEND_MANY: texts})
        await send({"type": "websocket.send", "text": "after"})
        await send({"type": "websocket.close", "code": 1000})

    sock = tcp_socket("127.0.0.1", 0)
    server, task = serve(app, sock, EdgeLimits())
    try:
        async with asyncio.timeout(BOUND_S):
            async with websockets.connect(url_of(sock).replace("http", "ws", 1) + "/ws") as ws:
                got = [message async for message in ws]
    finally:
        server.should_exit = True
        await task
    assert offered == [True]
    assert got == [*texts, "after"]
