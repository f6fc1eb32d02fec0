"""emulator.loopback.serve_app: the socket the Fly API and container emulators serve on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from starlette.types import Receive, Scope, Send

from emulator.loopback import serve_app


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _accepted_nodelay(port: int) -> list[int]:
    """``TCP_NODELAY`` of each connected socket of this process whose own port is ``port``
    (the server's side of a connection it accepted)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile, or the listener (no peer)
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
            with sock:
                tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
                if tcp and sock.type == socket.SOCK_STREAM and sock.getsockname()[1] == port:
                    sock.getpeername()
                    found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    return found


async def test_accepted_connections_have_nodelay() -> None:
    """What the emulator accepts sends at once (TCP_NODELAY): with Nagle, each answer on a
    kept-alive connection waited ~40 ms for the client's delayed ACK (the shim's container
    calls did)."""
    async with serve_app(
        _ok, host="127.0.0.1", port=0, what="test server", error=RuntimeError
    ) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        assert _accepted_nodelay(port) == [1]
        writer.close()
        await writer.wait_closed()
