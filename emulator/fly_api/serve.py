"""Serve the emulator on loopback: :func:`serve` for tests and ``kit dev --target fly``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

from emulator.fly_api.app import create_app
from emulator.fly_api.backend import FlyBackend
from emulator.fly_api.clock import FLY_RATE_LIMITS, Clock, RateLimits
from emulator.fly_api.errors import FlyEmulatorError
from emulator.fly_api.runner import InProcessRunner, Runner

STARTUP_LIMIT_S = 10.0
SHUTDOWN_GRACE_S = 1
"""How long stopping waits for requests in flight before cutting them."""


@dataclass(frozen=True)
class Served:
    """A running emulator: its base URL (``http://127.0.0.1:<port>``, no ``/v1``) and
    backend (for tests that inspect state)."""

    url: str
    backend: FlyBackend


@contextlib.asynccontextmanager
async def serve(
    *,
    token: str,
    runner: Runner | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock | None = None,
    rate_limits: RateLimits | None = FLY_RATE_LIMITS,
) -> AsyncIterator[Served]:
    """Run the Machines API on ``host:port`` (port 0: a free one) until the block ends;
    machines still running then are killed. ``runner`` defaults to an
    :class:`InProcessRunner`."""
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise FlyEmulatorError(
            f"The Fly API emulator serves on loopback only, not {host!r}: use 127.0.0.1."
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    async with FlyBackend(runner or InProcessRunner(), clock=clock) as backend:
        app = create_app(backend, token=token, rate_limits=rate_limits)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                access_log=False,
                # A client may be in a 60 s /wait: stop without waiting for it.
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            )
        )
        # A plain task rather than a task group, so that the block may be entered and left
        # in different tasks (pytest-asyncio runs a fixture's setup and teardown so).
        serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        try:
            for _ in range(int(STARTUP_LIMIT_S * 200)):
                if server.started or serving.done():
                    break
                await asyncio.sleep(0.005)
            if not server.started:
                serving.cancel()
                raise FlyEmulatorError(
                    f"The Fly API emulator did not start on {host}:{bound} within "
                    f"{STARTUP_LIMIT_S:.0f} s."
                )
            name = f"[{host}]" if family == socket.AF_INET6 else host
            yield Served(f"http://{name}:{bound}", backend)
        finally:
            server.should_exit = True
            # gather: a cancellation of this task still propagates (not swallowed here).
            await asyncio.gather(serving, return_exceptions=True)
            sock.close()
