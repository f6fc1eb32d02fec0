"""The chat page, unchanged, against ``kit dev --target cloudflare``: the real shim in
``wrangler dev`` serves the page and its files, gives the page a session without the API
token (``POST /web/session``, the rehearsal's), and runs the turn in the DO's container
(kit's container emulator, Docker), as the page does against ``kit dev``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Page, expect

from kit.cli.cfdev import CfRehearsal, banner_rows, rehearse_cloudflare
from kit.host.web import PAGE_FILES, PAGE_HEADERS, content_security_policy
from tests.agents import write_agent
from tests.browser.chat import TURN_TIMEOUT_MS, _open, _say, _slow_tool_turn_shown_once
from tests.dockerhost import cf_containers, runtime_image

pytestmark = pytest.mark.slow

REHEARSAL_TIMEOUT_S = 300.0
"""Starting the rehearsal (the bundle image, wrangler dev's first bundling) or stopping it."""


@pytest_asyncio.fixture(loop_scope="package")
async def cf(kit_tmp: Path) -> AsyncIterator[CfRehearsal]:
    """``kit dev --target cloudflare``'s rehearsal of tests/agents.py's test agent (Bash
    allowed, the offline model's rules), on the browser's event loop; every container it
    started is gone when it stops."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = write_agent(kit_tmp / "agent")
    async with contextlib.AsyncExitStack() as cleanup:
        async with asyncio.timeout(REHEARSAL_TIMEOUT_S):
            running = await cleanup.enter_async_context(
                rehearse_cloudflare(project, kit_tmp / "state", image.tag)
            )
        yield running
        async with asyncio.timeout(REHEARSAL_TIMEOUT_S):
            await cleanup.aclose()
    assert cf_containers(kit_tmp / "state") == []


async def test_the_page_is_served_by_the_shim_as_by_kit_dev(cf: CfRehearsal) -> None:
    """Through wrangler dev, the shim answers the page, its files and its config with the
    headers kit/host/web.py sends (computed here from it), and gives no other file; it
    sees the Host the client sent, so a rebound name gets no session, the page's own
    origin does."""
    page_headers = {
        **PAGE_HEADERS,
        "content-security-policy": content_security_policy(None),
        "x-frame-options": "DENY",
        "cross-origin-opener-policy": "same-origin",
    }
    async with httpx.AsyncClient(base_url=cf.url, trust_env=False, timeout=30) as http:
        index = await http.get("/")
        assert index.status_code == 200
        assert '<script type="module" src="/web/app.js">' in index.text
        assert {k: index.headers.get(k) for k in page_headers} == page_headers
        for name, kind in PAGE_FILES.items():
            asset = await http.get(f"/web/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-type"] == kind
            assert {k: asset.headers.get(k) for k in PAGE_HEADERS} == PAGE_HEADERS
        assert (await http.get("/web/config.json")).json() == {"session_url": "/web/session"}
        assert (await http.get("/web/README.md")).status_code == 401
        # wrangler dev hands the shim the Host the client sent (it rewrites it only for a
        # --local-upstream, which kit does not pass): a rebound name is seen and refused.
        here = cf.url.removeprefix("http://")
        rebound = {"origin": cf.url, "host": f"evil.example:{here.rsplit(':', 1)[1]}"}
        refused = await http.post("/web/session", headers=rebound)
        assert refused.status_code == 403
        assert refused.json() == {
            "error": "forbidden_origin",
            "message": f"Host {rebound['host']!r} is not the page's origin {here!r}: a "
            "session is given only to same-origin requests at a loopback name.",
        }
        own = await http.post(
            "/web/session", headers={"origin": cf.url, "sec-fetch-site": "same-origin"}
        )
        assert own.status_code == 201, own.text
        assert own.json()["ws_url"].startswith(f"ws://{here}/v1/sessions/")


async def test_a_tool_turn_through_the_shim_survives_a_reload(cf: CfRehearsal, page: Page) -> None:
    """At the banner's page URL, the first Send gets a session from the shim and the
    reader sees a Bash card and the answer quoting its output; reloaded while the tool
    runs in the DO's container, the page rejoins the session and every message, card and
    answer appears once."""
    rows = dict(banner_rows(cf, real_model=False))
    url = rows["page"].split()[0]
    assert url == f"{cf.url}/"
    await _open(page, url)
    await _say(page, "run the slow tool")
    await expect(page.locator("details.tool.running")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    assert "#s=" in page.url  # the session the shim gave the page
    await page.reload()
    await _slow_tool_turn_shown_once(page)
