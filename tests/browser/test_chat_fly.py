"""The chat page, unchanged, against `kit dev --target fly`'s rehearsal: served by the
gateway machines behind the emulated Fly proxy, a session from the page's first Send (as in
`kit dev`), a turn whose tool runs in a session machine, a reload mid-turn. Needs Docker
(the machines are containers of kit's runtime image); skips, saying why, without it."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Page, expect

from kit.cli.flydev import Rehearsal, rehearse_fly
from tests.agents import write_agent
from tests.browser.chat import _open, _say, _slow_tool_turn_shown_once
from tests.dockerhost import runtime_image

pytestmark = pytest.mark.slow

REHEARSAL_TIMEOUT_S = 600.0
"""Building the runtime image for this checkout (when missing), then the deploy."""
TURN_TIMEOUT_MS = 180_000
"""A whole turn, a session machine's start included."""


@pytest_asyncio.fixture(loop_scope="package")
async def fly(kit_tmp: Path) -> AsyncIterator[Rehearsal]:
    """`kit dev --target fly` of tests/agents.py's test agent, on the browser's event loop."""
    image = await asyncio.to_thread(runtime_image)  # skips, saying why, without Docker
    project = write_agent(kit_tmp / "agent")
    async with contextlib.AsyncExitStack() as cleanup:
        async with asyncio.timeout(REHEARSAL_TIMEOUT_S):
            rehearsal = await cleanup.enter_async_context(
                rehearse_fly(project, kit_tmp / "state", image.tag, app="kit-page")
            )
        yield rehearsal
        async with asyncio.timeout(REHEARSAL_TIMEOUT_S):
            await cleanup.aclose()


async def test_a_turn_with_a_tool_on_the_fly_rehearsal(fly: Rehearsal, page: Page) -> None:
    """Opened at the proxy's URL, the page gets a session on its first Send; the slow
    tool runs in a machine of the sandbox app; reloaded while it runs, the page rejoins,
    and the reader sees their message, the Bash card with its output and the answer
    quoting it, each once. A request of another site, or of a name rebound to 127.0.0.1,
    gets no session through the proxy."""
    await _open(page, fly.url + "/")
    await _say(page, "run the slow tool")
    await expect(page).to_have_url(re.compile(r"#s=[\w-]+$"))  # the page got a session
    await expect(page.locator("details.tool.running")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    url = page.url
    session_id = urlsplit(url).fragment.removeprefix("s=")
    machines = await fly.api.list_machines(
        fly.target.sandbox_app, metadata={"kit_session": session_id}
    )
    assert [m.state for m in machines] == ["started"]
    await page.reload()
    assert page.url == url
    await _slow_tool_turn_shown_once(page)

    port = urlsplit(fly.url).port
    async with httpx.AsyncClient(base_url=fly.url, trust_env=False, timeout=30) as http:
        for headers in (
            {"origin": "https://evil.example"},
            {"origin": f"http://evil.example:{port}", "host": f"evil.example:{port}"},
        ):
            refused = await http.post("/web/session", headers=headers)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"] == "forbidden_origin"
