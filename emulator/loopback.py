"""Serve an emulator's ASGI app on loopback: the socket, uvicorn, the bounded wait for it
to start and the stop, shared by the Fly API and container emulators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import uvicorn
from starlette.types import ASGIApp

from kit.host.gateway import tcp_socket

STARTUP_LIMIT_S = 10.0
SHUTDOWN_GRACE_S = 1
"""How long stopping waits for requests in flight (a 60 s long-poll) before cutting them."""
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@contextlib.asynccontextmanager
async def serve_app(
    app: ASGIApp, *, host: str, port: int, what: str, error: Callable[[str], Exception]
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (port 0: a free one) until the block ends; yield its
    base URL. ``what`` names the emulator in messages; ``error`` makes its exception
    (a host off loopback, or a server that did not start within STARTUP_LIMIT_S)."""
    if host not in LOOPBACK:
        raise error(f"The {what} serves on loopback only, not {host!r}: use 127.0.0.1.")
    # kit's own listening socket: TCP_NODELAY on what it accepts, or each keep-alive
    # request's answer waits ~40 ms for the client's delayed ACK (Nagle).
    sock = tcp_socket("127.0.0.1" if host == "localhost" else host, port)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            # Never trust X-Forwarded-For from 127.0.0.1: the egress relay tells
            # containers apart by the client address.
            proxy_headers=False,
        )
    )
    # A plain task rather than a task group, so that the block may be entered and left in
    # different tasks (pytest-asyncio runs a fixture's setup and teardown so).
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(int(STARTUP_LIMIT_S * 200)):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.005)
        if not server.started:
            serving.cancel()
            raise error(
                f"The {what} did not start on {host}:{bound} within {STARTUP_LIMIT_S:.0f} s."
            )
        name = f"[{host}]" if ":" in host else "127.0.0.1"
        yield f"http://{name}:{bound}"
    finally:
        server.should_exit = True
        # gather: a cancellation of this task still propagates (not swallowed here).
        await asyncio.gather(serving, return_exceptions=True)
        sock.close()
