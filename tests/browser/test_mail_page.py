"""The chat page's Email list on ``kit dev``, in a real browser: mail sent to the agent over
SMTP (as a mail client sends it) shows as a thread; opened from the list, the page shows
the mailed text and the agent's answer, and the thread's next mail live. Subjects are
whoever mailed the agent: they stay text. A page of another site gets no thread."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
import pytest_asyncio
from playwright.async_api import BrowserContext, Page, expect

from kit.cli.stack import Stack, run_stack
from kit.mail.store import OutboxEntry
from tests.agents import write_agent
from tests.browser.chat import TURN_TIMEOUT_MS, _open, _turn_done, post_from_foreign_page
from tests.browser.conftest import STACK_TIMEOUT_S
from tests.conftest import stack_settings

pytestmark = pytest.mark.slow

AGENT = "support@example.com"
ALICE = "Alice <alice@example.org>"
IMG_PAYLOAD = "<img src=x onerror=window.__pwned=1>"
TURN_WAIT_S = 120.0


@pytest_asyncio.fixture(loop_scope="package")
async def mail_stack(kit_tmp: Path) -> AsyncIterator[Stack]:
    """``kit dev`` of the test agent with ``[mail] address`` and its SMTP server on a free
    port."""
    project = write_agent(kit_tmp / "agent", extra_toml=f'\n[mail]\naddress = "{AGENT}"\n')
    async with contextlib.AsyncExitStack() as cleanup:
        async with asyncio.timeout(STACK_TIMEOUT_S):
            running = await cleanup.enter_async_context(
                run_stack(stack_settings(kit_tmp / "state", project, smtp_port=0))
            )
        yield running
        async with asyncio.timeout(STACK_TIMEOUT_S):
            await cleanup.aclose()


def _mail(
    text: str, subject: str = "Order 1234", reply_to: OutboxEntry | None = None
) -> EmailMessage:
    """Alice's message; ``reply_to``: the agent's reply it answers (as a mail client does)."""
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = reply_to.sender if reply_to else AGENT
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    if reply_to is not None:
        msg["In-Reply-To"] = f"<{reply_to.message_id}>"
        msg["References"] = f"<{reply_to.inbound_id}> <{reply_to.message_id}>"
    msg.set_content(text)
    return msg


async def _send(stack: Stack, msg: EmailMessage) -> str:
    """Send ``msg`` over kit dev's SMTP server, logged in with the API token; its answer."""
    assert stack.smtp_port is not None
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=stack.smtp_port, start_tls=False, timeout=30
    ) as smtp:
        await smtp.login("alice", stack.api_token)
        _, answer = await smtp.send_message(msg)
    assert "accepted for session" in answer, answer
    return answer


async def _answered(stack: Stack, msg: EmailMessage) -> OutboxEntry:
    """Send ``msg`` and wait until the agent's reply to it is written; the reply."""
    assert stack.mail is not None
    await _send(stack, msg)
    async with asyncio.timeout(TURN_WAIT_S):
        await stack.mail.idle()
    message_id = str(msg["Message-ID"]).strip("<>")
    [reply] = [e for e in await stack.mail.store.outbox(50) if e.inbound_id == message_id]
    return reply


async def _open_thread_list(page: Page) -> None:
    """Reach Mail with the keyboard (from New chat) and open the list."""
    toggle = page.locator("#mail-toggle")
    await expect(toggle).to_be_visible()
    await page.locator("#new-chat").focus()
    await page.keyboard.press("Tab")
    await expect(toggle).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    await expect(page.locator("#mail")).to_be_visible()


async def test_an_email_thread_opens_from_the_list_and_follows_live(
    mail_stack: Stack, page: Page
) -> None:
    """Alice's mail is a thread in the Email list (the agent's address, the subject, Alice,
    two mails); chosen with the keyboard, the page shows her mailed text (its sender and
    subject lines quieter) and the agent's answer; her next mail in the thread, and its
    answer, appear live in the open page; the list then counts four mails."""
    first = await _answered(mail_stack, _mail("Where is my order?"))
    await _open(page, mail_stack.url)
    await _open_thread_list(page)
    await expect(page.locator("#mail .mail-address")).to_have_text(AGENT)
    thread = page.locator("#mail .mail-threads a")
    await expect(thread).to_have_count(1)
    await expect(thread.locator(".mail-subject")).to_have_text("Order 1234")
    await expect(thread.locator(".mail-meta")).to_contain_text("alice@example.org · 2 messages")
    await page.keyboard.press("Tab")
    await expect(thread).to_be_focused()
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**#s={first.session_id}")
    await expect(page.locator("html[data-ready]")).to_have_count(1)
    mailed = page.locator(".msg.user.mail")
    await expect(mailed).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await expect(mailed.locator(".who")).to_have_text("Email")
    head = "Email from Alice <alice@example.org>\nSubject: Order 1234\n"
    await expect(mailed.locator(".mail-head")).to_have_text(head)
    await expect(mailed.locator(".body")).to_have_text(head + "\nWhere is my order?")
    # The agent's answer, as the reply mailed to Alice says it (the test agent echoes).
    assert first.text.startswith("You said: Email from Alice")
    answer = page.locator(".msg.assistant .body")
    await expect(answer).to_have_count(1, timeout=TURN_TIMEOUT_MS)
    await expect(answer).to_contain_text("You said: Email from Alice")
    await expect(answer).to_contain_text("Where is my order?")
    await _turn_done(page)
    # The thread's next mail, answered while the page is open, shows without a reload.
    second = _mail("And the second item?", "Re: Order 1234", reply_to=first)
    await _answered(mail_stack, second)
    await expect(mailed).to_have_count(2, timeout=TURN_TIMEOUT_MS)
    await expect(mailed.nth(1).locator(".body")).to_contain_text("And the second item?")
    await expect(page.locator(".msg.assistant", has_text="And the second item?")).to_have_count(
        1, timeout=TURN_TIMEOUT_MS
    )
    await expect(page.locator(".msg.assistant")).to_have_count(2)
    # The page reloaded into the thread with the list closed; opened again, it is anew.
    await expect(page.locator("#mail")).to_be_hidden()
    await page.locator("#mail-toggle").click()
    await expect(thread.locator(".mail-meta")).to_contain_text("4 messages")
    await expect(thread).to_have_attribute("aria-current", "page")
    # Escape closes the list and gives the focus back to its button.
    await thread.focus()
    await page.keyboard.press("Escape")
    await expect(page.locator("#mail")).to_be_hidden()
    await expect(page.locator("#mail-toggle")).to_be_focused()


async def test_a_hostile_subject_stays_text(mail_stack: Stack, page: Page) -> None:
    """A subject and a body holding HTML show as the text they are, in the list and in the
    conversation: no element is made from them and nothing runs."""
    sent = await _answered(mail_stack, _mail(f"body {IMG_PAYLOAD}", subject=IMG_PAYLOAD))
    await _open(page, mail_stack.url)
    await page.locator("#mail-toggle").click()
    thread = page.locator("#mail .mail-threads a")
    await expect(thread.locator(".mail-subject")).to_have_text(IMG_PAYLOAD)
    await thread.click()
    await page.wait_for_url(f"**#s={sent.session_id}")
    mailed = page.locator(".msg.user.mail")
    await expect(mailed.locator(".mail-head")).to_contain_text(f"Subject: {IMG_PAYLOAD}")
    await expect(mailed.locator(".body")).to_contain_text(f"body {IMG_PAYLOAD}")
    await expect(page.locator(".msg.assistant", has_text=f"body {IMG_PAYLOAD}")).to_have_count(
        1, timeout=TURN_TIMEOUT_MS
    )
    await page.locator("#mail-toggle").click()
    await expect(thread.locator(".mail-subject")).to_have_text(IMG_PAYLOAD)
    for part in ("#mail", "#log"):
        assert await page.locator(part).locator("img, script, [onerror]").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"


async def test_a_thread_linked_without_its_token_opens_from_the_list(
    mail_stack: Stack, page: Page
) -> None:
    """A link to a thread's session (``#s=<id>``, as ``kit sessions`` names it) in a browser
    without its token says so; choosing the thread from the Email list there joins it."""
    sent = await _answered(mail_stack, _mail("Where is my order?"))
    await page.goto(f"{mail_stack.url}/#s={sent.session_id}")
    await expect(page.locator("#banner")).to_contain_text("This browser has no token")
    await page.locator("#mail-toggle").click()
    await page.locator("#mail .mail-threads a").click()
    await expect(page.locator(".msg.user.mail .body")).to_contain_text("Where is my order?")
    await expect(page.locator(".msg.assistant")).to_contain_text("Where is my order?")
    await expect(page.locator("#banner")).to_be_hidden()


async def test_a_foreign_page_gets_no_threads(
    mail_stack: Stack, page: Page, context: BrowserContext
) -> None:
    """A page of another site (another loopback origin here) that posts to ``/web/mail``,
    by fetch or a form, reads no thread: the host answers 403 ``forbidden_origin`` and
    the form's tab shows no token."""
    await _answered(mail_stack, _mail("Where is my order?"))
    posted = await post_from_foreign_page(page, context, f"{mail_stack.url}/web/mail")
    body = posted.locator("body")
    await expect(body).to_contain_text("forbidden_origin")
    assert "kit-session-" not in await body.inner_text()
