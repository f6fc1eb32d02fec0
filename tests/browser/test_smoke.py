"""The browser tests' groundwork: chromium loads a real page of `kit dev`, and a page can
reach nothing but loopback."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from kit.cli.stack import Stack
from tests.browser.conftest import Offline, Sink, is_loopback

pytestmark = pytest.mark.slow

# Names under .invalid never resolve (RFC 2606): were blocking ever broken, these would fail
# at DNS, still without a packet leaving the machine.
ELSEWHERE = "http://kit-browser-test.invalid/"
ELSEWHERE_WS = "ws://kit-browser-test.invalid/socket"


async def test_chromium_loads_the_dev_hosts_healthz(stack: Stack, page: Page) -> None:
    """Chromium gets kit dev's /healthz over loopback and shows its JSON."""
    response = await page.goto(f"{stack.url}/healthz")
    assert response is not None
    assert response.status == 200
    assert json.loads(await page.locator("body").inner_text()) == {"ok": True}


async def test_a_page_cannot_reach_beyond_loopback(
    stack: Stack, page: Page, offline: Offline, sink: Sink
) -> None:
    """A fetch, a WebSocket and a navigation to another host never leave the machine: the
    context's route aborts the fetch and the navigation, the socket ends at the loopback
    sink."""
    await page.goto(f"{stack.url}/healthz")
    fetched = await page.evaluate(
        "url => fetch(url).then(() => 'fetched', e => 'refused: ' + e.message)", ELSEWHERE
    )
    assert fetched.startswith("refused")
    closed = await page.evaluate(
        """url => new Promise(done => {
            const ws = new WebSocket(url);
            ws.onopen = () => done('open');
            ws.onclose = e => done('closed ' + e.code);
        })""",
        ELSEWHERE_WS,
    )
    assert closed == "closed 1006"
    # Last: the error page chromium shows next would cut short a navigation after it.
    with pytest.raises(PlaywrightError, match="ERR_BLOCKED_BY_CLIENT"):
        await page.goto(ELSEWHERE)
    assert offline.take() == [ELSEWHERE, ELSEWHERE]
    assert "CONNECT kit-browser-test.invalid:80 HTTP/1.1" in sink.requests


def test_loopback_is_localhost_127_8_and_ipv6_one_only() -> None:
    """What the context lets through: loopback hosts and host-less URLs, nothing else."""
    allowed = ["http://127.0.0.1:8787/", "http://127.9.9.9/", "ws://localhost:1/", "http://[::1]/"]
    assert all(map(is_loopback, [*allowed, "data:text/plain,x", "about:blank"]))
    others = ["http://10.0.0.1/", "https://example.com/", "ws://[::2]/", "http://localhost.evil/"]
    assert not any(map(is_loopback, others))
