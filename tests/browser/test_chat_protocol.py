"""The chat page's side of the session protocol, watched and forged at its socket
(``page.route_web_socket``): coalesced streaming, messages the host would refuse, resume
after a reload, duplicate events, and an interrupt whose ack was lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from kit.cli.stack import Stack
from tests.browser.chat import TURN_TIMEOUT_MS, _answered, _open, _say, _turn_done

pytestmark = pytest.mark.slow

SESSION_SOCKET = "**/v1/sessions/*/ws"


def _is_socket(url: str) -> bool:
    return url.startswith(("ws://", "wss://"))


class Tap:
    """A socket between the page and the host that records every frame, and lets a test
    change what the host sends (``forge`` returns the frames the page gets instead)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []  # page → host
        self.received: list[dict[str, Any]] = []  # host → page, as the host sent them
        self.forge: Callable[[dict[str, Any]], list[dict[str, Any]]] = lambda f: [f]

    def handler(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def up(message: str | bytes) -> None:
            self.sent.append(json.loads(message))
            server.send(message)

        def down(message: str | bytes) -> None:
            frame = json.loads(message)
            self.received.append(frame)
            for forged in self.forge(frame):
                ws.send(json.dumps(forged))

        ws.on_message(up)
        server.on_message(down)

    def hellos(self) -> list[dict[str, Any]]:
        return [f for f in self.sent if f["type"] == "hello"]


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``condition()`` holds (frames seen by a ``Tap``)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (frames arrive on Playwright's callbacks)
            await asyncio.sleep(0.05)


Push = Callable[[list[dict[str, Any]]], None]


async def _fake_host(page: Page, on_user: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> Push:
    """Answer the page's socket with a welcome, and each ``user`` frame with ``on_user``'s
    events (numbered from 1 on), without a host behind it. Returns a function that sends
    more events to the page's socket (of turn ``t1``, numbered on)."""
    seq = 0
    sockets: list[WebSocketRoute] = []

    def push(events: list[dict[str, Any]]) -> None:
        nonlocal seq
        for event in events:
            seq += 1
            frame = {"type": "event", "seq": seq, "replay": False, "ts": 0, "turn_id": "t1"}
            sockets[-1].send(json.dumps({**frame, **event}))

    def handler(ws: WebSocketRoute) -> None:
        sockets.append(ws)

        def message(raw: str | bytes) -> None:
            frame = json.loads(raw)
            if frame["type"] == "hello":
                welcome = {"type": "welcome", "protocol": 1, "session_id": "x"}
                ws.send(json.dumps({**welcome, "resume": "none", "last_seq": seq}))
            elif frame["type"] == "user":
                push(on_user(frame))

        ws.on_message(message)

    await page.route_web_socket(_is_socket, handler)
    return push


async def test_a_long_streamed_reply_renders_coalesced_and_ends_exact(
    chat_stack: Stack, page: Page
) -> None:
    """Two thousand text deltas arriving at once are rendered a few times, not once each
    (the count is printed), and the final text replaces the streamed one and stays: no
    streaming render still waiting overwrites it."""
    deltas = [f"word{i} " for i in range(2000)]
    final = "".join(deltas) + "**the end**"

    def reply(frame: dict[str, Any]) -> list[dict[str, Any]]:
        user = {
            "kind": "user",
            "data": {"client_msg_id": frame["client_msg_id"], "text": frame["text"]},
        }
        streamed = [{"kind": "text_delta", "data": {"text": d}} for d in deltas]
        end = [
            {"kind": "assistant", "data": {"text": final, "message_id": None}},
            {"kind": "result", "data": {"is_error": False, "subtype": "success", "text": final}},
        ]
        return [user, *streamed, *end]

    await _fake_host(page, reply)
    await _open(page, chat_stack.url)
    await _say(page, "stream a lot")
    body = page.locator(".msg.assistant .body")
    # 2000 frames through Playwright's socket route take seconds on a loaded machine.
    await expect(body).to_have_text(final.replace("**", ""), timeout=TURN_TIMEOUT_MS)
    await expect(page.locator(".msg.assistant.streaming")).to_have_count(0)
    # No streaming render is left waiting (one that fired late would overwrite the answer).
    await page.wait_for_function("window.kitChat.view.streamTimer === null")
    await expect(body).to_have_text(final.replace("**", ""))
    await expect(body.locator("strong")).to_have_text("the end")
    renders = await page.evaluate("window.kitChat.view.renders")
    print(f"{len(deltas)} deltas, {renders} renders")
    assert renders < len(deltas) / 10


async def test_the_status_line_says_what_the_turn_waits_for(chat_stack: Stack, page: Page) -> None:
    """Through a turn, the status line says: sending, the sandbox starting, thinking, the
    transcript store unavailable and holding (with the host's words), thinking again once
    it is back, and nothing once the turn ended; Stop is enabled only while it runs."""

    sent: list[dict[str, Any]] = []

    def user(frame: dict[str, Any]) -> list[dict[str, Any]]:
        sent.append(frame)  # confirmed below, once "Sending…" was seen
        return []

    push = await _fake_host(page, user)
    status = page.locator("#status")
    await _open(page, chat_stack.url)
    await _say(page, "hello")
    await expect(status).to_have_text("Sending…")
    await expect(page.locator(".msg.user.pending")).to_have_count(1)
    data = {"client_msg_id": sent[0]["client_msg_id"], "text": sent[0]["text"]}
    push([{"kind": "user", "data": data}])
    await expect(page.locator(".msg.user:not(.pending)")).to_have_count(1)
    await expect(status).to_have_text("Thinking…")
    await expect(page.locator("#stop")).to_be_enabled()
    push([{"kind": "sandbox", "data": {"state": "starting"}}])
    await expect(status).to_have_text("Sandbox starting… · thinking…")
    push([{"kind": "sandbox", "data": {"state": "running", "resumed": False}}])
    await expect(status).to_have_text("Sandbox running · thinking…")
    push([{"kind": "store", "data": {"state": "unavailable", "message": "store down"}}])
    await expect(status).to_have_text("Transcript store unavailable: store down")
    held = {"state": "holding", "entries": 3, "message": "3 entries held"}
    push([{"kind": "store", "data": held}])
    await expect(status).to_have_text("Transcript store holding: 3 entries held")
    push([{"kind": "store", "data": {"state": "available"}}])
    await expect(status).to_have_text("Sandbox running · thinking…")
    result = {"is_error": False, "subtype": "success", "text": "hi back"}
    push([{"kind": "result", "data": result}])
    await expect(page.locator(".msg.assistant .body")).to_have_text("hi back")
    await expect(status).to_have_text("")
    await expect(page.locator("#stop")).to_be_disabled()


async def test_a_message_the_host_would_refuse_is_not_sent_and_says_why(
    chat_stack: Stack, page: Page
) -> None:
    """Text with a lone surrogate, over 100 000 code points, or over 256 KiB of UTF-8 is not
    sent: the composer says why and keeps the text; the next good message goes through."""
    tap = Tap()
    await page.route_web_socket(_is_socket, tap.handler)
    await _open(page, chat_stack.url)
    error = page.locator("#composer-error")
    for text, why in [
        ("'hi \\ud83d'", "lone surrogate"),
        ("'x'.repeat(100001)", "100,001 characters"),
        ("'\\u{1F600}'.repeat(70000)", "bytes to send"),
    ]:
        await page.evaluate(f"document.getElementById('input').value = {text}")
        await page.locator("#input").press("Enter")
        await expect(error).to_contain_text(why)
        assert await page.evaluate(f"document.getElementById('input').value === {text}")
    assert [f for f in tap.sent if f["type"] == "user"] == []
    await expect(page.locator(".msg.user")).to_have_count(0)
    await expect(page.locator("#status")).to_have_text("")
    await _answered(page, "echo fine", "You said: echo fine")
    await expect(error).to_be_hidden()


async def test_a_pending_message_the_host_refuses_is_dropped_and_shown(
    chat_stack: Stack, page: Page
) -> None:
    """Messages left pending by an older page (a lone surrogate: ``bad_frame``; too long:
    ``too_large`` and close 1009) are sent once after a reload, refused, dropped with the
    host's reason shown, and not sent again; 1009 is not fatal: the page reconnects and
    the session goes on."""
    tap = Tap()
    await page.route_web_socket(_is_socket, tap.handler)
    await _open(page, chat_stack.url)
    await _answered(page, "echo first", "You said: echo first")  # the page has a session
    await page.evaluate(
        """() => addEventListener("pagehide", () => {
            // After the page's own pagehide, which saves what it has pending (nothing).
            const id = location.hash.slice(3);
            sessionStorage.setItem(`kit:unconfirmed:${id}`, JSON.stringify([
                ["bad-1", "hi \\ud83d"], ["big-1", "x".repeat(100001)],
            ]));
        })"""
    )
    await page.reload()
    refused = page.locator(".note.refused")
    await expect(refused).to_have_count(2)
    await expect(refused.nth(0)).to_contain_text("not valid Unicode")
    await expect(page.locator(".msg.user.refused")).to_have_count(2)
    await expect(page.locator("#status")).to_have_text("")
    await expect(page.locator("#banner")).to_be_hidden()
    await expect(page.locator("#send")).to_be_enabled()
    await _until(lambda: len(tap.hellos()) == 3)  # first Send, reload, after 1009
    await expect(page.locator("#status")).to_have_text("")
    await _answered(page, "echo after refusal", "You said: echo after refusal")
    await page.reload()
    await expect(page.locator("#status")).to_have_text("")
    sent = [f["client_msg_id"] for f in tap.sent if f["type"] == "user"]
    assert sent.count("bad-1") == 1
    assert sent.count("big-1") == 1
    assert any(f.get("code") == "too_large" for f in tap.received)


async def test_a_reload_resumes_after_the_last_event_shown(chat_stack: Stack, page: Page) -> None:
    """After a turn and a reload, the page's ``hello.last_seq`` is the seq of the last event
    it had shown, which is the last the host sent it."""
    tap = Tap()
    await page.route_web_socket(_is_socket, tap.handler)
    await _open(page, chat_stack.url)
    await _answered(page, "echo resume me", "You said: echo resume me")
    await _turn_done(page)
    shown = await page.evaluate("window.kitChat.view.lastSeq")
    last_sent = max(f["seq"] for f in tap.received if f["type"] == "event")
    assert shown == last_sent > 0
    await page.reload()
    await _until(lambda: len(tap.hellos()) == 2)
    assert tap.hellos()[1]["last_seq"] == shown
    await expect(page.locator("#status")).to_have_text("")
    await expect(page.locator(".msg.assistant")).to_have_count(1)


async def test_a_duplicate_event_is_shown_once(chat_stack: Stack, page: Page) -> None:
    """An event frame the host sends twice (same seq) is shown once, without a reconnect."""
    tap = Tap()
    tap.forge = lambda f: [f, f] if f.get("kind") in ("user", "assistant") else [f]
    await page.route_web_socket(_is_socket, tap.handler)
    await _open(page, chat_stack.url)
    await _answered(page, "echo only once", "You said: echo only once")
    await _turn_done(page)
    await expect(page.locator(".msg.assistant")).to_have_count(1)
    await expect(page.locator(".msg.user")).to_have_count(1)
    assert len(tap.hellos()) == 1


async def test_an_unacked_interrupt_is_sent_again_after_a_reconnect(
    chat_stack: Stack, page: Page
) -> None:
    """An interrupt whose socket closed before its ``interrupt_ack`` is sent again on the next
    connection, the turn stops, and "Stopping…" clears."""
    tap = Tap()
    drop_next_interrupt = True

    def handler(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        async def up(message: str | bytes) -> None:
            nonlocal drop_next_interrupt
            frame = json.loads(message)
            tap.sent.append(frame)
            if frame["type"] == "interrupt" and drop_next_interrupt:
                drop_next_interrupt = False  # lost with its socket: no ack comes
                await ws.close(code=1011, reason="lost")
                return
            server.send(message)

        ws.on_message(up)
        server.on_message(lambda m: ws.send(m))

    await page.route_web_socket(_is_socket, handler)
    await _open(page, chat_stack.url)
    await _say(page, "wait for go")
    await expect(page.locator("details.tool.running")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await page.locator("#stop").click()
    await expect(page.locator(".note.stopped")).to_have_text("Stopped.", timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    assert [f["type"] for f in tap.sent].count("interrupt") == 2
    assert len(tap.hellos()) == 2


async def test_a_pending_message_the_stored_log_confirms_is_not_pending(
    chat_stack: Stack, page: Page
) -> None:
    """A message this tab left pending whose ``user`` event is in the stored log (written by
    another tab) is not shown pending nor sent again on load."""
    tap = Tap()
    await page.route_web_socket(_is_socket, tap.handler)
    await _open(page, chat_stack.url)
    await _answered(page, "echo confirmed elsewhere", "You said: echo confirmed")
    await _turn_done(page)
    msg_id = next(f["client_msg_id"] for f in tap.sent if f["type"] == "user")
    await page.evaluate(
        """(msgId) => addEventListener("pagehide", () => {
            const id = location.hash.slice(3);
            sessionStorage.setItem(`kit:unconfirmed:${id}`,
                JSON.stringify([[msgId, "echo confirmed elsewhere"]]));
        })""",
        msg_id,
    )
    await page.reload()
    await expect(page.locator(".msg.user")).to_have_count(1)
    await expect(page.locator(".msg.user.pending")).to_have_count(0)
    await _until(lambda: len(tap.hellos()) == 2)
    await expect(page.locator("#status")).to_have_text("")
    assert [f["type"] for f in tap.sent].count("user") == 1


async def test_streamed_text_is_not_read_out_until_it_is_final(
    chat_stack: Stack, page: Page
) -> None:
    """While an answer streams, the conversation (a polite live region) is marked busy, so a
    screen reader does not read the growing text out again at each render; the final text,
    or a tool call that ends the streamed text, clears it."""

    def confirm(frame: dict[str, Any]) -> list[dict[str, Any]]:
        data = {"client_msg_id": frame["client_msg_id"], "text": frame["text"]}
        return [{"kind": "user", "data": data}]

    push = await _fake_host(page, confirm)
    log = page.locator("#log")
    await _open(page, chat_stack.url)
    await _say(page, "hello")
    await expect(log).to_have_attribute("aria-live", "polite")
    await expect(page.locator(".msg.user:not(.pending)")).to_have_count(1)
    push([{"kind": "text_delta", "data": {"text": "Hel"}}])
    await expect(page.locator(".msg.assistant.streaming .body")).to_have_text("Hel")
    await expect(log).to_have_attribute("aria-busy", "true")
    push([{"kind": "assistant", "data": {"text": "Hello.", "message_id": None}}])
    await expect(page.locator(".msg.assistant .body")).to_have_text("Hello.")
    await expect(log).not_to_have_attribute("aria-busy", "true")
    push([{"kind": "text_delta", "data": {"text": "Let me look"}}])
    await expect(log).to_have_attribute("aria-busy", "true")
    push([{"kind": "tool_use", "data": {"id": "tool-1", "name": "Bash", "input": {}}}])
    await expect(page.locator("details.tool")).to_have_count(1)
    await expect(log).not_to_have_attribute("aria-busy", "true")
