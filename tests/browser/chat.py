"""What the chat page's browser tests do as a reader: open the page, say something, wait for
an answer or for the turn to end."""

from __future__ import annotations

from playwright.async_api import Page, expect

TURN_TIMEOUT_MS = 60_000
"""A whole turn, its sandbox's start included."""


async def _open(page: Page, url: str) -> None:
    """Load the page and wait until it is ready for a message: its handlers set and, when
    the URL names a session, connected to it. (A page without one opens a session on the
    first Send.)"""
    await page.goto(url)
    await expect(page.locator("html[data-ready]")).to_have_count(1)
    await expect(page.locator("#status")).to_have_text("")


async def _say(page: Page, text: str) -> None:
    """Type ``text`` and send it with Enter, as a reader would."""
    await page.locator("#input").fill(text)
    await page.locator("#input").press("Enter")


async def _turn_done(page: Page) -> None:
    """Wait until no turn is open: Stop is disabled again and the status line is empty."""
    await expect(page.locator("#stop")).to_be_disabled(timeout=TURN_TIMEOUT_MS)
    await expect(page.locator("#status")).to_have_text("", timeout=TURN_TIMEOUT_MS)


async def _answered(page: Page, text: str, shown: str) -> None:
    """Say ``text`` and wait until one answer showing ``shown`` is on the page."""
    await _say(page, text)
    await expect(page.locator(".msg.assistant", has_text=shown)).to_have_count(
        1, timeout=TURN_TIMEOUT_MS
    )
