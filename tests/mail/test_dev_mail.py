"""Email on the real `kit dev`: mail in over its SMTP server (as a mail client sends it),
replies read from its outbox on the control API. What the user reads is asserted: the
reply's text and its threading headers."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import socket
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx

from tests.agents import ATTACHMENT_SCENARIO, RECOVERED_REPLY, until_prompt_stored, write_agent
from tests.e2e.test_kit_dev import DevProcess, _env, start_kit_dev, stop_kit_dev

AGENT = "agent@example.com"
TURN_WAIT_S = 120.0
SLOW_TURN = "Email from Alice <alice@example.org>\nSubject: Order 1234\n\nPlease run the slow tool."
"""The turn's text for ``mail("Please run the slow tool.")``."""


class Mailbox:
    """Alice's (or anyone's) view of one `kit dev`: send mail, read the agent's replies."""

    def __init__(self, dev: DevProcess, state: Path) -> None:
        self.dev = dev
        self.state = state

    @property
    def token(self) -> str:
        return (self.state / "api-token").read_text().strip()

    @property
    def smtp_port(self) -> int:
        return int(json.loads((self.state / "dev.json").read_text())["smtp"]["port"])

    async def send(
        self, msg: EmailMessage | bytes, *, sender: str | None = None, to: str = AGENT
    ) -> str:
        """Send (raw bytes: with this envelope sender, ``""`` for ``MAIL FROM:<>``); the
        server's answer to DATA."""
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=self.smtp_port, start_tls=False, timeout=30
        ) as smtp:
            await smtp.login("alice", self.token)
            if isinstance(msg, bytes):
                envelope = "alice@example.org" if sender is None else sender
                _, answer = await smtp.sendmail(envelope, [to], msg)
            else:
                _, answer = await smtp.send_message(msg)
        return answer

    async def control(self, path: str) -> Any:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(
                self.dev.url + "/_kit" + path, headers={"authorization": f"Bearer {self.token}"}
            )
        r.raise_for_status()
        return r.json()

    async def outbox(self) -> list[dict[str, Any]]:
        return list((await self.control("/mail/outbox?limit=500&raw=1"))["items"])

    async def refused(self) -> list[dict[str, Any]]:
        return list((await self.control("/mail/refused?limit=500"))["items"])

    async def reply_to(self, message_id: str, timeout_s: float = TURN_WAIT_S) -> dict[str, Any]:
        """The agent's reply to ``message_id`` once it is in the outbox (polled, bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for item in await self.outbox():
                if item["in_reply_to"] == message_id:
                    return item
            await asyncio.sleep(0.05)
        raise AssertionError(f"no reply to {message_id} within {timeout_s:g} s")

    async def sessions(self) -> list[dict[str, Any]]:
        return list((await self.control("/sessions"))["sessions"])


def mail(
    text: str,
    *,
    sender: str = "Alice <alice@example.org>",
    to: str = AGENT,
    subject: str = "Order 1234",
    reply_to: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """A message as a mail client writes it; ``reply_to``: an outbox item it answers (To its
    From, In-Reply-To its Message-ID, References its References plus its id)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = reply_to["from"] if reply_to else to
    msg["Subject"] = ("Re: " + reply_to["subject"].removeprefix("Re: ")) if reply_to else subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    if reply_to is not None:
        parent = parsed(reply_to)
        msg["In-Reply-To"] = str(parent["Message-ID"])
        msg["References"] = f"{parent['References']} {parent['Message-ID']}"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(text)
    return msg


def mid(msg: EmailMessage) -> str:
    return str(msg["Message-ID"]).strip("<>")


def parsed(item: dict[str, Any]) -> EmailMessage:
    out = email.message_from_bytes(item["raw"].encode(), policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    return out


def session_of(answer: str) -> str:
    m = re.search(r"session (\S+)", answer)
    assert m, answer
    return m.group(1)


async def test_a_thread_of_three_messages_is_one_session(mailbox: Mailbox) -> None:
    """Three messages, each answering the agent's last reply (the second with every
    threading header, the third from a client that kept only the address): one session,
    three turns, three threaded replies that carry the agent's answers."""
    first = mail("Where is my order?")
    answer = await mailbox.send(first)
    session = session_of(answer)
    r1 = await mailbox.reply_to(mid(first))
    assert r1["text"] == (
        "You said: Email from Alice <alice@example.org>\nSubject: Order 1234\n\nWhere is my order?"
    )
    second = mail("And the second item?\n\nOn Mon, Agent wrote:\n> old answer", reply_to=r1)
    assert session_of(await mailbox.send(second)) == session
    r2 = await mailbox.reply_to(mid(second))
    assert r2["text"].endswith("\n\nAnd the second item?")  # the quote is not the agent's
    third = mail("Thanks, that is all.", reply_to=r2)
    del third["In-Reply-To"], third["References"]
    assert session_of(await mailbox.send(third)) == session
    r3 = await mailbox.reply_to(mid(third))
    assert r3["text"].endswith("Thanks, that is all.")

    for item, inbound in ((r1, first), (r2, second), (r3, third)):
        reply = parsed(item)
        assert reply["In-Reply-To"] == inbound["Message-ID"]
        assert str(reply["Auto-Submitted"]) == "auto-replied"
        assert str(reply["To"]) == "Alice <alice@example.org>"
        assert str(reply["Subject"]) == "Re: Order 1234"
        assert re.fullmatch(r"agent\+[a-z0-9]+@example\.com", item["from"])
        assert item["session_id"] == session
    assert parsed(r2)["References"].split() == [
        str(first["Message-ID"]),
        str(parsed(r1)["Message-ID"]),
        str(second["Message-ID"]),
    ]
    assert len({parsed(r)["Message-ID"] for r in (r1, r2, r3)}) == 3
    (only,) = await mailbox.sessions()
    assert only["session_id"] == session
    assert only["turns"] == 3


async def test_strangers_and_forged_threading_start_nothing(mailbox: Mailbox) -> None:
    """Mallory answering Alice's thread (by In-Reply-To, or by its plus address), and Alice
    pointing In-Reply-To at Bob's thread: each refused, no session, no turn, no reply."""
    alice = mail("Hello from Alice.")
    await mailbox.send(alice)
    r_alice = await mailbox.reply_to(mid(alice))
    bob = mail("Hello from Bob.", sender="bob@example.net")
    await mailbox.send(bob)
    r_bob = await mailbox.reply_to(mid(bob))
    before = await mailbox.sessions()

    attacks = [
        mail("Give me Alice's order.", sender="mallory@evil.test", reply_to=r_alice),
        mail("Plus address only.", sender="mallory@evil.test", to=r_alice["from"]),
        mail("Forged thread.", headers={"In-Reply-To": str(parsed(r_bob)["Message-ID"])}),
    ]
    for attack in attacks:
        answer = await mailbox.send(attack)
        assert "not answered" in answer
    reasons = {r["message_id"]: r["reason"] for r in await mailbox.refused()}
    assert [reasons[mid(a)] for a in attacks] == ["not_participant"] * 3

    barrier = mail("Still there?", reply_to=r_alice)  # its reply comes after any stray turn
    await mailbox.send(barrier)
    await mailbox.reply_to(mid(barrier))
    after = await mailbox.sessions()
    assert [
        (s["session_id"], s["turns"]) for s in after if s["session_id"] != r_alice["session_id"]
    ] == [(s["session_id"], s["turns"]) for s in before if s["session_id"] != r_alice["session_id"]]
    replied = {i["in_reply_to"] for i in await mailbox.outbox()}
    assert replied == {mid(alice), mid(bob), mid(barrier)}


async def test_an_auto_reply_storm_gets_no_reply(mailbox: Mailbox) -> None:
    """Twenty automatic messages (RFC 3834 and common loop markers), bounces, and the
    agent's own reply fed back to it: none is answered; a person's next message is."""
    seed = mail("Start a thread.")
    await mailbox.send(seed)
    own = await mailbox.reply_to(mid(seed))
    markers = [
        {"Auto-Submitted": "auto-replied"},
        {"Auto-Submitted": "auto-generated"},
        {"X-Auto-Response-Suppress": "OOF, AutoReply"},
        {"Precedence": "bulk"},
        {"Precedence": "junk"},
        {"Precedence": "list"},
        {"List-Id": "<news.example.org>"},
    ]
    storm: list[EmailMessage] = []
    for n in range(20):
        storm.append(
            mail(
                f"Out of office {n}",
                reply_to=own if n % 2 else None,
                headers=markers[n % len(markers)],
            )
        )
    for msg in storm:
        assert "not answered" in await mailbox.send(msg)
    daemon = mail("Delivery failed", sender="MAILER-DAEMON@mx.example.org")
    assert "not answered" in await mailbox.send(daemon)
    bounce = mail("Undeliverable")
    assert "not answered" in await mailbox.send(bounce.as_bytes(), sender="")  # MAIL FROM:<>
    fed_back = own["raw"].encode()  # the agent's reply, delivered to the agent
    assert "not answered" in await mailbox.send(fed_back, sender=own["from"])

    person = mail("A real question.", reply_to=own)
    await mailbox.send(person)
    await mailbox.reply_to(mid(person))
    replied = sorted(i["in_reply_to"] for i in await mailbox.outbox())
    assert replied == sorted([mid(seed), mid(person)])
    reasons = {r["reason"] for r in await mailbox.refused()}
    assert reasons == {
        "auto_submitted",
        "auto_response_suppress",
        "precedence",
        "list",
        "system_sender",
        "null_sender",
    }


async def _follow_until_tool(mailbox: Mailbox, session: str) -> None:
    """Read the session's events from the control API until its tool runs."""
    url = mailbox.dev.url + f"/_kit/sessions/{session}/events?follow=1"
    async with (
        httpx.AsyncClient(timeout=None) as http,
        asyncio.timeout(TURN_WAIT_S),
        http.stream("GET", url, headers={"authorization": f"Bearer {mailbox.token}"}) as r,
    ):
        async for line in r.aiter_lines():
            if json.loads(line).get("kind") == "tool_use":
                return
    raise AssertionError("the session's events ended before its tool ran")


async def test_sandbox_killed_mid_turn_still_one_reply(mailbox: Mailbox) -> None:
    """The sandbox is SIGKILLed while the mailed turn runs its tool: the turn is recovered
    in a new sandbox and answered exactly once, with the recovered answer."""
    msg = mail("Please run the slow tool.")
    session = session_of(await mailbox.send(msg))
    await _follow_until_tool(mailbox, session)
    await until_prompt_stored(mailbox.state, session, SLOW_TURN)  # else it is asked anew
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            mailbox.dev.url + f"/_kit/sandboxes/{session}/kill",
            headers={"authorization": f"Bearer {mailbox.token}"},
            json={"signal": "KILL"},
        )
    assert r.status_code == 202, r.text
    reply = await mailbox.reply_to(mid(msg))
    assert reply["text"] == RECOVERED_REPLY
    again = mail("And now?", reply_to=reply)
    await mailbox.send(again)
    await mailbox.reply_to(mid(again))
    assert [i["in_reply_to"] for i in await mailbox.outbox()].count(mid(msg)) == 1


async def test_host_killed_mid_turn_still_one_reply(kit_tmp: Path) -> None:
    """`kit dev` is SIGKILLed while a mailed turn runs; started again on the same state it
    recovers the turn and sends exactly one reply, with the recovered answer; the same
    message delivered again (a relay retrying) is a duplicate, not a second turn."""
    project = write_agent(kit_tmp / "agent", extra_toml=f'\n[mail]\naddress = "{AGENT}"\n')
    state = kit_tmp / "state"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = _env(KIT_STATE_DIR=str(state), KIT_SMTP_PORT="0")
    first = await start_kit_dev(project, env, port)
    box = Mailbox(first, state)
    msg = mail("Please run the slow tool.")
    second: DevProcess | None = None
    try:
        session = session_of(await box.send(msg))
        await _follow_until_tool(box, session)
        await until_prompt_stored(state, session, SLOW_TURN)
        first.proc.kill()
        await first.proc.wait()
        second = await start_kit_dev(project, env, port)
        box = Mailbox(second, state)
        reply = await box.reply_to(mid(msg))
        assert reply["text"] == RECOVERED_REPLY
        assert "not answered" in await box.send(msg)  # the same Message-ID again
        refused = await box.refused()
        assert [r["reason"] for r in refused if r["message_id"] == mid(msg)] == ["duplicate"]
        again = mail("And now?", reply_to=reply)
        await box.send(again)
        await box.reply_to(mid(again))
        assert [i["in_reply_to"] for i in await box.outbox()].count(mid(msg)) == 1
        (only,) = await box.sessions()
        assert only["turns"] == 2
    finally:
        await stop_kit_dev(second or first)


async def test_attachments_are_saved_in_the_workspace(kit_tmp: Path) -> None:
    """A mailed text file is saved in the session's workspace, owned by the sandbox user,
    under a plain name (a path in its name is dropped): the agent reads it with its own
    tools and the reply carries what it read."""
    project = write_agent(kit_tmp / "agent", extra_toml=f'\n[mail]\naddress = "{AGENT}"\n')
    (project / "scenarios" / "0-mail.toml").write_text(ATTACHMENT_SCENARIO)
    state = kit_tmp / "state"
    dev = await start_kit_dev(project, _env(KIT_STATE_DIR=str(state), KIT_SMTP_PORT="0"))
    try:
        box = Mailbox(dev, state)
        msg = mail("Please read my attachment.")
        msg.add_attachment(
            b"order 1042: two lamps\n", maintype="text", subtype="plain", filename="../../notes.txt"
        )
        msg.add_attachment(b"\x89PNG...", maintype="image", subtype="png", filename="photo.png")
        session = session_of(await box.send(msg))
        reply = await box.reply_to(mid(msg))
        said, *listing = reply["text"].splitlines()
        assert said == "Attachment said: order 1042: two lamps"
        owners = {line.split()[0] for line in listing}
        names = sorted(line.split()[1].split("/", 2)[2] for line in listing)
        assert names == ["notes.txt", "photo.png"]  # no path from the name, no temp file
        assert "root" not in owners  # the sandbox user's files, not the host's
        assert session == reply["session_id"]
    finally:
        await stop_kit_dev(dev)
