"""Small loopback servers that record what reaches them: an echo server and a one-request
HTTP server (for the egress proxy's tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

HTTP_BODY = b"hello from upstream"


@dataclass
class Upstream:
    """A loopback server that records what reached it."""

    port: int = 0
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    accepted: int = 0


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[Upstream]:
    """Echoes every byte back; closes once the client has half-closed and all is echoed."""
    seen = Upstream()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.accepted += 1
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    seen.port = server.sockets[0].getsockname()[1]
    async with server:
        yield seen


@contextlib.asynccontextmanager
async def http_server() -> AsyncIterator[Upstream]:
    """Answers one request per connection with :data:`HTTP_BODY`, recording head and body."""
    seen = Upstream()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.accepted += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        seen.heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        seen.bodies.append(await reader.readexactly(length))
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(HTTP_BODY), HTTP_BODY)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    seen.port = server.sockets[0].getsockname()[1]
    async with server:
        yield seen
