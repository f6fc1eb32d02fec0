"""The runtime bench/host.py's hosts run their turns on: kit's host↔runtime wire
(docs/protocol.md §11) with one made-up turn, no SDK, no CLI, no model.

:class:`SyntheticRuntime` is one runtime: an HTTP/1.1 server on a loopback port of the
process that makes it, answering ``GET /healthz`` (``?wait_s=`` ignored: it is ready at
once), ``POST /v1/turns`` (:func:`synthetic_turn`, one NDJSON chunk per commit's worth of
events) and ``POST /v1/interrupt``, behind its runtime token. kit's target runs them in the
host's process (bench/kit_host.py); the shim's in the container emulator's
(bench/shim_containers.py). The Durable Object of bench/do_host runs the same turn inside
itself (``syntheticTurn``). :func:`wait_for_stop` is how those two processes end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from kit.protocol.runtime_api import (
    HEALTH_PATH,
    INTERRUPT_PATH,
    NDJSON,
    RUNTIME_KEEP_ALIVE_S,
    TURNS_PATH,
    RuntimeEvent,
    TurnRequest,
)

DEFAULT_PER_COMMIT = 100
"""Events per runtime chunk in a burst when the text does not say (the DO commits as many)."""
MAX_BURST = 1_000_000
MAX_REQUESTS_PER_CONNECTION = 1_000_000
MAX_BODY_BYTES = 1 << 20
"""A turn request is a short JSON object; a longer body is refused."""
_BURST = re.compile(r"^burst (\d+)(?: (\d+))?$")
_RESULT = {
    "is_error": False,
    "subtype": "success",
    "text": "done",
    "num_turns": 1,
    "duration_ms": 0,
    "stop_reason": "end_turn",
    "total_cost_usd": 0,
    "usage": {},
}


def synthetic_turn(text: str) -> Iterator[list[RuntimeEvent]]:
    """The turn every host runs, chunk by chunk (same as ``syntheticTurn`` in bench/do_host).

    ``burst N [per_commit]``: N ``text_delta`` events and a ``result``, ``per_commit`` to a
    chunk; any other text: one ``text_delta`` and a ``result``.
    """
    burst = _BURST.match(text.strip())
    if burst is None:
        yield [RuntimeEvent("text_delta", {"text": "ok"}), RuntimeEvent("result", _RESULT)]
        return
    n = min(int(burst.group(1)), MAX_BURST)
    per = max(1, int(burst.group(2) or DEFAULT_PER_COMMIT))
    events = [RuntimeEvent("text_delta", {"text": f"word{i} "}) for i in range(n)]
    events.append(RuntimeEvent("result", _RESULT))
    for start in range(0, len(events), per):
        yield events[start : start + per]


class SyntheticRuntime:
    """One synthetic runtime for ``session_id``, answering requests with ``runtime_token``."""

    def __init__(self, session_id: str, runtime_token: str) -> None:
        self.session_id = session_id
        self.endpoint = ""
        self._auth = f"Bearer {runtime_token}"
        self._server: asyncio.Server | None = None

    async def listen(self) -> str:
        """Start serving on a free loopback port; its base URL (also :attr:`endpoint`)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        return self.endpoint

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.endpoint.rsplit(":", 1)[1])

    def close(self) -> None:
        """Stop taking connections (a turn being streamed ends with its connection)."""
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A malformed request (ValueError), a dropped connection or one idle for longer than
        # the runtime keeps it (as kit's runtime does): the connection closes.
        with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                async with asyncio.timeout(RUNTIME_KEEP_ALIVE_S):
                    head = await reader.readuntil(b"\r\n\r\n")
                if not await self._answer(head, reader, writer):
                    break
        writer.close()

    async def _answer(
        self, head_bytes: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; whether its connection stays open for the next."""
        head = head_bytes.decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        path = target.split("?", 1)[0]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await _read_body(reader, headers)
        keep = headers.get("connection", "").lower() != "close"
        if headers.get("authorization") != self._auth:
            return _reply(writer, 401, {"error": "unauthorized"}, keep)
        if method == "GET" and path == HEALTH_PATH:
            return _reply(
                writer,
                200,
                {
                    "ok": True,
                    "ready": True,
                    "session_id": self.session_id,
                    "state": "ready",
                    "resumed": False,
                },
                keep,
            )
        if method == "POST" and path == INTERRUPT_PATH:
            return _reply(writer, 202, {"interrupted": False}, keep)
        if method != "POST" or path != TURNS_PATH:
            return _reply(writer, 404, {"error": "not_found"}, keep)
        turn = TurnRequest.from_json(body)
        close = "" if keep else "connection: close\r\n"
        writer.write(
            f"HTTP/1.1 200 OK\r\ncontent-type: {NDJSON}\r\ntransfer-encoding: chunked\r\n"
            f"{close}\r\n".encode()
        )
        for chunk in synthetic_turn(turn.text):
            data = b"".join(event.to_line() for event in chunk)
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0)  # a runtime streams: let the host take each chunk as it comes
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """A request body by its ``content-length``, or chunked (as a proxy streams it on);
    ValueError when it is over MAX_BODY_BYTES."""
    if headers.get("transfer-encoding", "").lower() != "chunked":
        length = int(headers.get("content-length", "0"))
        if length > MAX_BODY_BYTES:
            raise ValueError("request body too long")
        return await reader.readexactly(length)
    body = b""
    for _ in range(MAX_BODY_BYTES + 1):  # each chunk but the last holds a byte at least
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the end of the (empty) trailer
            return body
        if len(body) + size > MAX_BODY_BYTES:
            raise ValueError("request body too long")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    raise ValueError("request body too long")


def _reply(writer: asyncio.StreamWriter, status: int, body: dict[str, Any], keep: bool) -> bool:
    """Write a JSON answer; ``keep``: the connection stays open (returned)."""
    data = json.dumps(body).encode()
    close = "" if keep else "connection: close\r\n"
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n{close}\r\n".encode()
        + data
    )
    return keep


async def wait_for_stop() -> None:
    """Return on SIGTERM, SIGINT or the end of stdin (a bench server process dies with a
    driver that was killed)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    await stop.wait()
