"""The chat page in a real browser against ``kit dev``: what the reader sees for a turn with a
tool call, across a reload mid-turn, in a second tab, and with hostile model text and tool
output."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from kit.cli.stack import Stack
from tests.agents import RECOVERED_REPLY
from tests.browser.chat import (
    TURN_TIMEOUT_MS,
    _answered,
    _open,
    _say,
    _turn_done,
    post_from_foreign_page,
)
from tests.browser.conftest import TOOL_PAYLOAD

pytestmark = pytest.mark.slow

IMG_PAYLOAD = "<img src=x onerror=window.__pwned=1>"
LINK_PAYLOAD = "[click me](javascript:window.__pwned=1)"


async def test_a_turn_with_a_tool_call_shows_its_card_and_answer(
    chat_stack: Stack, page: Page
) -> None:
    """The reader sees their message, a Bash card with the command and its output, and the
    answer quoting it; the input is focused again after Enter sent it."""
    await _open(page, chat_stack.url)
    await _say(page, "run the slow tool")
    await expect(page.locator("#input")).to_be_focused()
    await expect(page.locator("#input")).to_have_value("")
    answer = page.locator(".msg.assistant", has_text="Slow tool said: started-slow-tool")
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    await expect(page.locator(".msg.user .body")).to_have_text(["run the slow tool"])
    card = page.locator("details.tool")
    await expect(card).to_have_count(1)
    await expect(card.locator(".tool-name")).to_have_text("Bash")
    await expect(card.locator(".tool-state")).to_have_text("done")
    await card.locator("summary").focus()  # the keyboard opens a card too
    await page.keyboard.press("Enter")
    await expect(card.locator(".tool-input")).to_contain_text("sleep 5")
    await expect(card.locator(".tool-output")).to_have_text("started-slow-tool\ndone")
    # On a phone-sized screen the conversation and the composer fit its width.
    await page.set_viewport_size({"width": 360, "height": 640})
    assert await page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
    await expect(page.locator("#send")).to_be_in_viewport()
    await expect(answer).to_be_visible()


async def test_a_reload_mid_turn_shows_the_turn_once(chat_stack: Stack, page: Page) -> None:
    """Reloaded while the slow tool runs, the page rejoins its session (the id in the URL),
    the turn completes, and every message, card and answer appears once."""
    await _open(page, chat_stack.url)
    await _say(page, "run the slow tool")
    await expect(page.locator("details.tool.running")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    url = page.url
    await page.reload()
    assert page.url == url
    answer = page.locator(".msg.assistant", has_text="Slow tool said: started-slow-tool")
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    await expect(page.locator(".msg.user")).to_have_count(1)
    await expect(page.locator(".msg.assistant", has_text="Working on it.")).to_have_count(1)
    await expect(page.locator("details.tool")).to_have_count(1)
    await expect(page.locator(".msg.assistant")).to_have_count(2)
    # And once more after the turn: the stored events plus the host's replay, still once.
    await page.reload()
    await expect(page.locator("#status")).to_have_text("")
    await expect(page.locator(".msg.assistant")).to_have_count(2)
    await expect(page.locator(".msg.user")).to_have_count(1)
    await expect(page.locator("details.tool")).to_have_count(1)


async def test_hostile_text_and_tool_output_stay_inert(chat_stack: Stack, page: Page) -> None:
    """HTML and a javascript: link in the model's text and in a tool's output are shown as
    text: no image, script, handler attribute or javascript: href reaches the page, nothing
    runs, and the reader sees the payload literally."""
    await _open(page, chat_stack.url)
    for text, shown in [
        (f"echo {IMG_PAYLOAD}", f"You said: echo {IMG_PAYLOAD}"),
        (f"echo {LINK_PAYLOAD}", f"You said: echo {LINK_PAYLOAD}"),
        ("run the hostile tool", "Tool said: <script>"),
    ]:
        await _say(page, text)
        answer = page.locator(".msg.assistant", has_text=shown)
        await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
        await _turn_done(page)
    card = page.locator("details.tool")
    await card.locator("summary").click()
    await expect(card.locator(".tool-output")).to_have_text(TOOL_PAYLOAD)
    # The links are shown as the markdown that was sent, not made links; clicking does nothing.
    await expect(page.locator(".msg.assistant", has_text="[a link](javascript:")).to_have_count(1)
    for label in ("click me", "a link"):
        await page.locator(".msg.assistant .body", has_text=label).click()
    await card.locator(".tool-output").hover()
    log = page.locator("#log")
    assert await log.locator("img, script, iframe, object, embed, b").count() == 0
    assert await log.locator("[onerror], [onmouseover], [onclick], [onload]").count() == 0
    assert await log.locator("a[href^='javascript' i]").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"


async def test_deeply_nested_quotes_in_model_text_do_not_hang_the_page(
    chat_stack: Stack, page: Page
) -> None:
    """Thousands of ``>`` in the model's text (one recursion each, unbounded, overflowed the
    stack and hung the tab on every replay): quotes nest eight deep, the rest is text, the
    answer shows and the page takes the next turn; a reload replays it the same."""
    await _open(page, chat_stack.url)
    await _say(page, "echo x\n" + ">" * 5000)
    answer = page.locator(".msg.assistant", has_text="You said: echo x")
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    assert await answer.locator("blockquote").count() == 8
    await page.reload()
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _answered(page, "echo still here", "You said: echo still here")


HOSTILE_LINES = [
    "# x" + " " * 5_000 + "y",  # a lazy heading pattern backtracked over the spaces: cubic
    "- " + " " * 2_000 + "a\u2028b",  # `.` stops at U+2028: the spaces before it backtracked
    "[" * 90_000,  # each `[` scanned to the end of the line for a `]`: quadratic
]


async def test_model_text_made_to_backtrack_does_not_hang_the_page(
    chat_stack: Stack, page: Page
) -> None:
    """Model text shaped to make the renderer's patterns backtrack (a heading of thousands of
    spaces, a list item holding U+2028, a line of ``[``: seconds to hours per render, on each
    streamed render and each replay) is shown, as text, and the page takes the next turn; a
    reload replays it at once (within the default wait, 10 s; the ``[`` alone took 15)."""
    await _open(page, chat_stack.url)
    await _say(page, "echo x\n" + "\n".join(HOSTILE_LINES))
    answer = page.locator(".msg.assistant", has_text="You said: echo x")
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    await expect(answer.locator("h3")).to_have_text("x" + " " * 5_000 + "y")
    await expect(answer.locator("li")).to_have_text(["a"])
    await expect(answer.locator("a")).to_have_count(0)
    await expect(answer).to_contain_text("[" * 90_000)
    await page.reload()
    await expect(answer).to_have_count(1)
    await _answered(page, "echo still here", "You said: echo still here")


async def test_a_second_tab_on_the_same_url_sees_the_conversation(
    chat_stack: Stack, page: Page, context: BrowserContext
) -> None:
    """A second tab opened on the first one's URL shows the conversation so far, and each tab
    sees the other's next turn live."""
    await _open(page, chat_stack.url)
    await _say(page, "hello from tab one")
    await expect(
        page.locator(".msg.assistant", has_text="You said: hello from tab one")
    ).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    second = await context.new_page()
    await _open(second, page.url)
    assert second.url == page.url
    await expect(second.locator(".msg.user .body")).to_have_text(["hello from tab one"])
    await expect(second.locator(".msg.assistant .body")).to_have_text(
        ["You said: hello from tab one"]
    )
    await _say(second, "hello from tab two")
    for tab in (page, second):
        reply = tab.locator(".msg.assistant", has_text="You said: hello from tab two")
        await expect(reply).to_have_count(1, timeout=TURN_TIMEOUT_MS)
        await expect(tab.locator(".msg.user")).to_have_count(2)


async def test_stop_ends_the_running_turn_from_the_keyboard(chat_stack: Stack, page: Page) -> None:
    """Stop, reached with the keyboard while a tool runs, interrupts the turn: the reader
    sees it stopped, the tool never says it was released, and Stop is disabled again."""
    await _open(page, chat_stack.url)
    await _say(page, "wait for go")
    await expect(page.locator("details.tool.running")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await expect(page.locator("#stop")).to_be_enabled()
    await page.locator("#input").press("Tab")
    await page.keyboard.press("Tab")
    await expect(page.locator("#stop")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator(".note.stopped")).to_have_text("Stopped.", timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    await expect(page.locator(".msg.assistant", has_text="Go said")).to_have_count(0)


async def test_a_lost_connection_shows_the_banner_then_catches_up(
    chat_stack: Stack, page: Page
) -> None:
    """When the host closes the page's socket mid-turn (its session's Durable Object
    evicted, which stops its sandbox too), the reader sees the reconnect banner, then the
    banner goes, the turn completes in a new sandbox, the tool call that never finished is
    marked interrupted, and nothing is shown twice."""
    await _open(page, chat_stack.url)
    await page.evaluate(
        """() => {
            window.__banners = [];
            const banner = document.getElementById("banner");
            new MutationObserver(() => {
                if (!banner.hidden) window.__banners.push(banner.innerText);
            }).observe(banner, {attributes: true, childList: true, subtree: true});
        }"""
    )
    await _say(page, "run the slow tool")
    await expect(page.locator("details.tool.running")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    session_id = page.url.rsplit("#s=", 1)[1]
    async with httpx.AsyncClient(base_url=chat_stack.url, trust_env=False) as http:
        evicted = await http.post(
            f"/_kit/do/{session_id}/evict",
            headers={"authorization": f"Bearer {chat_stack.api_token}"},
        )
    assert evicted.status_code == 200, evicted.text
    answer = page.locator(".msg.assistant", has_text=RECOVERED_REPLY)
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    await expect(page.locator("details.tool .tool-state")).to_have_text("interrupted")
    await expect(page.locator("#banner")).to_be_hidden()
    assert "Connection lost: reconnecting…" in await page.evaluate("window.__banners.join('|')")
    await expect(page.locator(".msg.user")).to_have_count(1)
    await expect(page.locator("details.tool")).to_have_count(1)
    await expect(page.locator(".msg.assistant")).to_have_count(2)


async def test_a_foreign_page_opens_no_session(
    chat_stack: Stack, page: Page, context: BrowserContext
) -> None:
    """A page of another site (another loopback origin here) that opens kit dev's page in a
    tab, posts a form to ``/web/session`` and fetches it gets no session: the tab it opened
    waits for its own reader's first Send, the host refuses the rest, and the foreign page
    keeps no handle on the tab (Cross-Origin-Opener-Policy). The tab's reader can still talk."""
    posted = await post_from_foreign_page(page, context, f"{chat_stack.url}/web/session")
    await expect(posted.locator("body")).to_contain_text("forbidden_origin")
    async with context.expect_page() as opened:
        await page.evaluate(f"window.tab = window.open({chat_stack.url + '/'!r})")
    tab = await opened.value
    await expect(tab.locator("html[data-ready]")).to_have_count(1)
    assert "#s=" not in tab.url
    assert await page.evaluate("window.tab.closed"), "the foreign page can still steer the tab"
    assert await chat_stack.host.session_ids() == []
    await _answered(tab, "echo mine", "You said: echo mine")
    assert "#s=" in tab.url
    assert len(await chat_stack.host.session_ids()) == 1


async def test_new_chat_starts_another_session_and_back_returns(
    chat_stack: Stack, page: Page
) -> None:
    """ "New chat" shows an empty page that opens a new session on its first Send; the
    browser's Back button returns to the first conversation, whole, and it goes on."""
    await _open(page, chat_stack.url)
    await _answered(page, "echo first chat", "You said: echo first chat")
    await _turn_done(page)
    first = page.url
    await page.locator("#new-chat").click()
    await expect(page.locator("html[data-ready]")).to_have_count(1)
    await expect(page.locator(".msg")).to_have_count(0)
    assert "#s=" not in page.url
    await _answered(page, "echo second chat", "You said: echo second chat")
    assert "#s=" in page.url
    assert page.url != first
    assert len(await chat_stack.host.session_ids()) == 2
    await page.go_back()
    await expect(page.locator(".msg.assistant .body")).to_have_text(["You said: echo first chat"])
    assert page.url == first
    await _answered(page, "echo first again", "You said: echo first again")
    await expect(page.locator(".msg.user")).to_have_count(2)
