"""`kit dev --target fly`'s rehearsal end to end, no network: the project deployed with the
real deploy code into the Fly API emulator (gateway and session machines are containers
of kit's runtime image), moto as the bucket, the emulated Fly proxy in front; a client
talks to it as to https://<app>.fly.dev."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kit.cli.flydev import rehearse_fly
from kit.client import SessionClient, create_session
from tests.agents import write_agent
from tests.dockerhost import runtime_image

pytestmark = pytest.mark.slow

TURN_TIMEOUT_S = 180.0


async def test_deploy_then_chat_through_the_proxy(kit_tmp: Path) -> None:
    """Two gateway machines come up behind the proxy; a client's session runs a turn whose
    tool runs in a session machine, and gets the answer."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = write_agent(kit_tmp / "agent")
    async with rehearse_fly(project, kit_tmp / "state", image.tag, app="kit-e2e") as fly:
        gateways = await fly.api.list_machines("kit-e2e", metadata={"kit_role": "gateway"})
        assert sorted(g.state for g in gateways) == ["started", "started"]
        info = await create_session(fly.url, fly.api_token)
        async with (
            asyncio.timeout(TURN_TIMEOUT_S),
            SessionClient(info.ws_url, info.token) as client,
        ):
            events = [e async for e in client.turn("slow")]
        assert events[-1].kind == "result", events[-1]
        assert "Slow tool said: started-slow-tool" in str(events[-1].data["text"])
        sandboxes = await fly.api.list_machines(
            "kit-e2e-sandboxes", metadata={"kit_session": info.session_id}
        )
        assert [m.state for m in sandboxes] == ["started"]
