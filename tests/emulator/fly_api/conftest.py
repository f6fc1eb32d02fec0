"""The emulator served on loopback (port 0) with an in-process runner and a fake clock, and
an httpx client holding its token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from emulator.fly_api import FakeClock, InProcessRunner, Served, serve
from tests.emulator.fly_api.spec_check import checked

TOKEN = "fly-emulator-test-token"


@dataclass
class Fly:
    """A served emulator, its runner and clock, and a client with the token."""

    served: Served
    runner: InProcessRunner
    clock: FakeClock
    http: httpx.AsyncClient

    async def app(self, name: str = "kit-test") -> str:
        """Create an app; its name."""
        r = await self.http.post("/v1/apps", json={"name": name, "org_slug": "personal"})
        checked(r, "Apps_create", 201)
        return name

    async def machine(self, app: str, **body: Any) -> dict[str, Any]:
        """Create a machine (default: image ``kit:test``) and return its JSON."""
        body.setdefault("config", {"image": "kit:test", "restart": {"policy": "no"}})
        r = await self.http.post(f"/v1/apps/{app}/machines", json=body)
        found: dict[str, Any] = checked(r, "Machines_create", 200)
        return found

    async def wait(self, app: str, mid: str, state: str, limit_s: int = 10) -> dict[str, Any]:
        """``/wait`` for ``state``; its 200 body."""
        r = await self.http.get(
            f"/v1/apps/{app}/machines/{mid}/wait", params={"state": state, "timeout": limit_s}
        )
        found: dict[str, Any] = checked(r, "Machines_wait", 200)
        return found

    async def get(self, app: str, mid: str) -> dict[str, Any]:
        """The machine's JSON."""
        found: dict[str, Any] = checked(
            await self.http.get(f"/v1/apps/{app}/machines/{mid}"), "Machines_show", 200
        )
        return found


@pytest.fixture
async def fly() -> AsyncIterator[Fly]:
    """The emulator without rate limits (they have their own tests)."""
    runner, clock = InProcessRunner(), FakeClock()
    async with serve(token=TOKEN, runner=runner, clock=clock, rate_limits=None) as served:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=30) as http:
            yield Fly(served, runner, clock, http)
