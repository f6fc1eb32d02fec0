"""The Fly gateway's inbound mail webhooks: kit's signed scheme, Mailgun's and Postmark's
shapes. Each good request hands the raw message and its envelope to the inbox; each bad
one is answered 4xx with a sentence and hands nothing on."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

import kit.mail.webhook
from kit.mail.channel import MailChannel, Receipt
from kit.mail.rules import Agent
from kit.mail.store import SqliteMailStore
from kit.mail.webhook import WebhookSecrets, sign, webhook_routes
from kit.storage.errors import StoreUnavailable

NOW = 1_800_000_000
SECRET = "kit-test-webhook-secret-0123456789"
MAILGUN_KEY = "key-mailgun-signing-0123456789"
RAW = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: agent@example.com\r\n"
    b"Subject: Hello\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"Where is my order?\r\n"
)


class Recorder:
    """An inbox that keeps what it was given."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, str | None, list[str] | None]] = []

    async def receive(
        self,
        raw: bytes,
        *,
        envelope_from: str | None = None,
        envelope_to: list[str] | None = None,
        authenticated: bool | None = None,
    ) -> Receipt:
        self.got.append((raw, envelope_from, envelope_to))
        return Receipt("new", "m1@example.org", "s-1")


SECRETS = WebhookSecrets(kit=SECRET, mailgun=MAILGUN_KEY, postmark=("pm-user", "pm-password"))


@pytest.fixture
async def inbox() -> AsyncIterator[tuple[Recorder, httpx.AsyncClient]]:
    recorder = Recorder()
    app = Starlette(routes=webhook_routes(SECRETS, lambda: recorder, clock=lambda: NOW))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield recorder, http


def _signed(
    body: bytes = RAW,
    *,
    secret: str = SECRET,
    at: int = NOW,
    sender: str | None = "alice@example.org",
    to: str | None = "agent@example.com",
) -> dict[str, str]:
    headers = {"x-kit-mail-timestamp": str(at), "content-type": "message/rfc822"}
    if sender is not None:
        headers["x-kit-mail-from"] = sender
    if to is not None:
        headers["x-kit-mail-to"] = to
    headers["x-kit-mail-signature"] = sign(
        secret, str(at), body, envelope_from=sender or "", envelope_to=to or ""
    )
    return headers


async def test_a_signed_message_is_taken(inbox: tuple[Recorder, httpx.AsyncClient]) -> None:
    """A request signed with the secret hands the raw bytes and the envelope on; the answer
    names the session."""
    recorder, http = inbox
    answer = await http.post(
        "/v1/mail/inbound",
        content=RAW,
        headers=_signed(to="agent+tok@example.com, other@example.com", sender="<>"),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["session_id"] == "s-1"
    assert recorder.got == [(RAW, "<>", ["agent+tok@example.com", "other@example.com"])]


async def test_the_signature_is_checked_exactly(
    inbox: tuple[Recorder, httpx.AsyncClient],
) -> None:
    """Another secret, another body, another envelope than was signed, no signature, no
    or a stale (or future) timestamp: 401 with the reason, nothing handed on."""
    recorder, http = inbox
    cases: list[tuple[dict[str, str], bytes, str]] = []
    cases.append((_signed(secret="another-secret-0123456789"), RAW, "bad_signature"))
    cases.append((_signed(), RAW + b"P.S. forged\r\n", "bad_signature"))
    forged_to = _signed()
    forged_to["x-kit-mail-to"] = "agent+othertoken@example.com"
    cases.append((forged_to, RAW, "bad_signature"))
    forged_from = _signed()
    del forged_from["x-kit-mail-from"]
    cases.append((forged_from, RAW, "bad_signature"))
    unsigned = _signed()
    del unsigned["x-kit-mail-signature"]
    cases.append((unsigned, RAW, "unsigned"))
    no_time = _signed()
    del no_time["x-kit-mail-timestamp"]
    cases.append((no_time, RAW, "unsigned"))
    cases.append((_signed(at=NOW - 301), RAW, "stale"))
    cases.append((_signed(at=NOW + 301), RAW, "stale"))
    for headers, body, code in cases:
        answer = await http.post("/v1/mail/inbound", content=body, headers=headers)
        assert (answer.status_code, answer.json()["error"]) == (401, code), answer.text
        assert answer.json()["message"].endswith(")") or answer.json()["message"].endswith(".")
    assert recorder.got == []
    within = await http.post("/v1/mail/inbound", content=RAW, headers=_signed(at=NOW - 299))
    assert within.status_code == 200, within.text


async def test_too_large_is_refused_unread(
    inbox: tuple[Recorder, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body over the mail limit is 413, by its Content-Length or as it streams."""
    recorder, http = inbox
    monkeypatch.setattr(kit.mail.webhook, "MAX_INBOUND_BYTES", 100)
    answer = await http.post("/v1/mail/inbound", content=RAW, headers=_signed())
    assert answer.status_code == 413, answer.text
    assert "send large files as links" in answer.json()["message"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield RAW[:60]

    streamed = await http.post("/v1/mail/inbound", content=chunks(), headers=_signed())
    assert streamed.status_code == 413, streamed.text
    assert recorder.got == []


async def test_routes_without_their_secret_are_off() -> None:
    """With no secret set, every route answers 404 naming the secret to set; with the
    secrets but no inbox (no address, no relay), 404 with what is missing."""
    recorder = Recorder()
    app = Starlette(routes=webhook_routes(WebhookSecrets(), lambda: recorder))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as h:
        for path, secret in (
            ("/v1/mail/inbound", "KIT_MAIL_WEBHOOK_SECRET"),
            ("/v1/mail/mailgun", "KIT_MAILGUN_SIGNING_KEY"),
            ("/v1/mail/postmark", "KIT_POSTMARK_PASSWORD"),
        ):
            answer = await h.post(path, content=RAW, headers=_signed())
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"] == "mail_off"
            assert secret in answer.json()["message"]
    off = "Mail is off: set [mail] address in kit.toml and deploy again."
    app = Starlette(routes=webhook_routes(SECRETS, lambda: None, off=off, clock=lambda: NOW))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as h:
        answer = await h.post("/v1/mail/inbound", content=RAW, headers=_signed())
        assert (answer.status_code, answer.json()["message"]) == (404, off)
    assert recorder.got == []


def _mailgun(key: str = MAILGUN_KEY, at: int = NOW, token: str = "a" * 50) -> dict[str, str]:
    signature = hmac.new(key.encode(), f"{at}{token}".encode(), hashlib.sha256).hexdigest()
    return {"timestamp": str(at), "token": token, "signature": signature}


async def test_mailgun_forward_to_mime(inbox: tuple[Recorder, httpx.AsyncClient]) -> None:
    """Mailgun's forward() to a URL ending in mime: body-mime is the raw message, sender and
    recipient the envelope; multipart and urlencoded forms alike."""
    recorder, http = inbox
    fields = {
        **_mailgun(),
        "recipient": "agent@example.com",
        "sender": "alice@example.org",
        "body-mime": RAW.decode(),
    }
    multipart = await http.post(
        "/v1/mail/mailgun?mime", files={k: (None, v) for k, v in fields.items()}
    )
    assert multipart.status_code == 200, multipart.text
    urlencoded = await http.post("/v1/mail/mailgun?mime", data=fields)
    assert urlencoded.status_code == 200, urlencoded.text
    assert recorder.got == [(RAW, "alice@example.org", ["agent@example.com"])] * 2


async def test_mailgun_refusals(inbox: tuple[Recorder, httpx.AsyncClient]) -> None:
    """A wrong or stale signature is 401; a form without body-mime is 422 naming the URL to
    forward to; nothing is handed on."""
    recorder, http = inbox
    body = {"body-mime": RAW.decode(), "recipient": "agent@example.com"}
    for signed, code in (
        (_mailgun(key="another-key-0123456789"), "bad_signature"),
        (_mailgun(at=NOW - 600), "stale"),
        ({"timestamp": str(NOW), "token": "t"}, "unsigned"),
    ):
        answer = await http.post("/v1/mail/mailgun", data={**body, **signed})
        assert (answer.status_code, answer.json()["error"]) == (401, code), answer.text
    no_mime = await http.post("/v1/mail/mailgun", data={**_mailgun(), "body-plain": "hi"})
    assert no_mime.status_code == 422, no_mime.text
    assert "mime" in no_mime.json()["message"]
    not_form = await http.post("/v1/mail/mailgun", content=b"{}", headers=_json())
    assert not_form.status_code == 422, not_form.text
    assert recorder.got == []


def _json() -> dict[str, str]:
    return {"content-type": "application/json"}


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {**_json(), "authorization": f"Basic {token}"}


async def test_postmark_raw_email(inbox: tuple[Recorder, httpx.AsyncClient]) -> None:
    """Postmark's JSON with RawEmail, credentials from the URL: the raw message and the
    original recipient are handed on."""
    recorder, http = inbox
    payload = {
        "From": "alice@example.org",
        "OriginalRecipient": "agent+tok@example.com",
        "MessageID": "postmark-own-id",
        "TextBody": "Where is my order?",
        "RawEmail": RAW.decode(),
    }
    answer = await http.post(
        "/v1/mail/postmark", content=json.dumps(payload), headers=_basic("pm-user", "pm-password")
    )
    assert answer.status_code == 200, answer.text
    assert recorder.got == [(RAW, None, ["agent+tok@example.com"])]


async def test_postmark_refusals(inbox: tuple[Recorder, httpx.AsyncClient]) -> None:
    """No or wrong credentials: 401 (with a Basic challenge when none were sent); no
    RawEmail: 422 naming the setting to turn on; not JSON: 422."""
    recorder, http = inbox
    payload = json.dumps({"RawEmail": RAW.decode()})
    none = await http.post("/v1/mail/postmark", content=payload, headers=_json())
    assert (none.status_code, none.json()["error"]) == (401, "no_auth")
    assert none.headers["www-authenticate"].startswith("Basic")
    wrong = await http.post(
        "/v1/mail/postmark", content=payload, headers=_basic("pm-user", "guess")
    )
    assert (wrong.status_code, wrong.json()["error"]) == (401, "bad_credentials")
    no_raw = await http.post(
        "/v1/mail/postmark",
        content=json.dumps({"TextBody": "hi"}),
        headers=_basic("pm-user", "pm-password"),
    )
    assert no_raw.status_code == 422, no_raw.text
    assert "Include raw email content in JSON payload" in no_raw.json()["message"]
    bad = await http.post(
        "/v1/mail/postmark", content=b"not json", headers=_basic("pm-user", "pm-password")
    )
    assert bad.status_code == 422, bad.text
    assert recorder.got == []


async def test_with_the_real_channel(tmp_path: Path) -> None:
    """Through the real channel and store: mail without a Message-ID is 422 and stores
    nothing; an unsigned request stores nothing; a signed auto-reply is taken (200) and
    recorded as refused, not answered."""
    store = SqliteMailStore(tmp_path / "mail.sqlite")
    channel = MailChannel(store, Agent("agent@example.com"), "http://127.0.0.1:9", "t" * 32)
    app = Starlette(routes=webhook_routes(SECRETS, lambda: channel, clock=lambda: NOW))
    auto = RAW.replace(b"Subject:", b"Auto-Submitted: auto-replied\r\nSubject:")
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://g"
        ) as http:
            no_id = RAW.replace(b"Message-ID: <m1@example.org>\r\n", b"")
            answer = await http.post("/v1/mail/inbound", content=no_id, headers=_signed(no_id))
            assert (answer.status_code, answer.json()["error"]) == (422, "not_mail")
            assert "Message-ID" in answer.json()["message"]
            forged = _signed(auto, secret="another-secret-0123456789")
            answer = await http.post("/v1/mail/inbound", content=auto, headers=forged)
            assert answer.status_code == 401
            assert await store.refused(10) == []
            answer = await http.post("/v1/mail/inbound", content=auto, headers=_signed(auto))
            assert answer.status_code == 200, answer.text
            assert answer.json()["reason"] == "auto_submitted"
            assert [r.message_id for r in await store.refused(10)] == ["m1@example.org"]
            assert await store.pending() == []
    finally:
        await channel.close()
        store.close()


class Down:
    """An inbox whose bucket cannot be reached."""

    async def receive(
        self,
        raw: bytes,
        *,
        envelope_from: str | None = None,
        envelope_to: list[str] | None = None,
        authenticated: bool | None = None,
    ) -> Receipt:
        raise StoreUnavailable("Cannot reach S3: connection refused.")


async def test_an_unreachable_bucket_is_503() -> None:
    """The bucket (or the session host) unreachable: 503 saying to send again, so that the
    provider retries; never a 200 for mail that was not taken."""
    app = Starlette(routes=webhook_routes(SECRETS, Down, clock=lambda: NOW))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as h:
        answer = await h.post("/v1/mail/inbound", content=RAW, headers=_signed())
    assert (answer.status_code, answer.json()["error"]) == (503, "unavailable")
    assert "again later" in answer.json()["message"]
