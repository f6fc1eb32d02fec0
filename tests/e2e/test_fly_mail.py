"""Email on `kit dev --target fly`'s rehearsal: mail posted to the gateways' signed webhook
through the emulated Fly proxy, turns in session machines, replies sent through the
loopback SMTP relay. What is asserted is what a mail client receives there: the reply's
text from the offline model and its threading headers. Needs Docker (skips without it)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from kit.cli.flydev import Rehearsal, rehearse_fly
from kit.cli.relaysink import Relayed
from kit.mail.webhook import sign
from tests.agents import ATTACHMENT_SCENARIO, RECOVERED_REPLY, write_agent
from tests.dockerhost import runtime_image
from tests.e2e.test_fly_rehearsal import _lease_owner, _prompt_stored

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

REHEARSAL_TIMEOUT_S = 600.0
TURN_TIMEOUT_S = 240.0
ALICE = "alice@example.org"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fly() -> AsyncIterator[Rehearsal]:
    """One rehearsal (two gateways, leases of 5 s) for the module's cases, in order."""
    image = await asyncio.to_thread(runtime_image)  # skips, saying why, without Docker
    root = Path(tempfile.mkdtemp(prefix="kit-test-"))
    root.chmod(0o755)
    project = write_agent(root / "agent")
    (project / "scenarios" / "0-mail.toml").write_text(ATTACHMENT_SCENARIO)
    try:
        async with contextlib.AsyncExitStack() as cleanup:
            async with asyncio.timeout(REHEARSAL_TIMEOUT_S):
                rehearsal = await cleanup.enter_async_context(
                    rehearse_fly(project, root / "state", image.tag, app="kit-mail", lease_ttl_s=5)
                )
            yield rehearsal
            async with asyncio.timeout(REHEARSAL_TIMEOUT_S):
                await cleanup.aclose()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _message(
    sender: str,
    to: str,
    subject: str,
    text: str,
    *,
    parent: Relayed | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """A message as a mail client writes it; ``parent``: the reply it answers (to its
    From, In-Reply-To its id, References its References and id, its text quoted)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    body = text
    if parent is not None:
        p = parent.message
        msg["In-Reply-To"] = str(p["Message-ID"])
        msg["References"] = f"{p['References']} {p['Message-ID']}"
        quoted = "\n".join("> " + line for line in parent.text.splitlines())
        body = f"{text}\n\nOn a day, the agent wrote:\n{quoted}\n"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg


async def _post(
    fly: Rehearsal,
    msg: EmailMessage | bytes,
    *,
    envelope_from: str | None = None,
    envelope_to: str | None = None,
    instance: str | None = None,
) -> dict[str, Any]:
    """POST raw mail to the webhook through the proxy, signed as a relay signs it."""
    raw = msg if isinstance(msg, bytes) else msg.as_bytes()
    if not isinstance(msg, bytes):
        envelope_from = envelope_from or email.utils.parseaddr(str(msg["From"]))[1]
        envelope_to = envelope_to or email.utils.parseaddr(str(msg["To"]))[1]
    at = str(int(time.time()))
    headers = {
        "x-kit-mail-timestamp": at,
        "x-kit-mail-signature": sign(
            fly.mail_secret,
            at,
            raw,
            envelope_from=envelope_from or "",
            envelope_to=envelope_to or "",
        ),
    }
    if envelope_from is not None:
        headers["x-kit-mail-from"] = envelope_from
    if envelope_to is not None:
        headers["x-kit-mail-to"] = envelope_to
    if instance is not None:
        headers["fly-force-instance-id"] = instance
    async with httpx.AsyncClient(trust_env=False, timeout=120) as http:
        answer = await http.post(fly.url + "/v1/mail/inbound", content=raw, headers=headers)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _replies_to(fly: Rehearsal, message_id: str) -> list[Relayed]:
    return [r for r in fly.relay.received if r.message["In-Reply-To"] == f"<{message_id}>"]


async def _reply(fly: Rehearsal, msg: EmailMessage) -> Relayed:
    """The relay's copy of the reply to ``msg`` (waits for it, a turn at most)."""
    message_id = str(msg["Message-ID"]).strip("<>")
    await fly.relay.until(lambda _: bool(_replies_to(fly, message_id)), TURN_TIMEOUT_S)
    return _replies_to(fly, message_id)[0]


async def _control(fly: Rehearsal, path: str) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        answer = await http.get(
            fly.url + "/_kit" + path, headers={"authorization": f"Bearer {fly.api_token}"}
        )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _sessions(fly: Rehearsal) -> set[str]:
    return {row["session_id"] for row in (await _control(fly, "/sessions"))["sessions"]}


async def _events(fly: Rehearsal, session_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        answer = await http.get(
            f"{fly.url}/_kit/sessions/{session_id}/events",
            headers={"authorization": f"Bearer {fly.api_token}"},
        )
    return [json.loads(line) for line in answer.text.splitlines()]


async def _until_tool_use(fly: Rehearsal, session_id: str) -> None:
    for _ in range(int(TURN_TIMEOUT_S / 0.2)):
        if any(e.get("kind") == "tool_use" for e in await _events(fly, session_id)):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"session {session_id} never ran a tool")


async def _kill_sandbox(fly: Rehearsal, session_id: str) -> None:
    """SIGKILL the session's machine (the control API)."""
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        killed = await http.post(
            f"{fly.url}/_kit/sandboxes/{session_id}/kill",
            json={"signal": "KILL"},
            headers={"authorization": f"Bearer {fly.api_token}"},
        )
    assert killed.status_code == 202, killed.text


async def test_a_thread_of_three_is_one_session(fly: Rehearsal) -> None:
    """A message, then two answers to the agent's replies as a mail client writes them:
    three replies, each the offline model's answer to that message, threaded (In-Reply-To
    the message, References the whole thread), from the thread's plus address; one
    session; the webhook's gateway and the session's may differ."""
    first = _message(ALICE, fly.mail_address, "Order 1234", "first message about my order")
    took = await _post(fly, first)
    assert took["action"] == "new", took
    session_id = took["session_id"]
    reply = await _reply(fly, first)
    assert reply.text.startswith("You said: Email from alice@example.org")
    assert "first message about my order" in reply.text
    local, domain = fly.mail_address.split("@")
    plus = email.utils.parseaddr(str(reply.message["From"]))[1]
    assert plus.startswith(local + "+")
    assert plus.endswith("@" + domain)
    assert (reply.mail_from, reply.rcpt_tos) == (plus, (ALICE,))
    assert reply.message["Subject"] == "Re: Order 1234"
    assert reply.message["Auto-Submitted"] == "auto-replied"
    chain = [str(first["Message-ID"]), str(reply.message["Message-ID"])]
    for n, text in ((2, "second: and the delivery date?"), (3, "third: thanks, that is all")):
        answer = _message(ALICE, plus, "Re: Order 1234", text, parent=reply)
        took = await _post(fly, answer)
        assert (took["action"], took["session_id"]) == ("continue", session_id), took
        reply = await _reply(fly, answer)
        assert text in reply.text
        assert "On a day" not in reply.text
        assert reply.message["In-Reply-To"] == str(answer["Message-ID"])
        chain.append(str(answer["Message-ID"]))
        assert reply.message["References"] == " ".join(chain)
        chain.append(str(reply.message["Message-ID"]))
        assert n == len(chain) // 2
    outbox = (await _control(fly, "/mail/outbox"))["items"]
    assert [i["session_id"] for i in outbox].count(session_id) == 3
    users = [e for e in await _events(fly, session_id) if e.get("kind") == "user"]
    assert len(users) == 3


async def test_strangers_and_forged_references_start_nothing(fly: Rehearsal) -> None:
    """Bob answering Alice's thread (its plus address, its ids) and Mallory pointing
    In-Reply-To at an agent reply: refused as not participants; no session, no reply."""
    thread = _message(ALICE, fly.mail_address, "Bob's question", "please answer bob later")
    await _post(fly, thread)
    reply = await _reply(fly, thread)
    plus = email.utils.parseaddr(str(reply.message["From"]))[1]
    before_sessions, before_relay = await _sessions(fly), len(fly.relay.received)
    bob = _message("bob@example.net", plus, "Re: Bob's question", "me too", parent=reply)
    mallory = _message("mallory@example.net", fly.mail_address, "Re: hi", "let me in")
    mallory["In-Reply-To"] = str(reply.message["Message-ID"])
    mallory["References"] = str(reply.message["Message-ID"])
    for msg in (bob, mallory):
        took = await _post(fly, msg)
        assert (took["action"], took["reason"]) == ("refuse", "not_participant"), took
    assert await _sessions(fly) == before_sessions
    refused = (await _control(fly, "/mail/refused"))["items"]
    assert {r["sender"] for r in refused[:2]} == {"bob@example.net", "mallory@example.net"}
    assert len(fly.relay.received) == before_relay


async def test_an_auto_reply_storm_gets_no_reply(fly: Rehearsal) -> None:
    """Twenty automatic messages (Auto-Submitted, Precedence, List-Id,
    X-Auto-Response-Suppress, a null sender, a mailer-daemon) and the agent's own reply
    fed back: each refused with its reason; no session, nothing relayed."""
    thread = _message(ALICE, fly.mail_address, "Storm", "start of the storm thread")
    await _post(fly, thread)
    own = await _reply(fly, thread)
    before_sessions, before_relay = await _sessions(fly), len(fly.relay.received)
    loops = [
        ({"Auto-Submitted": "auto-replied"}, None, "auto_submitted"),
        ({"Auto-Submitted": "auto-generated"}, None, "auto_submitted"),
        ({"Precedence": "bulk"}, None, "precedence"),
        ({"Precedence": "list"}, None, "precedence"),
        ({"List-Id": "<news.example.org>"}, None, "list"),
        ({"X-Auto-Response-Suppress": "All"}, None, "auto_response_suppress"),
        ({}, "<>", "null_sender"),
    ]
    reasons: list[str] = []
    for n in range(20):
        headers, envelope_from, _ = loops[n % len(loops)] if n < 19 else ({}, None, "")
        sender = "mailer-daemon@example.net" if n == 19 else f"bot{n}@example.net"
        msg = _message(sender, fly.mail_address, f"Out of office {n}", "I am away", headers=headers)
        took = await _post(fly, msg, envelope_from=envelope_from)
        assert took["action"] == "refuse", took
        reasons.append(took["reason"])
    assert reasons[:7] == [reason for _, _, reason in loops]
    assert reasons[19] == "system_sender"
    fed_back = await _post(fly, own.raw, envelope_from=own.mail_from, envelope_to=fly.mail_address)
    assert (fed_back["action"], fed_back["reason"]) == ("refuse", "auto_submitted")
    assert await _sessions(fly) == before_sessions
    assert len(fly.relay.received) == before_relay


async def test_attachments_reach_every_machine_of_the_session(fly: Rehearsal) -> None:
    """A mailed text file is in the session machine's workspace (a plain name, the sandbox
    user's): the agent reads it and the reply says what it read. The machine is then
    killed; the next message of the thread runs in a new machine, whose disk starts
    empty, and the agent reads the file there too."""
    msg = _message(ALICE, fly.mail_address, "Files", "Please read my attachment.")
    msg.add_attachment(
        b"order 1042: two lamps\n", maintype="text", subtype="plain", filename="../../notes.txt"
    )
    msg.add_attachment(b"\x89PNG...", maintype="image", subtype="png", filename="photo.png")
    took = await _post(fly, msg)
    session_id = took["session_id"]
    reply = await _reply(fly, msg)
    said, *listing = reply.text.splitlines()
    assert said == "Attachment said: order 1042: two lamps"
    assert sorted(line.split()[1].split("/", 2)[2] for line in listing) == [
        "notes.txt",
        "photo.png",
    ]
    assert "root" not in {line.split()[0] for line in listing}
    await _kill_sandbox(fly, session_id)
    again = _message(
        ALICE, reply.mail_from, "Re: Files", "Please read my attachment again.", parent=reply
    )
    took = await _post(fly, again)
    assert (took["action"], took["session_id"]) == ("continue", session_id), took
    second = await _reply(fly, again)
    assert second.text.splitlines()[0] == "Attachment said: order 1042: two lamps"
    states = [
        e["data"]["state"] for e in await _events(fly, session_id) if e.get("kind") == "sandbox"
    ]
    assert states.count("died") == 1
    assert states.index("died") < len(states) - 1 - states[::-1].index("running")  # a new run


async def test_a_sandbox_killed_mid_turn_still_answers_once(fly: Rehearsal) -> None:
    """The session machine SIGKILLed while the email's turn runs its tool: the turn is
    recovered in a new machine and exactly one reply, the recovered answer, is relayed."""
    msg = _message(ALICE, fly.mail_address, "Kill", "run the slow tool please")
    took = await _post(fly, msg)
    session_id = took["session_id"]
    await _until_tool_use(fly, session_id)
    await _prompt_stored(fly, session_id, "run the slow tool please")
    await _kill_sandbox(fly, session_id)
    reply = await _reply(fly, msg)
    assert RECOVERED_REPLY in reply.text
    died = [e for e in await _events(fly, session_id) if e.get("kind") == "sandbox"]
    assert any(e["data"].get("state") == "died" for e in died)
    await _sent(fly, str(msg["Message-ID"]).strip("<>"))
    assert len(_replies_to(fly, str(msg["Message-ID"]).strip("<>"))) == 1


async def test_a_gateway_restarted_mid_turn_still_answers_once(fly: Rehearsal) -> None:
    """The gateway that took the mail (and the one holding its session, if another) killed
    while the turn runs, then started again on the same bucket: exactly one reply, the
    recovered answer, is relayed."""
    gateways = await fly.api.list_machines(fly.target.app, metadata={"kit_role": "gateway"})
    receiver = gateways[0].id
    msg = _message(ALICE, fly.mail_address, "Restart", "run the slow tool again")
    took = await _post(fly, msg, instance=receiver)
    session_id = took["session_id"]
    await _until_tool_use(fly, session_id)
    await _prompt_stored(fly, session_id, "run the slow tool again")
    doomed = {receiver, await _lease_owner(fly, session_id)}
    for machine in doomed:
        await fly.api.stop_machine(fly.target.app, machine, signal="SIGKILL", timeout_s=1)
    for machine in doomed:
        await fly.api.wait(fly.target.app, machine, "stopped", timeout_s=120)
        with contextlib.suppress(Exception):  # the proxy may have autostarted it already
            await fly.api.start_machine(fly.target.app, machine)
        await fly.api.wait(fly.target.app, machine, "started", timeout_s=120)
    reply = await _reply(fly, msg)
    assert RECOVERED_REPLY in reply.text
    message_id = str(msg["Message-ID"]).strip("<>")
    await _sent(fly, message_id)
    assert len(_replies_to(fly, message_id)) == 1
    # Every reply of the module went out once: one per answered message.
    ids = [r.message["In-Reply-To"] for r in fly.relay.received]
    assert len(ids) == len(set(ids)), ids


async def _sent(fly: Rehearsal, message_id: str) -> None:
    """Until the outbox says the reply to ``message_id`` was handed to the relay."""
    for _ in range(int(TURN_TIMEOUT_S / 0.2)):
        items = (await _control(fly, "/mail/outbox"))["items"]
        if any(i["in_reply_to"] == message_id and i["sent_at"] for i in items):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the reply to {message_id} was never marked sent")
