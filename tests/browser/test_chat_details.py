"""The chat page's smaller promises in a real browser: links say where they go, code blocks
copy, the view follows new messages only when the reader is at the bottom, and the browser
forgets old sessions' tokens."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import BrowserContext, Page, expect

from kit.cli.stack import Stack
from tests.browser.chat import TURN_TIMEOUT_MS, _answered, _open, _say, _turn_done

pytestmark = pytest.mark.slow

DAY_MS = 24 * 3600 * 1000


async def test_a_link_whose_text_is_not_its_url_says_where_it_goes(
    chat_stack: Stack, page: Page
) -> None:
    """A model's link labelled as one site but going to another shows its real destination
    (the host, in ASCII) after the label, and its whole URL as its title; a link whose text
    is its URL shows nothing more."""
    await _open(page, chat_stack.url)
    await _answered(
        page,
        "echo [https://bank.example](https://evil.example/pay) and [**docs**](https://docs.example/a)"
        " and <https://plain.example/> and [mail us](mailto:help@corp.example) and"
        " [шоп](https://пример.example/)",
        "You said: echo",
    )
    body = page.locator(".msg.assistant .body")
    await expect(body).to_contain_text(
        "https://bank.example (evil.example) and docs (docs.example)"
    )
    await expect(body).to_contain_text("mail us (help@corp.example)")
    await expect(body).to_contain_text("шоп (xn--e1afmkfd.example)")
    lying = body.locator("a", has_text="https://bank.example")
    await expect(lying).to_have_attribute("href", "https://evil.example/pay")
    await expect(lying).to_have_attribute("title", "https://evil.example/pay")
    await expect(body.locator(".link-dest")).to_have_count(4)
    await expect(body.locator("a")).to_have_count(5)  # no link inside a link's label
    await expect(body.locator("a strong")).to_have_text("docs")


async def test_a_code_blocks_copy_button_copies_it_from_the_keyboard(
    chat_stack: Stack, page: Page, context: BrowserContext
) -> None:
    """The Copy button of a code block in an answer, pressed with the keyboard, puts the
    block's text (and only it) on the clipboard and says so."""
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=chat_stack.url)
    await _open(page, chat_stack.url)
    await _answered(page, "echo code:\n```python\nprint('hi')\nx = 1\n```", "You said: echo")
    copy = page.locator(".msg.assistant button.copy")
    await expect(copy).to_have_text("Copy")
    await copy.focus()
    await page.keyboard.press("Enter")
    await expect(copy).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == "print('hi')\nx = 1"


def _long(label: str) -> str:
    return f"echo {label}\n" + "\n".join(f"line {i}" for i in range(40))


async def test_the_view_follows_new_messages_only_from_the_bottom(
    chat_stack: Stack, page: Page, context: BrowserContext
) -> None:
    """A reader who scrolled up to read stays there while another tab's turn arrives; at
    the bottom, the view follows the new answer; the reader's own message brings the view
    back down."""
    await page.set_viewport_size({"width": 800, "height": 400})
    await _open(page, chat_stack.url)
    await _answered(page, _long("first"), "You said: echo first")
    await _turn_done(page)
    other = await context.new_page()
    await _open(other, page.url)

    await page.evaluate("window.scrollTo(0, 0)")
    await _answered(other, _long("second"), "You said: echo second")
    second = page.locator(".msg.assistant", has_text="You said: echo second")
    await expect(second).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    assert await page.evaluate("scrollY") == 0
    await expect(second).not_to_be_in_viewport()

    await page.evaluate("window.scrollTo(0, document.scrollingElement.scrollHeight)")
    await _answered(other, "echo third", "You said: echo third")
    third = page.locator(".msg.assistant", has_text="You said: echo third")
    await expect(third).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    await expect(third).to_be_in_viewport()
    # The view follows at the next frame: wait for it (a reader who is not followed fails here).
    await page.wait_for_function(
        "() => scrollY + innerHeight >= document.scrollingElement.scrollHeight - 2"
    )

    await page.evaluate("window.scrollTo(0, 0)")
    await _say(page, "echo mine")
    await expect(page.locator(".msg.user", has_text="echo mine")).to_be_in_viewport()


async def test_the_browser_forgets_sessions_unused_for_30_days(
    chat_stack: Stack, page: Page
) -> None:
    """On load the page forgets, token and log, sessions unused for 30 days and all but the
    50 used last, and logs of no session; it keeps the session it shows, and a session saved
    by an older page (no use time) is counted from today."""
    await _open(page, chat_stack.url)
    await _answered(page, "echo keep me", "You said: echo keep me")
    await _turn_done(page)
    current = page.url.rsplit("#s=", 1)[1]
    seeded = await page.evaluate(
        """([day]) => {
            const put = (id, used) => {
                const saved = {session_id: id, token: "kit-session-x", ws_url: "ws://127.0.0.1:9/"};
                if (used !== null) saved.used_at = used;
                localStorage.setItem(`kit:session:${id}`, JSON.stringify(saved));
                localStorage.setItem(`kit:log:${id}`, JSON.stringify({last_seq: 0, events: []}));
            };
            const now = Date.now();
            put("old", now - 31 * day);
            put("legacy", null);
            for (let i = 1; i <= 60; i++) put(`fresh-${i}`, now - i * 60000);
            localStorage.setItem("kit:log:orphan", "{}");
            return localStorage.length;
        }""",
        [DAY_MS],
    )
    assert seeded > 120
    await page.reload()
    await expect(page.locator(".msg.assistant", has_text="You said: echo keep me")).to_have_count(1)
    kept = await page.evaluate(
        """() => Object.fromEntries(Object.keys(localStorage).sort().map(
            (k) => [k, localStorage.getItem(k)]))"""
    )
    sessions = {k.removeprefix("kit:session:") for k in kept if k.startswith("kit:session:")}
    logs = {k.removeprefix("kit:log:") for k in kept if k.startswith("kit:log:")}
    assert current in sessions
    assert len(sessions) == 50
    assert "old" not in sessions
    assert "fresh-60" not in sessions
    assert "fresh-1" in sessions
    assert "legacy" in sessions
    assert isinstance(json.loads(kept["kit:session:legacy"])["used_at"], int)
    assert logs <= sessions
    assert "orphan" not in logs
    await _answered(page, "echo still here", "You said: echo still here")


async def test_a_storage_filled_by_other_sessions_logs_still_takes_a_new_session(
    chat_stack: Stack, page: Page
) -> None:
    """When other sessions' logs fill the browser's storage (a long session with large tool
    outputs), the first Send still gets its answer: the new session's token is kept, after
    dropping those logs (copies of what the host holds), never their tokens; a reload shows
    the conversation. (The token's write failed silently and the page said it had no token.)"""
    await _open(page, chat_stack.url)
    filled = await page.evaluate(
        """() => {
            const other = "00000000-0000-4000-8000-000000000000";
            localStorage.setItem(`kit:session:${other}`, JSON.stringify({
                session_id: other, token: "kit-session-x", ws_url: "ws://127.0.0.1:9/",
                used_at: Date.now()}));
            let log = "", chunk = "x".repeat(1 << 20);
            for (let i = 0; i < 64 && chunk.length >= 16; i++) {
                try {
                    localStorage.setItem(`kit:log:${other}`, log + chunk);
                    log += chunk;
                } catch {
                    chunk = chunk.slice(chunk.length / 2);
                }
            }
            try {
                localStorage.setItem("kit:probe", "x".repeat(64));
                return false;
            } catch {
                return true;
            }
        }"""
    )
    assert filled, "the test could not fill the storage"
    await _answered(page, "echo in a full storage", "You said: echo in a full storage")
    await _turn_done(page)
    current = page.url.rsplit("#s=", 1)[1]
    kept = await page.evaluate("Object.keys(localStorage).sort()")
    assert f"kit:session:{current}" in kept
    assert "kit:session:00000000-0000-4000-8000-000000000000" in kept
    assert "kit:log:00000000-0000-4000-8000-000000000000" not in kept
    await page.reload()
    await expect(page.locator(".msg.assistant .body")).to_have_text(
        ["You said: echo in a full storage"]
    )
    await _answered(page, "echo still here", "You said: echo still here")


async def test_a_long_stored_conversation_shows_at_once(chat_stack: Stack, page: Page) -> None:
    """A reload of a conversation of 6 000 stored events (1 200 turns, each a message, a tool
    card and a markdown answer) shows all of it, at its bottom, within 10 s (2 s here). (The
    page measured its layout after each event: about 90 s, 10 000 events about 250 s.)"""
    session = "11111111-1111-4111-8111-111111111111"
    await _open(page, chat_stack.url)
    await page.evaluate(
        """([id, turns]) => {
            localStorage.setItem(`kit:session:${id}`, JSON.stringify({session_id: id,
                token: "kit-session-x", ws_url: "ws://127.0.0.1:9/", used_at: Date.now()}));
            const events = [];
            const add = (kind, turn_id, data) => events.push(
                {seq: events.length + 1, kind, turn_id, data});
            for (let t = 0; t < turns; t++) {
                const turn = `turn-${t}`;
                add("user", turn, {text: `question ${t}`, client_msg_id: `c-${t}`});
                add("tool_use", turn, {id: `tool-${t}`, name: "Bash", input: {command: "ls"}});
                add("tool_result", turn, {tool_use_id: `tool-${t}`, content: "a\\nb"});
                add("assistant", turn, {text: `The **answer** to ${t}:\\n\\n- one\\n- two`});
                add("result", turn, {text: "", is_error: false});
            }
            localStorage.setItem(`kit:log:${id}`,
                JSON.stringify({last_seq: events.length, events}));
        }""",
        [session, 1_200],
    )
    await page.goto(f"{chat_stack.url}/#s={session}")
    await expect(page.locator(".msg.assistant")).to_have_count(1_200, timeout=10_000)
    await expect(page.locator("details.tool.done")).to_have_count(1_200)
    last = page.locator(".msg.assistant", has_text="The answer to 1199:")
    await expect(last).to_be_in_viewport()


async def test_a_url_that_hides_where_it_goes_says_where_it_goes(
    chat_stack: Stack, page: Page
) -> None:
    """A URL shown as its own text still says where it goes when the text misleads: a user
    name before the host (``https://bank.example@evil.example/``), a look-alike host in
    another script, a right-to-left override; the destination is set apart from the text
    around it, so an override cannot reorder it. A plain URL says nothing more."""
    await _open(page, chat_stack.url)
    await _answered(
        page,
        "echo <https://bank.example@evil.example/> and https://\u0430pple.example/ and"
        " https://evil.example/\u202eelpmaxe.knab and https://plain.example/ok and"
        " \u202e[moc](https://moc.knab.example/)",
        "You said: echo",
    )
    body = page.locator(".msg.assistant .body")
    await expect(body.locator(".link-dest")).to_have_text(
        [" (evil.example)", " (xn--pple-43d.example)", " (evil.example)", " (moc.knab.example)"]
    )
    await expect(body.locator("a", has_text="https://plain.example/ok")).to_have_count(1)
    isolated = await body.locator("a, .link-dest").evaluate_all(
        "nodes => nodes.map((node) => getComputedStyle(node).unicodeBidi)"
    )
    assert set(isolated) == {"isolate"}


async def test_a_browser_that_blocks_storage_still_chats(chat_stack: Stack, page: Page) -> None:
    """Where the browser blocks storage (reading ``localStorage`` throws, as with cookies
    blocked for the site), the page still opens a session on the first Send and answers,
    keeping what it needs in memory for the tab's life."""
    await page.add_init_script(
        """for (const name of ["localStorage", "sessionStorage"]) {
            Object.defineProperty(window, name, {get() {
                throw new DOMException("storage is blocked", "SecurityError");
            }});
        }"""
    )
    await _open(page, chat_stack.url)
    await _answered(page, "echo no storage", "You said: echo no storage")
    await _turn_done(page)
    await _answered(page, "echo still no storage", "You said: echo still no storage")
