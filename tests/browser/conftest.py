"""Browser tests: Playwright driving Debian's chromium, talking to loopback only.

Fixtures (every one bounded in time):

- ``browser``: headless chromium, one for this folder's tests. It is Debian's package at
  ``/usr/bin/chromium`` (``scripts/setup-browser`` installs it); Playwright never downloads a
  browser of its own. Chromium's sandbox is on, except as root, where chromium refuses to
  start with it ("Running as root without --no-sandbox is not supported"): there Playwright
  adds ``--no-sandbox``. The pages it loads are kit's own, served from this machine.
- ``context``: a fresh browser context per test (no cookies or storage shared between tests).
  A request to anything but loopback is aborted (``context.route``) and recorded in
  ``offline.blocked``; a test that leaves one there fails, so a page that reaches for a CDN
  is caught. What routes cannot see (WebSockets, chromium's own requests) goes to ``sink``,
  a loopback proxy that answers 403 to everything and records what it was asked.
- ``page``: a page of that context. When the test ends, passed or failed, its screenshot is
  saved as ``test-artifacts/screenshots/<module>.<test>.png`` (gitignored).
- ``stack``: the example agent's ``kit dev`` stack on a free port, as in tests/conftest.py
  but on this folder's event loop.
- ``chat_stack``: ``kit dev`` of tests/agents.py's offline test agent (Bash allowed), with
  ``PAGE_RULES`` (a tool whose output carries HTML) ahead of its rules.

Every async test and fixture here runs on one event loop per folder (``loop_scope="package"``,
set for the tests below), the one the browser lives on: an async fixture from outside this
folder must be redefined here with that loop scope, as ``stack`` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from kit.cli.stack import Stack, run_stack
from kit.loopback import is_loopback_host
from tests.agents import SCENARIO, write_agent
from tests.conftest import stack_settings

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Playwright,
        Route,
        async_playwright,
    )
    from playwright.async_api import Error as PlaywrightError
except ModuleNotFoundError as exc:  # an old .venv
    raise ImportError(
        "Playwright is not installed in this environment: run scripts/setup (it installs "
        "the dev dependencies of pyproject.toml)."
    ) from exc

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium package; scripts/setup-browser installs it."""

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"

LAUNCH_TIMEOUT_MS = 30_000
ACTION_TIMEOUT_MS = 10_000
"""Default for clicks, fills, waits and evaluations in a page."""
NAVIGATION_TIMEOUT_MS = 15_000
CLOSE_TIMEOUT_S = 15.0
"""Closing a context, the browser or Playwright's driver."""
STACK_TIMEOUT_S = 60.0
"""Starting or stopping the kit dev stack."""

LOOPBACK_BYPASS = "localhost,*.localhost,127.0.0.1/8,[::1]"
"""Chromium's proxy bypass rules for what ``is_loopback`` lets through."""

LOOP = pytest.mark.asyncio(loop_scope="package")
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """This folder's async tests run on the browser's event loop (see the module docstring)."""
    for item in items:
        if pytest_asyncio.is_async_test(item) and item.path.is_relative_to(HERE):
            item.add_marker(LOOP, append=False)


def is_loopback(url: str) -> bool:
    """Whether ``url`` stays on this machine: localhost, 127.0.0.0/8, [::1], or no host at
    all (data:, blob:, about:)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = parts.hostname
    if host is None:
        return False
    return is_loopback_host(host, subdomains=True)


@dataclass
class Offline:
    """The requests a context aborted because they were not for loopback."""

    blocked: list[str] = field(default_factory=list)

    def take(self) -> list[str]:
        """The URLs blocked so far; the list starts empty again (a test that meant to be
        blocked takes them, so the context's teardown does not fail it)."""
        taken, self.blocked = self.blocked, []
        return taken

    async def block(self, route: Route) -> None:
        """A route handler: abort the request, keeping its URL."""
        self.blocked.append(route.request.url)
        await route.abort("blockedbyclient")


@dataclass
class Sink:
    """A loopback HTTP proxy that forwards nothing: chromium's proxy, so what no route sees
    (WebSockets, the browser's own requests) cannot leave the machine either. It answers
    403 and keeps each request's first line."""

    url: str
    requests: list[str]


async def _serve_sink() -> tuple[asyncio.Server, Sink]:
    requests: list[str] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(5):
                requests.append((await reader.readline()).decode("latin-1").strip())
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Sink(f"http://127.0.0.1:{port}", requests)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def sink() -> AsyncIterator[Sink]:
    """The proxy every non-loopback connection of the browser ends at."""
    server, proxy = await _serve_sink()
    yield proxy
    server.close()


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def browser(sink: Sink) -> AsyncIterator[Browser]:
    """Headless chromium (Debian's), sandboxed unless running as root."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/setup-browser (scripts/test runs it), which "
            "installs Debian's chromium package for the browser tests."
        )
    playwright: Playwright = await async_playwright().start()
    try:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            chromium_sandbox=os.geteuid() != 0,
            # Everything but loopback meets the sink (naming loopback here also keeps
            # Playwright from proxying it, as it otherwise does).
            proxy={"server": sink.url, "bypass": LOOPBACK_BYPASS},
            timeout=LAUNCH_TIMEOUT_MS,
        )
        yield launched
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await launched.close()
    finally:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await playwright.stop()


@pytest.fixture
def offline() -> Offline:
    """What this test's context blocked."""
    return Offline()


@pytest_asyncio.fixture(loop_scope="package")
async def context(browser: Browser, offline: Offline) -> AsyncIterator[BrowserContext]:
    """A fresh context whose requests reach loopback only; the test fails if one was blocked
    and not taken (``offline.take()``)."""
    ctx = await browser.new_context()
    ctx.set_default_timeout(ACTION_TIMEOUT_MS)
    ctx.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    await ctx.route(lambda url: not is_loopback(url), offline.block)
    yield ctx
    async with asyncio.timeout(CLOSE_TIMEOUT_S):
        await ctx.close()
    assert not offline.blocked, f"the page reached beyond loopback: {offline.blocked}"


def screenshot_path(node: pytest.Item) -> Path:
    """``test-artifacts/screenshots/<module>.<test>.png`` (parameters kept, other characters
    but letters, digits, ``_.-`` made ``-``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{node.path.stem}.{node.name}").strip("-")
    return SCREENSHOTS / f"{name}.png"


@pytest_asyncio.fixture(loop_scope="package")
async def page(context: BrowserContext, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A page of this test's context; its screenshot is saved when the test ends, whether it
    passed or failed."""
    new = await context.new_page()
    yield new
    path = screenshot_path(request.node)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # no stale picture from an earlier run if this one fails
    # A crashed or closed page has no picture to give; the test's own outcome stands.
    with contextlib.suppress(PlaywrightError):
        await new.screenshot(path=path, full_page=True, timeout=ACTION_TIMEOUT_MS)


@pytest_asyncio.fixture(loop_scope="package")
async def stack(kit_tmp: Path) -> AsyncIterator[Stack]:
    """The example agent's whole local stack on a free port, on the browser's event loop."""
    async with contextlib.AsyncExitStack() as cleanup:
        async with asyncio.timeout(STACK_TIMEOUT_S):
            running = await cleanup.enter_async_context(
                run_stack(stack_settings(kit_tmp / "state"))
            )
        yield running
        async with asyncio.timeout(STACK_TIMEOUT_S):
            await cleanup.aclose()


TOOL_PAYLOAD = "<script>window.__pwned=1</script><b onmouseover=window.__pwned=1>bold</b>"

# Ahead of tests/agents.py's rules (its last one echoes anything): a tool whose output, and
# then the model's text, carry HTML.
PAGE_RULES = f"""
[[rule]]
name = "hostile tool"
contains = "hostile tool"
[[rule.step]]
tool = "Bash"
input = {{ command = "printf '%s' '{TOOL_PAYLOAD}'", description = "hostile" }}
[[rule.step]]
text = "Tool said: {{tool_result}} and [a link](javascript:window.__pwned=1)"
"""


@pytest_asyncio.fixture(loop_scope="package")
async def chat_stack(kit_tmp: Path) -> AsyncIterator[Stack]:
    """``kit dev`` of the test agent (Bash allowed, tests/agents.py's offline rules, and
    ``PAGE_RULES`` ahead of them)."""
    project = write_agent(kit_tmp / "agent")
    (project / "scenarios" / "test.toml").write_text(PAGE_RULES + SCENARIO)
    async with contextlib.AsyncExitStack() as cleanup:
        async with asyncio.timeout(STACK_TIMEOUT_S):
            running = await cleanup.enter_async_context(
                run_stack(stack_settings(kit_tmp / "state", project))
            )
        yield running
        async with asyncio.timeout(STACK_TIMEOUT_S):
            await cleanup.aclose()
