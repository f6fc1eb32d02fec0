"""What the chat page's browser tests do as a reader: open the page, say something, wait for
an answer or for the turn to end."""

from __future__ import annotations

from playwright.async_api import BrowserContext, Page, expect

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


async def _slow_tool_turn_shown_once(page: Page) -> None:
    """Wait for the answer of tests/agents.py's "run the slow tool", then check the reader
    sees that turn whole and once: their message, "Working on it.", one done Bash card with
    the command and its output, and the answer."""
    answer = page.locator(".msg.assistant", has_text="Slow tool said: started-slow-tool")
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    await expect(page.locator(".msg.user .body")).to_have_text(["run the slow tool"])
    await expect(page.locator(".msg.assistant", has_text="Working on it.")).to_have_count(1)
    await expect(page.locator(".msg.assistant")).to_have_count(2)
    card = page.locator("details.tool")
    await expect(card).to_have_count(1)
    await expect(card.locator(".tool-name")).to_have_text("Bash")
    await expect(card.locator(".tool-state")).to_have_text("done")
    await card.locator("summary").click()
    await expect(card.locator(".tool-input")).to_contain_text("sleep 5")
    await expect(card.locator(".tool-output")).to_have_text("started-slow-tool\ndone")


FOREIGN_PAGE = "http://127.0.0.2:8999/"
"""A page of another site (served by the test itself, never fetched)."""


async def post_from_foreign_page(page: Page, context: BrowserContext, target: str) -> Page:
    """From :data:`FOREIGN_PAGE`, POST to ``target`` three ways: ``fetch`` (CORS and
    no-cors: neither answer may be readable) and a form into a new tab, which is returned."""
    html = f"""<!doctype html>
        <form id="f" method="post" action="{target}" target="_blank"></form>
        <script>
          window.tries = [
            fetch("{target}", {{method: "POST"}}).then((r) => r.status, (e) => "refused"),
            fetch("{target}", {{method: "POST", mode: "no-cors"}}).then((r) => r.type, (e) => "refused"),
          ];
        </script>"""
    await page.route(FOREIGN_PAGE, lambda route: route.fulfill(body=html, content_type="text/html"))
    await page.goto(FOREIGN_PAGE)
    # The answers are the host's 403, which the page may not read; what counts is the tab.
    assert set(await page.evaluate("Promise.all(window.tries)")) <= {"refused", "opaque"}
    async with context.expect_page() as posted:
        await page.evaluate("document.getElementById('f').submit()")
    return await posted.value
