"""``kit dev``'s ``POST /web/mail``: the chat page's list of email threads. The store lists
threads newest first with their subject, size and last activity; the route answers only the
host's own loopback page (the rule of ``POST /web/session``) and gives anyone else no token;
hosts that never hand tokens to a page do not serve it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from kit.cli.stack import Stack
from kit.host.app import create_app
from kit.host.auth import OriginPolicy
from kit.host.web import MAIL_PATH, WebConfig
from kit.mail.routes import page_threads
from kit.mail.rules import Thread
from kit.mail.store import InboundRecord, OutboxEntry, SqliteMailStore

TURN_WAIT_S = 120.0


def _record(session_id: str, n: int, subject: str, at: float) -> InboundRecord:
    return InboundRecord(
        message_id=f"m{n}@example.org",
        session_id=session_id,
        client_msg_id=f"mail-{n}",
        text=f"text {n}",
        sender="alice@example.org",
        sender_name="Alice",
        subject=subject,
        in_reply_to=(),
        references=(),
        token=f"tok{session_id}",
        received_at=at,
    )


def _reply(session_id: str, n: int, at: float) -> OutboxEntry:
    return OutboxEntry(
        inbound_id=f"m{n}@example.org",
        session_id=session_id,
        sender=f"agent+tok{session_id}@example.com",
        to="alice@example.org",
        subject="Re: x",
        message_id=f"r{n}@example.com",
        text="answer",
        raw=b"",
        created_at=at,
    )


async def test_threads_are_listed_newest_first_with_subject_size_and_last_mail(
    tmp_path: Path,
) -> None:
    """Each thread: its session token, participants, the first message's subject, the mails
    both ways, and when the newest of them came; ordered by that, newest first, at most
    ``limit``."""
    store = SqliteMailStore(tmp_path / "mail.sqlite")
    a, b = Thread("a", "toka", ("alice@example.org",)), Thread("b", "tokb", ("bob@example.org",))
    assert await store.take(_record("a", 1, "First", 100.0), a, "kit-session-a")
    assert await store.take(_record("b", 2, "Second", 200.0), b, "kit-session-b")
    assert await store.take(_record("a", 3, "Re: First again", 300.0), a, None)
    assert await store.reply(_reply("a", 3, 400.0))
    listed = await store.threads()
    assert [(t.session_id, t.session_token, t.subject, t.messages, t.last_at) for t in listed] == [
        ("a", "kit-session-a", "First", 3, 400.0),
        ("b", "kit-session-b", "Second", 1, 200.0),
    ]
    assert listed[1].participants == ("bob@example.org",)
    assert [t.session_id for t in await store.threads(1)] == ["a"]
    store.close()


def _page_headers(stack: Stack, name: str = "127.0.0.1") -> dict[str, str]:
    port = urlsplit(stack.url).port
    return {
        "origin": f"http://{name}:{port}",
        "host": f"{name}:{port}",
        "sec-fetch-site": "same-origin",
    }


async def _mailed(stack: Stack) -> str:
    """Mail the agent one message and wait for its reply; the thread's session id."""
    assert stack.mail is not None
    raw = (
        b"From: Alice <alice@example.org>\r\nTo: " + stack.mail.agent.address.encode() + b"\r\n"
        b"Subject: Order 1042\r\nMessage-ID: <web-mail-1@example.org>\r\n\r\n"
        b"Where is my order 1042?\r\n"
    )
    receipt = await stack.mail.receive(raw, envelope_from="alice@example.org")
    assert receipt.session_id is not None, receipt
    async with asyncio.timeout(TURN_WAIT_S):
        await stack.mail.idle()
    return receipt.session_id


async def test_the_hosts_own_page_gets_the_threads_with_their_tokens(stack: Stack) -> None:
    """From the host's own page (at 127.0.0.1 or localhost) the route answers the agent's
    address and the thread: its subject, participant, two mails, and a token and ``ws_url``
    that open its session; the page's config names the route."""
    session_id = await _mailed(stack)
    assert stack.mail is not None
    async with httpx.AsyncClient(base_url=stack.url, trust_env=False) as http:
        assert (await http.get("/web/config.json")).json() == {
            "session_url": "/web/session",
            "mail_url": MAIL_PATH,
        }
        for name in ("127.0.0.1", "localhost"):
            answer = await http.post(MAIL_PATH, headers=_page_headers(stack, name))
            assert answer.status_code == 200, answer.text
            assert answer.headers["cache-control"] == "no-store"
            body = answer.json()
            assert body["address"] == stack.mail.agent.address
            [thread] = body["threads"]
            port = urlsplit(stack.url).port
            assert thread["ws_url"] == f"ws://{name}:{port}/v1/sessions/{session_id}/ws"
    assert thread["session_id"] == session_id
    assert thread["subject"] == "Order 1042"
    assert thread["participants"] == ["alice@example.org"]
    assert thread["messages"] == 2
    assert thread["token"] == await stack.mail.store.session_token(session_id)
    assert isinstance(thread["last_at"], float)


REFUSED = [
    ({}, "no Origin header"),
    ({"origin": "http://evil.example"}, "is not this host's own loopback origin"),
    ({"origin": "null"}, "is not this host's own loopback origin"),
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    (
        {"origin": "http://evil.example:{port}", "host": "evil.example:{port}"},
        "is not this host's own loopback origin",
    ),
    ({"origin": "http://127.0.0.1:{port}", "host": "evil.example"}, "is not the page's"),
    (
        {"origin": "http://127.0.0.1:{port}", "sec-fetch-site": "cross-site"},
        "Sec-Fetch-Site is 'cross-site'",
    ),
]


async def test_anyone_else_gets_403_and_no_token(stack: Stack) -> None:
    """Another site's page, a rebinding name, a request without Origin, or a cross-site
    fetch gets 403 ``forbidden_origin`` naming why, and no token, subject or address; the
    API token does not open it either, and a GET gets nothing."""
    await _mailed(stack)
    port = str(urlsplit(stack.url).port)
    async with httpx.AsyncClient(base_url=stack.url, trust_env=False) as http:
        for headers, reason in REFUSED:
            sent = {k: v.replace("{port}", port) for k, v in headers.items()}
            for extra in ({}, {"authorization": f"Bearer {stack.api_token}"}):
                answer = await http.post(MAIL_PATH, headers={**sent, **extra})
                assert answer.status_code == 403, (headers, answer.text)
                assert answer.json()["error"] == "forbidden_origin"
                assert reason in answer.json()["message"]
                for secret in ("kit-session-", "Order 1042", "alice@", "threads"):
                    assert secret not in answer.text
        # Only POST is served: a GET (which a page of another site can make without a
        # preflight, e.g. as an <img>) gets no list, even with the page's headers.
        got = await http.get(MAIL_PATH, headers=_page_headers(stack))
        assert got.status_code == 404, got.text
        assert "kit-session-" not in got.text


async def test_hosts_without_local_mail_do_not_serve_it(stack: Stack, tmp_path: Path) -> None:
    """A host whose page has no local mail (``kit gateway``, the Fly rehearsal) or no local
    sessions does not serve ``/web/mail`` (401 without the token, like any other path, 404
    with it) and its config names none."""
    store = SqliteMailStore(tmp_path / "mail.sqlite")
    policy = OriginPolicy(own=(urlsplit(stack.url).netloc,))
    for web in (
        WebConfig(local_sessions=True),
        WebConfig(local_sessions=False, local_mail=page_threads(store, "a@example.com")),
    ):
        app = create_app(stack.host, api_token=stack.api_token, origins=policy, web=web)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=stack.url) as http:
            assert "mail_url" not in (await http.get("/web/config.json")).json()
            answer = await http.post(MAIL_PATH, headers=_page_headers(stack))
            assert answer.status_code == 401, answer.text
            good = {"authorization": f"Bearer {stack.api_token}"}
            assert (await http.post(MAIL_PATH, headers=good)).status_code in (404, 405)
    store.close()
