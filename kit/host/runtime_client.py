"""The host's client for a runtime's HTTP API (:mod:`kit.protocol.runtime_api`).

A deliberately small HTTP/1.1 client over a Unix socket or TCP, chunked NDJSON read line by
line as it arrives. The runtime's turn stream sits on the path of every event, so it stays
free of general-purpose client overhead.

Connections: with ``keep_alive`` (the client of a running sandbox, :mod:`kit.host.launch`)
a connection whose response was read to its end is kept for the next request, at most
:data:`MAX_IDLE` of them, each for :data:`KEEP_IDLE_S` (less than the runtime keeps its own
side open, ``kit.runtime.server``); a turn then costs no connect and no accept on either
side. A kept connection that the runtime closed before answering a byte is replaced by a
new one for that request, once: it never reached the runtime's handler. Without
``keep_alive`` (probes of a starting sandbox) every request is ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from kit.hoptrace import hop
from kit.host.errors import SandboxError
from kit.protocol.errors import ProtocolError
from kit.protocol.runtime_api import (
    FILES_PATH,
    HEALTH_PATH,
    INTERRUPT_PATH,
    NDJSON,
    RUNTIME_KEEP_ALIVE_S,
    TURNS_PATH,
    RuntimeEvent,
    TurnRequest,
)

CONNECT_TIMEOUT_S = 10.0
PROBE_INTERVAL_S = 0.005
"""How often :func:`wait_ready` tries a runtime that does not answer yet."""
MAX_LINE_BYTES = 16 * 1024 * 1024
READ_PIECE = 1 << 16
"""The most of a turn's body read at once."""
KEEP_IDLE_S = RUNTIME_KEEP_ALIVE_S - 15.0
"""How long a kept connection may sit idle and still be used (the runtime keeps its side
longer, so it does not close one this client is about to use)."""
MAX_IDLE = 2
"""Kept connections per client: a turn's stream and an interrupt beside it."""


class _Exchange:
    """One request's connection and the head of its response."""

    __slots__ = ("headers", "reader", "status", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        headers: dict[str, str],
    ) -> None:
        self.reader, self.writer = reader, writer
        self.status, self.headers = status, headers


class _Unanswered(SandboxError):
    """A connection closed or broke before a byte of the response to its request came."""


class SandboxGone(SandboxError):
    """The runtime stopped answering mid-turn (it died or its connection broke)."""


class RuntimeClient:
    """Talks to one sandbox's runtime at ``unix:/path`` or ``http://host:port``."""

    def __init__(self, endpoint: str, token: str, *, keep_alive: bool = False) -> None:
        self.endpoint = endpoint
        self._auth = f"Bearer {token}"
        self._keep_alive = keep_alive
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._pruner: asyncio.TimerHandle | None = None
        self._closed = False
        if endpoint.startswith("unix:"):
            self._unix: str | None = endpoint.removeprefix("unix:")
            self._addr: tuple[str, int] | None = None
        else:
            parts = urlsplit(endpoint)
            if parts.scheme != "http" or not parts.hostname:
                raise SandboxError(
                    f"Runtime endpoint must be unix:/path or http://host:port, got {endpoint!r}."
                )
            self._unix, self._addr = None, (parts.hostname, parts.port or 80)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._unix is not None:
            opening = asyncio.open_unix_connection(self._unix, limit=MAX_LINE_BYTES)
        else:
            assert self._addr is not None
            opening = asyncio.open_connection(*self._addr, limit=MAX_LINE_BYTES)
        return await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)

    def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A kept connection still open and not idle too long, newest first; None: none."""
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if _usable(reader, writer, since, now):
                return reader, writer
            writer.close()
        return None

    def _prune(self) -> None:
        """Close the kept connections idle for KEEP_IDLE_S (or closed by the runtime), then
        come back when the oldest left is due: this client closes an idle connection before
        the runtime does, so none sits half-closed, holding a descriptor, until the next
        request or :meth:`aclose`."""
        self._pruner = None
        now = time.monotonic()
        kept = []
        for reader, writer, since in self._idle:
            if _usable(reader, writer, since, now):
                kept.append((reader, writer, since))
            else:
                writer.close()
        self._idle = kept
        if kept:
            due = kept[0][2] + KEEP_IDLE_S - now
            self._pruner = asyncio.get_running_loop().call_later(max(due, 0.0), self._prune)

    def _finish(self, exchange: _Exchange, complete: bool) -> None:
        """The request is over: keep its connection when its response was read to the end
        (``complete``) and both sides allow it, else close it."""
        if (
            complete
            and self._keep_alive
            and not self._closed
            and len(self._idle) < MAX_IDLE
            and exchange.headers.get("connection", "").lower() != "close"
            and (
                "content-length" in exchange.headers
                or _chunked(exchange.headers)
                or _bodiless(exchange.status)
            )
            and not exchange.writer.is_closing()
        ):
            self._idle.append((exchange.reader, exchange.writer, time.monotonic()))
            if self._pruner is None:
                self._pruner = asyncio.get_running_loop().call_later(KEEP_IDLE_S, self._prune)
        else:
            exchange.writer.close()

    async def _request(self, path: str, body: bytes | None, *, method: str = "POST") -> _Exchange:
        kind = "application/json" if method == "POST" else "application/octet-stream"
        method, framing = (
            ("GET", "")
            if body is None
            else (method, f"content-type: {kind}\r\ncontent-length: {len(body)}\r\n")
        )
        close = "" if self._keep_alive else "connection: close\r\n"
        data = (
            f"{method} {path} HTTP/1.1\r\nhost: sandbox\r\nauthorization: {self._auth}\r\n"
            f"{framing}{close}\r\n"
        ).encode() + (body or b"")
        kept = self._take() if self._keep_alive else None
        if kept is not None:
            try:
                return await _exchange(*kept, data)
            except _Unanswered:
                pass
            # The runtime closed the kept connection before a byte of an answer: the
            # request never reached its handler. Once more, on a new connection.
        try:
            return await _exchange(*await self._open(), data)
        except _Unanswered as exc:
            raise ConnectionResetError("The runtime closed the connection unanswered.") from exc

    async def stream_turn(self, request: TurnRequest) -> AsyncGenerator[list[RuntimeEvent], None]:
        """Run a turn; yield its events in the batches they arrived in.
        :class:`SandboxGone` if the runtime goes away."""
        exchange: _Exchange | None = None
        complete = False
        try:
            hop("host: turn posted to the runtime")
            exchange = await self._request(TURNS_PATH, request.to_json().encode())
            hop("host: the runtime answered")
            reader, headers = exchange.reader, exchange.headers
            if exchange.status != 200:
                body = await _read_body(exchange)
                raise SandboxError(
                    f"The runtime refused the turn ({exchange.status}): "
                    f"{body[:300].decode(errors='replace')}"
                )
            if not headers.get("content-type", "").startswith(NDJSON):
                raise SandboxError("The runtime answered a turn with something other than NDJSON.")
            async for lines in _ndjson_batches(reader, headers):
                yield [RuntimeEvent.from_line(line) for line in lines]
            complete = True
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ProtocolError,
            TimeoutError,
        ) as exc:
            raise SandboxGone(f"The sandbox stopped answering: {type(exc).__name__}.") from exc
        finally:
            if exchange is not None:
                self._finish(exchange, complete)

    async def _call(
        self, path: str, body: bytes | None, *, method: str = "POST"
    ) -> tuple[int, bytes]:
        """One request with a short answer: its status and body."""
        exchange = await self._request(path, body, method=method)
        complete = False
        try:
            answer = await _read_body(exchange)
            complete = True
        finally:
            self._finish(exchange, complete)
        return exchange.status, answer

    async def interrupt(self) -> None:
        """Ask the runtime to stop the running turn."""
        try:
            await self._call(INTERRUPT_PATH, b"{}")
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            raise SandboxGone(f"The sandbox stopped answering: {type(exc).__name__}.") from exc

    async def put_file(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` in the sandbox's workspace (``PUT /v1/files``).
        :class:`SandboxGone` if the runtime goes away, :class:`SandboxError` if it refuses."""
        try:
            status, body = await self._call(
                f"{FILES_PATH}?{urlencode({'path': path})}", data, method="PUT"
            )
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            raise SandboxGone(f"The sandbox stopped answering: {type(exc).__name__}.") from exc
        if status != 204:
            raise SandboxError(
                f"The runtime refused the file {path!r} ({status}): "
                f"{body[:300].decode(errors='replace')}"
            )

    async def health(self, wait_s: float = 0.0) -> dict[str, Any]:
        """The runtime's ``GET /healthz``; with ``wait_s``, answered once the agent is ready
        or after that many seconds. OSError, TimeoutError or :class:`SandboxError` when
        nothing (yet) answers."""
        path = f"{HEALTH_PATH}?wait_s={wait_s:.3f}" if wait_s else HEALTH_PATH
        try:
            status, body = await self._call(path, None)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise SandboxError(f"The runtime's health probe broke: {exc}.") from exc
        if status != 200:
            raise SandboxError(f"The runtime's health probe answered {status}.")
        try:
            health: dict[str, Any] = json.loads(body)
        except ValueError as exc:
            raise SandboxError("The runtime's health probe did not answer JSON.") from exc
        return health

    async def aclose(self) -> None:
        """Close the kept connections; later requests use a connection each."""
        self._closed = True
        if self._pruner is not None:
            self._pruner.cancel()
            self._pruner = None
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> _Exchange:
    """Send ``request`` on the connection, read the head of its response; the connection
    is closed if that fails, :class:`_Unanswered` if it closed or broke before a byte of
    the response came (a break after one is not: the runtime had the request)."""
    try:
        try:
            writer.write(request)
            await writer.drain()
            first = await reader.read(1)
        except OSError as exc:
            raise _Unanswered from exc
        if not first:
            raise _Unanswered
        head = first + await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int([*lines[0].split(" ", 2), ""][1])  # ValueError when malformed
    except BaseException:
        writer.close()
        raise
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return _Exchange(reader, writer, status, headers)


def _bodiless(status: int) -> bool:
    """An answer that never has a body (RFC 9112 §6.3): it ends with its head."""
    return status in (204, 304) or 100 <= status < 200


def _length(headers: dict[str, str]) -> int | None:
    """The body's ``content-length`` (None: not given); ValueError when it is not one."""
    if "content-length" not in headers:
        return None
    length = int(headers["content-length"])
    if length < 0:
        raise ValueError(f"A negative content-length: {length}.")
    return length


def _chunked(headers: dict[str, str]) -> bool:
    return headers.get("transfer-encoding", "").lower() == "chunked"


async def wait_ready(
    client: RuntimeClient,
    alive: Callable[[], bool],
    timeout_s: float,
    *,
    session_id: str | None = None,
) -> dict[str, Any] | None:
    """Wait until the runtime behind ``client`` says it is ready; its health then.

    Probes every :data:`PROBE_INTERVAL_S` until the runtime answers (its socket appears a
    few milliseconds after it starts), then asks it to answer once ready (one long request,
    so readiness is seen at once). None as soon as ``alive()`` turns false (the sandbox
    exited: its exit says why); TimeoutError after ``timeout_s``; SandboxError when what
    answers is not ``session_id``'s runtime.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for _ in range(int(timeout_s / PROBE_INTERVAL_S) + 2):
        if not alive():
            return None
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            health = await asyncio.wait_for(client.health(wait_s=left), left + 1)
        except (OSError, TimeoutError, SandboxError):
            await asyncio.sleep(PROBE_INTERVAL_S)  # not listening yet, or it just died
            continue
        if session_id is not None and health.get("session_id") != session_id:
            # Not this sandbox's runtime (something else took its socket): never ready.
            raise SandboxError(
                f"The runtime's socket answered for session {health.get('session_id')!r}, "
                f"not {session_id}."
            )
        if health.get("ready"):
            return health
        if health.get("state") == "stopped":
            return None  # the agent could not start; the sandbox exits and says why
    raise TimeoutError


async def _read_body(exchange: _Exchange) -> bytes:
    """A short answer's body: by its length, chunked, none (204, 304), or up to the end of
    the connection."""
    reader, headers = exchange.reader, exchange.headers
    if _bodiless(exchange.status):
        return b""
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    chunks = [chunk async for chunk in _chunks(reader, headers)]
    return b"".join(chunks)


async def _chunks(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The body as it arrives, in pieces of at most READ_PIECE bytes (a chunk the runtime
    says is huge is read a piece at a time, never held whole)."""
    if not _chunked(headers):
        # By its length (the connection may carry the next answer after it), or to the end.
        left = _length(headers)
        while left != 0:
            data = await reader.read(READ_PIECE if left is None else min(left, READ_PIECE))
            if not data:
                if left is not None:
                    raise asyncio.IncompleteReadError(b"", left)
                return
            if left is not None:
                left -= len(data)
            yield data
        return
    for _ in range(1 << 40):  # bounded by the body's end
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return
        while size > 0:
            piece = await reader.readexactly(min(size, READ_PIECE))
            size -= len(piece)
            yield piece
        await reader.readexactly(2)


async def _ndjson_batches(
    reader: asyncio.StreamReader, headers: dict[str, str], max_line: int = MAX_LINE_BYTES
) -> AsyncIterator[list[str]]:
    """The complete lines of each piece of the body as it arrives, blank ones skipped, one
    list per piece. Linear in the bytes read (a line's pieces are joined once, when it
    ends); ValueError for a line longer than ``max_line`` (a lost sandbox, not memory to
    grow into), or one that is not UTF-8."""
    pieces: list[bytes] = []
    held = 0
    async for chunk in _chunks(reader, headers):
        head, newline, rest = chunk.rpartition(b"\n")
        if not newline:
            held += len(chunk)
            if held > max_line:
                raise ValueError(f"The runtime sent a line longer than {max_line} bytes.")
            pieces.append(chunk)
            continue
        pieces.append(head)
        lines = b"".join(pieces).split(b"\n")
        pieces, held = [rest], len(rest)
        if any(len(line) > max_line for line in lines) or held > max_line:
            raise ValueError(f"The runtime sent a line longer than {max_line} bytes.")
        found = [line.decode() for line in lines if line.strip()]
        if found:
            yield found
    last = b"".join(pieces)
    if last.strip():
        yield [last.decode()]


def _usable(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, since: float, now: float
) -> bool:
    """Whether a connection kept since ``since`` may carry another request at ``now``: idle
    for less than KEEP_IDLE_S, and neither side has closed it."""
    return now - since < KEEP_IDLE_S and not writer.is_closing() and not reader.at_eof()
