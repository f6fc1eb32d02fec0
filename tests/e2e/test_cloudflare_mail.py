"""Email on ``kit dev --target cloudflare``: raw mail POSTed to wrangler's local email
endpoint reaches the shim's ``email()`` handler, the agent answers in a container of the
rehearsal, and the reply the session's DO sends through the send_email binding is read
back as the user reads it: the ``.eml`` wrangler writes, parsed with kit's own rules. No
network: the offline model, kit's container emulator under Docker, wrangler dev on
loopback. Attachments are kept by the session's DO and put into each of its containers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.cli.cfdev import CfRehearsal, rehearse_cloudflare
from kit.mail.compose import reply_message_id
from kit.mail.message import Inbound, parse
from kit.mail.rules import Agent
from kit.runtime.agent import stored_user_texts
from kit.storage import open_store
from tests.agents import ATTACHMENT_SCENARIO, RECOVERED_REPLY, transcript_key, write_agent
from tests.dockerhost import runtime_image

pytestmark = pytest.mark.slow

AGENT = "agent@example.com"
WAIT_S = 180.0


def _mail(
    message_id: str,
    body: str,
    *,
    sender: str = "Alice <alice@example.org>",
    to: str = AGENT,
    subject: str = "Order 1234",
    in_reply_to: str | None = None,
    references: list[str] | None = None,
    extra: str | None = None,
) -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Message-ID: <{message_id}>"]
    if in_reply_to:
        lines.append(f"In-Reply-To: <{in_reply_to}>")
    if references:
        lines.append("References: " + " ".join(f"<{r}>" for r in references))
    if extra:
        lines.append(extra)
    return ("\r\n".join([*lines, "", body, ""])).encode()


async def _send(cf: CfRehearsal, raw: bytes, mail_from: str, rcpt: str = AGENT) -> httpx.Response:
    """Deliver ``raw`` as Email Routing would (wrangler's local endpoint)."""
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        return await http.post(
            f"{cf.url}/cdn-cgi/local/email", params={"from": mail_from, "to": rcpt}, content=raw
        )


async def _get(cf: CfRehearsal, path: str) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        answer = await http.get(
            f"{cf.url}{path}", headers={"authorization": f"Bearer {cf.api_token}"}
        )
    assert answer.status_code == 200, answer.text
    ndjson = "ndjson" in answer.headers.get("content-type", "")
    return answer.text if ndjson else answer.json()


async def _until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll the async ``check`` every 100 ms until it gives something truthy (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


async def _replies_to(cf: CfRehearsal, inbound_id: str) -> list[dict[str, Any]]:
    items = (await _get(cf, "/_kit/mail/outbox?limit=500"))["items"]
    return [i for i in items if i["in_reply_to"] == inbound_id]


async def _reply(cf: CfRehearsal, inbound_id: str) -> tuple[dict[str, Any], Inbound]:
    """The one reply to ``inbound_id`` (the outbox row) and the message the user got."""

    async def sent() -> list[dict[str, Any]]:
        return await _replies_to(cf, inbound_id)

    [item] = await _until(sent, f"the reply to {inbound_id}")
    assert item["sent_at"] is not None, item
    return item, parse(await _eml(cf, str(item["message_id"])))


async def _eml(cf: CfRehearsal, message_id: str) -> bytes:
    """The message the send_email binding sent with ``message_id``, as wrangler wrote it
    (after ``send()`` returned: waited for)."""
    folder = cf.worker_dir / ".wrangler" / "tmp" / "email"

    async def written() -> list[Path]:
        return list(folder.glob(f"*/email/{message_id}.eml"))

    files: list[Path] = await _until(written, f"wrangler's .eml of {message_id}", 30)
    assert len(files) == 1, files
    return files[0].read_bytes()


async def _session_of(cf: CfRehearsal, inbound_id: str) -> str:
    """The session an inbound message started (the newest session in the listing)."""

    async def listed() -> str | None:
        rows = (await _get(cf, "/_kit/sessions"))["sessions"]
        return str(rows[0]["session_id"]) if rows else None

    return str(await _until(listed, f"the session of {inbound_id}"))


async def _events(cf: CfRehearsal, session_id: str) -> list[dict[str, Any]]:
    text = await _get(cf, f"/_kit/sessions/{session_id}/events")
    return [json.loads(line) for line in str(text).splitlines() if line.strip() and '"seq"' in line]


async def _tool_running(cf: CfRehearsal, session_id: str, turns: int) -> None:
    """Until the session's ``turns``-th turn is in its tool, and its prompt is in the
    transcript in the DO's store (so a recovered turn resumes from it)."""

    async def in_tool() -> bool:
        events = await _events(cf, session_id)
        return sum(1 for e in events if e["kind"] == "tool_use") >= turns

    await _until(in_tool, "the slow tool to start")
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        grant = (
            await http.post(
                f"{cf.url}/v1/sessions/{session_id}/store-token",
                headers={"authorization": f"Bearer {cf.api_token}"},
            )
        ).json()
    store: Any = open_store(grant["store_url"], token=grant["token"])

    async def stored() -> bool:
        entries = await store.load(transcript_key(session_id)) or []
        return any("slow" in t for t in stored_user_texts(entries))

    await _until(stored, "the prompt in the DO's store", 60)


def _answer(prompt: str) -> str:
    """The offline model's echo of a turn's text."""
    return f"You said: {prompt}\n"


async def test_a_thread_is_one_session_and_loops_start_nothing(kit_tmp: Path) -> None:
    """Three messages, each a reply to the agent's last reply as a mail client writes it:
    one session, three turns, three threaded replies the user reads with the model's
    answers; then a non-participant's reply, a forged In-Reply-To, a second delivery and an
    auto-reply storm (the agent's own reply fed back in) get no reply and no session."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = write_agent(kit_tmp / "agent")
    async with rehearse_cloudflare(project, kit_tmp / "state", image.tag, mail_address=AGENT) as cf:
        answer = await _send(cf, _mail("m1@example.org", "Where is my order?"), "alice@example.org")
        assert answer.status_code == 200, answer.text
        item1, r1 = await _reply(cf, "m1@example.org")
        prompt1 = "Email from Alice <alice@example.org>\nSubject: Order 1234\n\nWhere is my order?"
        assert r1.text == _answer(prompt1)
        token = r1.sender.split("+", 1)[1].split("@", 1)[0]
        assert r1.sender == f"agent+{token}@example.com"
        assert (r1.subject, r1.in_reply_to, r1.references) == (
            "Re: Order 1234",
            ("m1@example.org",),
            ("m1@example.org",),
        )
        assert r1.headers["auto-submitted"] == "auto-replied"
        assert r1.headers["to"] == "Alice <alice@example.org>"
        assert r1.message_id == item1["message_id"]  # the platform's id, as delivered

        # Replies as a mail client writes them: to the From of the reply, threaded, quoted.
        await _send(
            cf,
            _mail(
                "m2@example.org",
                f"And the second item?\r\n\r\nOn Mon, 7 Dec 2026, {r1.sender} wrote:\r\n> old",
                to=r1.sender,
                subject="Re: Order 1234",
                in_reply_to=r1.message_id,
                references=["m1@example.org", r1.message_id],
            ),
            "alice@example.org",
            r1.sender,
        )
        _, r2 = await _reply(cf, "m2@example.org")
        await _send(
            cf,
            _mail(
                "m3@example.org",
                "Thanks!",
                subject="Re: Order 1234",
                in_reply_to=r2.message_id,
                references=["m1@example.org", r1.message_id, "m2@example.org", r2.message_id],
            ),
            "alice@example.org",
        )
        _, r3 = await _reply(cf, "m3@example.org")
        texts = [
            prompt1,
            "Email from Alice <alice@example.org>\nSubject: Re: Order 1234\n\nAnd the second item?",
            "Email from Alice <alice@example.org>\nSubject: Re: Order 1234\n\nThanks!",
        ]
        assert [r.text for r in (r1, r2, r3)] == [_answer(t) for t in texts]
        assert r3.references == (
            "m1@example.org",
            r1.message_id,
            "m2@example.org",
            r2.message_id,
            "m3@example.org",
        )
        sessions = (await _get(cf, "/_kit/sessions"))["sessions"]
        assert len(sessions) == 1, sessions
        sid = sessions[0]["session_id"]
        users = [e["data"]["text"] for e in await _events(cf, sid) if e["kind"] == "user"]
        assert users == texts

        # Nothing of what follows starts a session or gets a reply.
        nothing = [
            (
                _mail(
                    "x1@evil.test", "me too", sender="mallory@evil.test", in_reply_to=r3.message_id
                ),
                "mallory@evil.test",
                AGENT,
            ),
            (
                _mail("x2@evil.test", "me too", sender="mallory@evil.test", to=r1.sender),
                "mallory@evil.test",
                r1.sender,
            ),
            (
                _mail(
                    "x3@example.net",
                    "forged",
                    # kit's own id of its first reply, which a reply routes by too
                    in_reply_to=reply_message_id("m1@example.org", Agent(AGENT)),
                    sender="Bob <bob@example.net>",
                ),
                "bob@example.net",
                AGENT,
            ),
            (
                _mail("m3@example.org", "Thanks!", in_reply_to=r2.message_id),
                "alice@example.org",
                AGENT,
            ),
        ]
        loops = [
            "Auto-Submitted: auto-replied",
            "Precedence: bulk",
            "List-Id: <l.example.org>",
            "X-Auto-Response-Suppress: All",
            "Precedence: junk",
        ]
        for i in range(19):
            nothing.append(
                (
                    _mail(f"auto{i}@example.org", "I am away", extra=loops[i % len(loops)]),
                    "alice@example.org",
                    AGENT,
                )
            )
        own = await _eml(cf, r3.message_id)
        nothing.append((own, r1.sender, AGENT))  # the agent's own reply fed back in
        refused_before = len((await _get(cf, "/_kit/mail/refused?limit=500"))["items"])
        for raw, sender, rcpt in nothing:
            answer = await _send(cf, raw, sender, rcpt)
            assert answer.status_code == 200, answer.text  # dropped, never bounced
        refused = (await _get(cf, "/_kit/mail/refused?limit=500"))["items"]
        assert len(refused) == refused_before + len(nothing)
        reasons = [r["reason"] for r in refused[: len(nothing)]]
        assert reasons[-4:] == [
            "duplicate",
            "not_participant",
            "not_participant",
            "not_participant",
        ]
        assert set(reasons[:-4]) == {
            "auto_submitted",
            "precedence",
            "list",
            "auto_response_suppress",
        }
        assert reasons[0] == "auto_submitted"  # the agent's own reply
        assert len((await _get(cf, "/_kit/sessions"))["sessions"]) == 1
        assert len((await _get(cf, "/_kit/mail/outbox?limit=500"))["items"]) == 3


async def test_one_reply_after_a_container_kill_and_a_worker_restart_mid_turn(
    kit_tmp: Path,
) -> None:
    """The container SIGKILLed while the turn's tool runs, then, in another thread, wrangler
    dev (its workerd and every DO instance) restarted on the same state while the tool runs:
    each message gets exactly one reply, with the answer of its turn's one `result`, and a
    second delivery after the restart gets none."""
    image = runtime_image()
    project = write_agent(kit_tmp / "agent")
    async with rehearse_cloudflare(project, kit_tmp / "state", image.tag, mail_address=AGENT) as cf:
        await _send(cf, _mail("k1@example.org", "slow"), "alice@example.org")
        sid = await _session_of(cf, "k1@example.org")
        await _tool_running(cf, sid, 1)
        backend = cf.containers.backend
        running = [c.id for c in backend.containers.values() if c.status()["running"]]
        assert len(running) == 1, running
        await backend.signal(running[0], 9)
        item, reply = await _reply(cf, "k1@example.org")
        assert RECOVERED_REPLY in reply.text
        assert item["text"] == reply.text.rstrip("\n")
        died = [
            e
            for e in await _events(cf, sid)
            if e["kind"] == "sandbox" and e["data"].get("state") == "died"
        ]
        assert [(e["data"]["reason"], e["data"]["exit_code"]) for e in died] == [("killed", 137)]

        raw = _mail("k2@example.org", "slow", sender="Bob <bob@example.net>")
        await _send(cf, raw, "bob@example.net")

        async def bobs() -> str | None:
            rows = (await _get(cf, "/_kit/sessions"))["sessions"]
            ids = [str(r["session_id"]) for r in rows if r["session_id"] != sid]
            return ids[0] if ids else None

        sid2 = str(await _until(bobs, "bob's session"))
        await _tool_running(cf, sid2, 1)
        await cf.restart_worker()
        item2, reply2 = await _reply(cf, "k2@example.org")
        # The turn's one answer: finished in the container while workerd was down (the
        # stored answer ends the recovered turn), or asked again after the restart.
        results = [e for e in await _events(cf, sid2) if e["kind"] == "result"]
        assert len(results) == 1, results
        assert reply2.text == results[0]["data"]["text"] + "\n"
        assert reply2.text in (f"{RECOVERED_REPLY}\n", "Slow tool said: started-slow-tool\ndone\n")
        assert reply2.headers["to"] == "Bob <bob@example.net>"
        assert reply2.in_reply_to == ("k2@example.org",)
        # The same message delivered again after the restart: no second turn, no reply.
        assert (await _send(cf, raw, "bob@example.net")).status_code == 200
        refused = (await _get(cf, "/_kit/mail/refused?limit=500"))["items"]
        assert (refused[0]["reason"], refused[0]["message_id"]) == ("duplicate", "k2@example.org")
        assert await _replies_to(cf, "k2@example.org") == [item2]
        users = [e for e in await _events(cf, sid2) if e["kind"] == "user"]
        assert len(users) == 1


def _with_attachments(message_id: str, body: str) -> bytes:
    """A message with a text file (a path in its name) and an image attached."""
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = AGENT
    msg["Subject"] = "Order 1042"
    msg["Message-ID"] = f"<{message_id}>"
    msg.set_content(body)
    msg.add_attachment(
        b"order 1042: two lamps\n", maintype="text", subtype="plain", filename="../../notes.txt"
    )
    msg.add_attachment(b"\x89PNG...", maintype="image", subtype="png", filename="photo.png")
    return msg.as_bytes()


def _read_back(reply: Inbound) -> tuple[list[str], set[str]]:
    """The files the agent listed (names in their folder) and their owners, after it said
    what the attachment says."""
    said, *listing = reply.text.splitlines()
    assert said == "Attachment said: order 1042: two lamps", reply.text
    names = sorted(line.split()[1].split("/", 2)[2] for line in listing)
    return names, {line.split()[0] for line in listing}


async def test_attachments_are_saved_in_the_workspace_of_every_container(kit_tmp: Path) -> None:
    """A mailed text file is kept by the session's DO and put into its container before the
    turn, owned by the sandbox user, under a plain name (a path in its name is dropped): the
    agent reads it with its own tools and the reply carries what it read. After the
    container is killed, the next message's new container has it too."""
    image = runtime_image()
    project = write_agent(kit_tmp / "agent")
    (project / "scenarios" / "0-mail.toml").write_text(ATTACHMENT_SCENARIO)
    async with rehearse_cloudflare(project, kit_tmp / "state", image.tag, mail_address=AGENT) as cf:
        raw = _with_attachments("a1@example.org", "Please read my attachment.")
        assert (await _send(cf, raw, "alice@example.org")).status_code == 200
        _, reply = await _reply(cf, "a1@example.org")
        names, owners = _read_back(reply)
        assert names == ["notes.txt", "photo.png"]  # no path from the name, no temp file
        assert "root" not in owners  # the sandbox user's files, not the host's
        sid = await _session_of(cf, "a1@example.org")
        folder = "mail/" + hashlib.sha256(b"a1@example.org").hexdigest()[:12]
        files = (await _get(cf, f"/v1/sessions/{sid}/files"))["files"]
        assert [(f["path"], f["size"]) for f in files] == [
            (f"{folder}/notes.txt", 22),
            (f"{folder}/photo.png", 7),
        ]
        users = [e["data"]["text"] for e in await _events(cf, sid) if e["kind"] == "user"]
        assert f"- ../../notes.txt (text/plain, 22 bytes): saved as {folder}/notes.txt" in users[0]

        # The container dies; the thread's next message runs in a new one, which has the file.
        backend = cf.containers.backend
        running = [c.id for c in backend.containers.values() if c.status()["running"]]
        assert len(running) == 1, running
        await backend.signal(running[0], 9)
        again = _mail(
            "a2@example.org",
            "Please read my attachment again.",
            to=reply.sender,
            subject="Re: Order 1042",
            in_reply_to=reply.message_id,
            references=["a1@example.org", reply.message_id],
        )
        await _send(cf, again, "alice@example.org", reply.sender)
        _, second = await _reply(cf, "a2@example.org")
        names, owners = _read_back(second)
        assert names == ["notes.txt", "photo.png"]
        assert "root" not in owners
        events = await _events(cf, sid)
        died = [e for e in events if e["kind"] == "sandbox" and e["data"].get("state") == "died"]
        assert [(e["data"]["reason"], e["data"]["exit_code"]) for e in died] == [("killed", 137)]
        starts = [e for e in events if e["kind"] == "sandbox" and e["data"]["state"] == "running"]
        assert len(starts) == 2  # a new container took the second turn
