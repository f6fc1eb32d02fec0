"""The README's picture of the chat page (``scripts/readme-screenshot``): ``kit dev`` of the
example agent on a free port in a temporary state folder, one turn, the Bash tool's card opened,
saved as a PNG. Loopback only, bounded in time."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import ViewportSize, async_playwright, expect

from kit.cli.stack import run_stack
from tests.browser.chat import TURN_TIMEOUT_MS, _open, _say, _turn_done
from tests.browser.conftest import CHROMIUM, LOOPBACK_BYPASS
from tests.conftest import stack_settings

QUESTION = "Where is my order 1042?"
SIZE: ViewportSize = {"width": 900, "height": 780}
TIMEOUT_S = 180.0


async def take(out: Path) -> None:
    """Run the turn and save the picture to ``out``."""
    with tempfile.TemporaryDirectory(prefix="kit-shot-") as tmp:
        async with (
            asyncio.timeout(TIMEOUT_S),
            run_stack(stack_settings(Path(tmp) / "state")) as stack,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM,
                # The page is kit's own on loopback; anything else goes nowhere.
                proxy={"server": "http://127.0.0.1:9", "bypass": LOOPBACK_BYPASS},
            )
            page = await browser.new_page(viewport=SIZE, color_scheme="light")
            await _open(page, stack.url)
            await _say(page, QUESTION)
            answer = page.locator(".msg.assistant").last
            await expect(answer).to_contain_text("1042", timeout=TURN_TIMEOUT_MS)
            await _turn_done(page)
            await page.locator("details.tool", has_text="Bash").locator("summary").click()
            await page.evaluate("window.scrollTo(0, document.scrollingElement.scrollHeight)")
            out.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=out)
            await browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/chat-page.png")))
