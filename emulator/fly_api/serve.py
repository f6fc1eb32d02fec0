"""Serve the emulator on loopback: :func:`serve` for tests and ``kit dev --target fly``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from emulator.fly_api.app import create_app
from emulator.fly_api.backend import FlyBackend
from emulator.fly_api.clock import FLY_RATE_LIMITS, Clock, RateLimits
from emulator.fly_api.errors import FlyEmulatorError
from emulator.fly_api.runner import InProcessRunner, Runner
from emulator.loopback import serve_app


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
    async with (
        FlyBackend(runner or InProcessRunner(), clock=clock) as backend,
        serve_app(
            create_app(backend, token=token, rate_limits=rate_limits),
            host=host,
            port=port,
            what="Fly API emulator",
            error=FlyEmulatorError,
        ) as url,
    ):
        yield Served(url, backend)
