"""The chat page in a real browser when things break under it: its sandbox SIGKILLed mid-tool,
the ``kit dev`` host stopped and started again on the same state and port, and a turn the
host gives up on (every sandbox killed) retried from the page. Each test checks what the
reader sees: the notes, the status line's words, the banner, the answers, each shown once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Page, expect

from kit.cli.settings import DevSettings
from kit.cli.stack import Stack, run_stack
from kit.host.session import Session
from kit.protocol.frames import Event
from kit.protocol.turns import MAX_SANDBOX_ATTEMPTS
from tests.agents import RECOVERED_REPLY, until_prompt_stored, write_agent
from tests.browser.chat import TURN_TIMEOUT_MS, _answered, _open, _say, _turn_done
from tests.browser.conftest import STACK_TIMEOUT_S
from tests.conftest import stack_settings

pytestmark = pytest.mark.slow

WATCH = """() => {
    // What the reader saw, in order: each new text of the status line and of the banner.
    window.__seen = {status: [], banner: []};
    const status = document.getElementById("status");
    const banner = document.getElementById("banner");
    const keep = (list, text) => { if (list.at(-1) !== text) list.push(text); };
    new MutationObserver(() => keep(window.__seen.status, status.textContent))
        .observe(status, {childList: true, characterData: true, subtree: true});
    const text = banner.querySelector(".text");
    new MutationObserver(() => keep(window.__seen.banner, banner.hidden ? "" : text.textContent))
        .observe(banner, {attributes: true, childList: true, characterData: true, subtree: true});
}"""


async def _watch(page: Page) -> None:
    """Record every status line and banner the reader sees from now on (``_seen``)."""
    await page.evaluate(WATCH)


async def _seen(page: Page, what: str) -> list[str]:
    """The texts the status line (``status``) or the banner (``banner``) showed, in order."""
    texts: list[str] = await page.evaluate(f"window.__seen.{what}")
    return texts


def _in_order(seen: list[str], wanted: list[str]) -> bool:
    """Whether ``wanted`` appear in ``seen`` in this order (others may come between)."""
    rest = iter(seen)
    return all(any(text == w for text in rest) for w in wanted)


def _session_id(page: Page) -> str:
    return page.url.rsplit("#s=", 1)[1]


async def _session(stack: Stack, page: Page) -> Session:
    session = await stack.host.get(_session_id(page))
    assert session is not None
    return session


def _kill(session: Session) -> None:
    """SIGKILL the session's sandbox from outside, as ``kit chaos`` does: its runtime's
    process group (the agent CLI and its tools with it)."""
    sandbox = session.sandbox
    assert sandbox is not None, "the session has no sandbox to kill"
    pid = getattr(sandbox, "pid", None)
    assert isinstance(pid, int), sandbox
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# -- a sandbox killed mid-turn ------------------------------------------------------------


async def test_a_sandbox_killed_mid_tool_is_resumed_and_the_turn_answered(
    chat_stack: Stack, page: Page
) -> None:
    """SIGKILL of the sandbox while its tool runs: the reader sees "Sandbox died (killed);
    restarting…" once, the status line go on to "Sandbox resumed", the tool card marked as
    interrupted by the death, and the recovered turn's answer; every message, card and
    answer once, and Stop disabled again at the end."""
    await _open(page, chat_stack.url)
    await _say(page, "run the slow tool")
    await expect(page.locator("details.tool.running")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _watch(page)
    session = await _session(chat_stack, page)
    # Once the prompt is stored the new sandbox continues the turn (RECOVERED_REPLY).
    await until_prompt_stored(chat_stack.settings.state_dir, session.id, "run the slow tool")
    _kill(session)
    died = page.locator(".note.sandbox")
    await expect(died).to_have_text(["Sandbox died (killed); restarting…"])
    answer = page.locator(".msg.assistant", has_text=RECOVERED_REPLY)
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    statuses = await _seen(page, "status")
    assert _in_order(
        statuses,
        [
            "Sandbox died (killed); restarting… · thinking…",
            "Sandbox starting… · thinking…",
            "Sandbox resumed · thinking…",
            "",
        ],
    ), statuses
    card = page.locator("details.tool")
    await expect(card).to_have_count(1)
    await expect(card.locator(".tool-state")).to_have_text("interrupted: the sandbox died")
    await expect(page.locator(".msg.user .body")).to_have_text(["run the slow tool"])
    await expect(page.locator(".msg.assistant .body")).to_have_text(
        ["Working on it.", RECOVERED_REPLY]
    )
    await expect(died).to_have_count(1)
    await expect(page.locator("#banner")).to_be_hidden()
    assert await _seen(page, "banner") == []
    await expect(page.locator("#stop")).to_be_disabled()
    # The page goes on: the next message is answered by the new sandbox.
    await _answered(page, "echo after the kill", "You said: echo after the kill")
    await _turn_done(page)
    await expect(page.locator(".msg.assistant")).to_have_count(3)


async def test_a_sandbox_killed_between_turns_is_not_said_to_restart(
    chat_stack: Stack, page: Page
) -> None:
    """SIGKILL of the idle sandbox after a turn: the reader is told it died and that the
    next message starts a new one (not "restarting…": no sandbox starts until then), and
    the next turn's status line does not carry the death along; that turn is answered."""
    await _open(page, chat_stack.url)
    await _answered(page, "echo before the kill", "You said: echo before the kill")
    await _turn_done(page)
    session = await _session(chat_stack, page)
    _kill(session)
    await expect(page.locator(".note.sandbox")).to_have_text(
        ["Sandbox died (killed) between turns; your next message starts a new one."]
    )
    await expect(page.locator("#status")).to_have_text("")
    await expect(page.locator("#stop")).to_be_disabled()
    await _watch(page)
    await _answered(page, "echo after the kill", "You said: echo after the kill")
    await _turn_done(page)
    statuses = await _seen(page, "status")
    assert not [s for s in statuses if "died" in s], statuses
    assert _in_order(statuses, ["Sandbox starting… · thinking…", ""]), statuses
    await expect(page.locator(".note.sandbox")).to_have_count(1)
    await expect(page.locator(".msg.assistant")).to_have_count(2)


# -- the host stopped and started again ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Host:
    """``kit dev`` of the test agent on a fixed port, stopped (sockets closed with 1001,
    sandboxes stopped) and started again on the same state dir and port."""

    def __init__(self, settings: DevSettings) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.port}"
        self._running: contextlib.AsyncExitStack | None = None
        self.stack: Stack | None = None

    async def start(self) -> Stack:
        assert self._running is None, "the host is already running"
        running = contextlib.AsyncExitStack()
        async with asyncio.timeout(STACK_TIMEOUT_S):
            self.stack = await running.enter_async_context(run_stack(self.settings))
        self._running = running
        return self.stack

    async def stop(self) -> None:
        running, self._running, self.stack = self._running, None, None
        if running is not None:
            async with asyncio.timeout(STACK_TIMEOUT_S):
                await running.aclose()


@pytest_asyncio.fixture(loop_scope="package")
async def host(kit_tmp: Path) -> AsyncIterator[Host]:
    """A restartable ``kit dev`` of tests/agents.py's agent, started."""
    project = write_agent(kit_tmp / "agent")
    settings = dataclasses.replace(stack_settings(kit_tmp / "state", project), port=_free_port())
    restartable = Host(settings)
    await restartable.start()
    try:
        yield restartable
    finally:
        await restartable.stop()


async def _user_events(stack: Stack, session_id: str, text: str) -> list[Event]:
    session = await stack.host.get(session_id)
    assert session is not None
    return [
        e for e in await session.log.read_after(0) if e.kind == "user" and e.data["text"] == text
    ]


async def test_a_message_sent_while_the_host_is_down_is_delivered_once_after_it_returns(
    host: Host, page: Page
) -> None:
    """The host stops mid-tool and starts again on the same state and port: the reader sees
    the reconnect banner, a message sent meanwhile waits ("Reconnecting…", shown pending),
    the banner goes once the host is back, the interrupted turn finishes, and the waiting
    message is delivered once and answered; nothing is shown twice. (The time from the
    host's return to the banner going is printed: the page's reconnect backoff.)"""
    assert host.stack is not None
    await _open(page, host.url)
    await _answered(page, "echo before the restart", "You said: echo before the restart")
    await _turn_done(page)
    await _say(page, "run the slow tool")
    await expect(page.locator("details.tool.running")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    session_id = _session_id(page)
    await until_prompt_stored(host.settings.state_dir, session_id, "run the slow tool")
    await _watch(page)
    down = time.monotonic()
    await host.stop()
    banner = page.locator("#banner")
    await expect(banner.locator(".text")).to_have_text("Connection lost: reconnecting…")
    await expect(banner.locator("#new-session")).to_be_hidden()
    await expect(page.locator("#status")).to_have_text("Reconnecting…")
    await expect(page.locator("#stop")).to_be_disabled()
    await _say(page, "echo sent while the host was down")
    pending = page.locator(".msg.user.pending .body")
    await expect(pending).to_have_text(["echo sent while the host was down"])
    await expect(page.locator("#input")).to_have_value("")
    await expect(page.locator("#status")).to_have_text("Reconnecting…")
    failed = await page.evaluate("window.kitChat.attempt")  # connections tried while down
    stack = await host.start()
    back = time.monotonic()
    await expect(banner).to_be_hidden(timeout=TURN_TIMEOUT_MS)
    print(
        f"host down {back - down:.2f} s, {failed} connections failed meanwhile; banner gone "
        f"{time.monotonic() - back:.2f} s after the host was back"
    )
    await expect(page.locator(".msg.assistant", has_text=RECOVERED_REPLY)).to_have_count(
        1, timeout=TURN_TIMEOUT_MS
    )
    later = page.locator(".msg.assistant", has_text="You said: echo sent while the host was down")
    await expect(later).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    await expect(pending).to_have_count(0)
    await expect(page.locator(".msg.user .body")).to_have_text(
        ["echo before the restart", "run the slow tool", "echo sent while the host was down"]
    )
    await expect(page.locator(".msg.assistant .body")).to_have_text(
        [
            "You said: echo before the restart",
            "Working on it.",
            RECOVERED_REPLY,
            "You said: echo sent while the host was down",
        ]
    )
    await expect(page.locator("details.tool")).to_have_count(1)
    await expect(page.locator("details.tool .tool-state")).to_have_text("interrupted")
    statuses = await _seen(page, "status")
    wanted = ["Reconnecting…", "Sending…", "Sandbox resumed · thinking…", ""]
    assert _in_order(statuses, wanted), statuses
    banners = await _seen(page, "banner")
    assert banners[0] == "Connection lost: reconnecting…", banners
    assert banners[-1] == "", banners
    assert len(await _user_events(stack, session_id, "echo sent while the host was down")) == 1
    # A reload shows the same conversation, once.
    await page.reload()
    await expect(page.locator("#status")).to_have_text("")
    await expect(page.locator(".msg.user")).to_have_count(3)
    await expect(page.locator(".msg.assistant")).to_have_count(4)


# -- a failed turn, retried ---------------------------------------------------------------


class SandboxKiller:
    """Subscribed to a session: SIGKILLs each of its sandboxes the moment its ``running``
    event is committed, so no sandbox gets to run the turn."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def deliver(self, event: Event) -> None:
        # Called by the host as it fans the event out: it must not raise.
        if event.kind == "sandbox" and event.data.get("state") == "running":
            sandbox = self.session.sandbox
            pid = getattr(sandbox, "pid", None)
            if isinstance(pid, int):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

    def moved(self, message: str) -> None:
        raise AssertionError(message)


async def test_a_turn_given_up_offers_retry_which_sends_it_again(
    chat_stack: Stack, page: Page
) -> None:
    """Every sandbox of a turn is SIGKILLed (the first mid-tool, the next ones as they
    start) until the host gives the turn up: the reader sees "The turn failed: …" with a
    Retry button and Stop disabled; Retry sends the same text again as a new message, which
    is answered. Pressed twice, it sends it once; after a reload it is disabled (the
    conversation moved on)."""
    await _open(page, chat_stack.url)
    await _say(page, "wait for go")
    await expect(page.locator("details.tool.running")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _watch(page)
    session = await _session(chat_stack, page)
    killer = SandboxKiller(session)
    async with session.quiet():
        session.subscribe(killer)
    _kill(session)  # the first sandbox, mid-tool
    failed = page.locator(".note.failed")
    try:
        await expect(failed).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    finally:
        session.detach(killer)
    await expect(failed).to_contain_text(
        f"The turn failed: The turn was given up after {MAX_SANDBOX_ATTEMPTS} sandboxes failed"
    )
    await _turn_done(page)
    await expect(page.locator(".note.sandbox")).to_have_count(MAX_SANDBOX_ATTEMPTS)
    await expect(page.locator("details.tool .tool-state")).to_have_text(
        ["interrupted: the sandbox died"]
    )
    await expect(page.locator(".msg.assistant .body")).to_have_text(["Waiting for go."])
    (chat_stack.provider.workspace(session.id) / "go").touch()  # the retried tool ends at once
    retry = failed.get_by_role("button", name="Retry")
    await retry.dblclick()
    await expect(retry).to_be_disabled()
    answer = page.locator(".msg.assistant", has_text="Go said: released")
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await _turn_done(page)
    await expect(page.locator(".msg.user .body")).to_have_text(["wait for go", "wait for go"])
    await expect(page.locator(".msg.user.pending")).to_have_count(0)
    await expect(page.locator("details.tool .tool-state")).to_have_text(
        ["interrupted: the sandbox died", "done"]
    )
    await expect(failed).to_have_count(1)
    assert len(await _user_events(chat_stack, session.id, "wait for go")) == 2
    # After a reload the retried turn's Retry stays disabled: the conversation moved on.
    await page.reload()
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await expect(failed.get_by_role("button", name="Retry")).to_be_disabled()
