"""The runtime's health probe when its agent could not start."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx

from kit.runtime.server import create_app
from tests.runtime.offline import offline_agent


async def test_health_says_stopped_when_the_agent_could_not_start(kit_tmp: Path) -> None:
    """``GET /healthz?wait_s=`` on a runtime whose CLI could not start answers 200 with
    ``state`` ``stopped`` (what :func:`kit.host.runtime_client.wait_ready` looks for), not
    a 500 the host then retries every few milliseconds until the process is gone."""
    agent = offline_agent(kit_tmp, kit_tmp, cli_path=str(kit_tmp / "no-such-cli"))
    actor = asyncio.create_task(agent.run())
    with contextlib.suppress(Exception):
        await asyncio.wait_for(actor, 30)
    assert agent.state.value == "stopped"
    app: Any = create_app(agent)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
        got = await http.get("/healthz?wait_s=2", headers={"authorization": "Bearer r"})
    assert got.status_code == 200
    assert got.json()["state"] == "stopped"
    assert got.json()["ready"] is False
