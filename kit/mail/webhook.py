"""Inbound mail over HTTP (the Fly gateway): kit's signed webhook and two providers' shapes,
each reduced to raw RFC 5322 and handed to :meth:`kit.mail.channel.MailChannel.receive`.

``POST /v1/mail/inbound`` — kit's own scheme (docs/email.md, "Fly"): the body is the raw
message; the sender of the request signs it with a shared secret (``KIT_MAIL_WEBHOOK_SECRET``)::

    X-Kit-Mail-Timestamp: <unix seconds>
    X-Kit-Mail-From: <envelope sender, "<>" for the null path>       (optional)
    X-Kit-Mail-To: <envelope recipients, comma-separated>             (optional)
    X-Kit-Mail-Signature: v1=<hex HMAC-SHA256(secret, timestamp "\\n" from "\\n" to "\\n" body)>

``from``/``to`` are the header values as sent (an absent header signs as ``""``). The
timestamp must be within :data:`WINDOW_S` of the gateway's clock. A replayed request is
harmless: a Message-ID is taken once.

``POST /v1/mail/mailgun`` — a Mailgun route's action
``forward("https://APP.fly.dev/v1/mail/mailgun?mime")`` (a URL ending in ``mime`` gets the
raw message as the form field ``body-mime``); the request is checked with ``signature`` = hex HMAC-SHA256(``KIT_MAILGUN_SIGNING_KEY``,
``timestamp`` + ``token``), stale after :data:`WINDOW_S`.

``POST /v1/mail/postmark`` — Postmark's inbound JSON, with credentials in the URL
(``https://USER:PASSWORD@APP.fly.dev/v1/mail/postmark``, checked against
``KIT_POSTMARK_USER``/``KIT_POSTMARK_PASSWORD``) and "Include raw email content in JSON
payload" on (its ``RawEmail``).

Every answer is JSON. Accepted mail is 200 whether or not it is answered (a refusal, such
as a loop, is recorded, not bounced: bouncing automatic mail feeds the loop). A request that
fails a check (401), is too large (413) or carries no readable mail (422) changes nothing;
503 says the bucket or the session host could not be reached (send again later).
A route whose secret is not set answers 404 naming it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from kit.client import ClientError
from kit.mail.channel import Receipt
from kit.mail.errors import MailChannelError
from kit.mail.message import MAX_INBOUND_BYTES, MailError
from kit.storage.errors import StoreError

log = logging.getLogger("kit.mail")

INBOUND_PATH = "/v1/mail/inbound"
MAILGUN_PATH = "/v1/mail/mailgun"
POSTMARK_PATH = "/v1/mail/postmark"
PATHS = (INBOUND_PATH, MAILGUN_PATH, POSTMARK_PATH)
"""Answered without the API token: each authenticates its own way."""

TIMESTAMP_HEADER = "x-kit-mail-timestamp"
SIGNATURE_HEADER = "x-kit-mail-signature"
FROM_HEADER = "x-kit-mail-from"
TO_HEADER = "x-kit-mail-to"
WINDOW_S = 300
"""A signed request is taken only within this many seconds of its timestamp."""
ADAPTER_MAX_BYTES = 3 * MAX_INBOUND_BYTES
"""A provider's form or JSON carries the message encoded, next to its parsed parts."""


class Inbox(Protocol):
    """Where mail goes (:class:`~kit.mail.channel.MailChannel`)."""

    async def receive(
        self,
        raw: bytes,
        *,
        envelope_from: str | None = None,
        envelope_to: list[str] | None = None,
        authenticated: bool | None = None,
    ) -> Receipt: ...


@dataclass(frozen=True)
class WebhookSecrets:
    """The secrets of the routes (Fly secrets; None: that route is off)."""

    kit: str | None = field(default=None, repr=False)
    """``KIT_MAIL_WEBHOOK_SECRET``."""
    mailgun: str | None = field(default=None, repr=False)
    """``KIT_MAILGUN_SIGNING_KEY``."""
    postmark: tuple[str, str] | None = field(default=None, repr=False)
    """``KIT_POSTMARK_USER``, ``KIT_POSTMARK_PASSWORD``."""

    @property
    def any(self) -> bool:
        return bool(self.kit or self.mailgun or self.postmark)


def string_to_sign(timestamp: str, envelope_from: str, envelope_to: str, body: bytes) -> bytes:
    """What ``v1`` signs (see the module docstring)."""
    return f"{timestamp}\n{envelope_from}\n{envelope_to}\n".encode() + body


def sign(
    secret: str, timestamp: str, body: bytes, *, envelope_from: str = "", envelope_to: str = ""
) -> str:
    """The ``X-Kit-Mail-Signature`` value for a request."""
    payload = string_to_sign(timestamp, envelope_from, envelope_to, body)
    return "v1=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


class Refusal(MailChannelError):
    """A request the webhook does not take: its status, code and sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> Response:
        headers = {"www-authenticate": 'Basic realm="kit mail"'} if self.code == "no_auth" else {}
        body = {"error": self.code, "message": self.message}
        return JSONResponse(body, self.status, headers=headers)


def check_timestamp(value: str, now: float, what: str) -> None:
    if not value.isdigit():
        raise Refusal(401, "unsigned", f"{what} is missing or not whole Unix seconds.")
    if abs(now - int(value)) > WINDOW_S:
        raise Refusal(
            401,
            "stale",
            f"{what} is more than {WINDOW_S} s from the gateway's clock: sign each request "
            "when it is sent (and check the sender's clock).",
        )


def verify_kit(secret: str, headers: dict[str, str], body: bytes, now: float) -> None:
    """Check a ``/v1/mail/inbound`` request; :class:`Refusal` says why not."""
    given = headers.get(SIGNATURE_HEADER, "").strip()
    if not given:
        raise Refusal(
            401, "unsigned", "No X-Kit-Mail-Signature: sign the request (docs/email.md, Fly)."
        )
    timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    check_timestamp(timestamp, now, "X-Kit-Mail-Timestamp")
    want = sign(
        secret,
        timestamp,
        body,
        envelope_from=headers.get(FROM_HEADER, "").strip(),
        envelope_to=headers.get(TO_HEADER, "").strip(),
    )
    if not any(hmac.compare_digest(v.strip().encode(), want.encode()) for v in given.split(",")):
        raise Refusal(
            401,
            "bad_signature",
            "X-Kit-Mail-Signature does not match: sign timestamp, X-Kit-Mail-From, "
            "X-Kit-Mail-To and the body with KIT_MAIL_WEBHOOK_SECRET (docs/email.md, Fly).",
        )


def verify_mailgun(key: str, form: dict[str, str], now: float) -> None:
    """Check a Mailgun webhook's ``timestamp``/``token``/``signature``."""
    timestamp, token = form.get("timestamp", ""), form.get("token", "")
    signature = form.get("signature", "")
    if not token or not signature:
        raise Refusal(401, "unsigned", "No Mailgun signature, token or timestamp in the form.")
    check_timestamp(timestamp, now, "Mailgun's timestamp")
    want = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.encode(), want.encode()):
        raise Refusal(
            401,
            "bad_signature",
            "Mailgun's signature does not match KIT_MAILGUN_SIGNING_KEY: set it to the "
            "domain's HTTP webhook signing key.",
        )


def verify_postmark(credentials: tuple[str, str], authorization: str) -> None:
    """Check the basic auth Postmark sends from the credentials in the webhook URL."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise Refusal(
            401,
            "no_auth",
            "No credentials: give Postmark the URL https://USER:PASSWORD@…/v1/mail/postmark "
            "with KIT_POSTMARK_USER and KIT_POSTMARK_PASSWORD.",
        )
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user, password = "", ""
    ok_user = hmac.compare_digest(user.encode(), credentials[0].encode())
    ok_password = hmac.compare_digest(password.encode(), credentials[1].encode())
    if not (ok_user and ok_password):
        raise Refusal(
            401,
            "bad_credentials",
            "Wrong user or password: the URL's credentials must be KIT_POSTMARK_USER and "
            "KIT_POSTMARK_PASSWORD.",
        )


def postmark_raw(payload: Any) -> tuple[bytes, list[str] | None]:
    """The raw message and envelope recipient of Postmark's inbound JSON."""
    if not isinstance(payload, dict):
        raise Refusal(422, "not_mail", "The body is not Postmark's inbound JSON (an object).")
    raw = payload.get("RawEmail")
    if not isinstance(raw, str) or not raw:
        raise Refusal(
            422,
            "no_raw_email",
            "Postmark sent no RawEmail: turn on 'Include raw email content in JSON payload' "
            "in the inbound stream's settings (kit needs the message as sent, headers "
            "and all).",
        )
    to = payload.get("OriginalRecipient")
    return raw.encode(), [to] if isinstance(to, str) and to else None


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, or :class:`Refusal` 413 past ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Refusal:
    return Refusal(
        413,
        "too_large",
        f"The request is over {limit} bytes; kit takes mail up to "
        f"{MAX_INBOUND_BYTES} bytes (send large files as links).",
    )


async def _form(request: Request, body: bytes) -> dict[str, str]:
    """A urlencoded or multipart form from ``body`` (read already); text fields only."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[-1] for k, v in parsed.items()}
    if kind != "multipart/form-data":
        raise Refusal(422, "not_mail", "Mailgun sends a form; this body is not one.")

    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    again = Request(request.scope, receive)
    try:
        form = await again.form(max_part_size=ADAPTER_MAX_BYTES, max_fields=10_000)
    except Exception as exc:  # the multipart parser's own errors
        raise Refusal(422, "not_mail", f"The form cannot be read: {exc}.") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def webhook_routes(
    secrets: WebhookSecrets,
    inbox: Callable[[], Inbox | None],
    *,
    off: str = "",
    clock: Callable[[], float] = time.time,
) -> list[Route]:
    """The three routes. ``inbox()``: where mail goes now (None: mail is off, ``off`` says
    what to set)."""

    async def deliver(
        raw: bytes, envelope_from: str | None, envelope_to: list[str] | None
    ) -> Response:
        target = inbox()
        if target is None:
            raise Refusal(404, "mail_off", off or "Mail is off on this gateway.")
        try:
            receipt = await target.receive(
                raw, envelope_from=envelope_from, envelope_to=envelope_to
            )
        except MailError as exc:
            raise Refusal(422, "not_mail", str(exc)) from None
        except (StoreError, ClientError) as exc:  # the bucket or the session host
            log.warning("mail webhook: cannot take the message now: %s", exc)
            raise Refusal(
                503, "unavailable", "The gateway cannot take mail right now; send it again later."
            ) from None
        body = {
            "action": receipt.action,
            "message_id": receipt.message_id,
            "session_id": receipt.session_id,
            "reason": receipt.reason,
            "detail": receipt.detail or None,
        }
        return JSONResponse(body)

    def guard(
        name: str, needs: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                if not _configured(secrets, name):
                    raise Refusal(
                        404,
                        "mail_off",
                        f"{request.url.path} is off: set the Fly secret {needs} "
                        "(docs/email.md, Fly).",
                    )
                if inbox() is None:
                    raise Refusal(404, "mail_off", off or "Mail is off on this gateway.")
                return await handler(request)
            except Refusal as refusal:
                log.info("mail webhook %s refused: %s", request.url.path, refusal.code)
                return refusal.response()

        return run

    async def inbound(request: Request) -> Response:
        assert secrets.kit is not None
        body = await read_body(request, MAX_INBOUND_BYTES)
        headers = {k.lower(): v for k, v in request.headers.items()}
        verify_kit(secrets.kit, headers, body, clock())
        sender = headers.get(FROM_HEADER)
        to = headers.get(TO_HEADER)
        recipients = [a.strip() for a in to.split(",") if a.strip()] if to else None
        return await deliver(body, sender.strip() if sender is not None else None, recipients)

    async def mailgun(request: Request) -> Response:
        assert secrets.mailgun is not None
        form = await _form(request, await read_body(request, ADAPTER_MAX_BYTES))
        verify_mailgun(secrets.mailgun, form, clock())
        raw = form.get("body-mime")
        if not raw:
            raise Refusal(
                422,
                "no_body_mime",
                "No body-mime in Mailgun's form: forward to a URL ending in 'mime' "
                "(…/v1/mail/mailgun?mime).",
            )
        to = form.get("recipient")
        recipients = [a.strip() for a in to.split(",") if a.strip()] if to else None
        return await deliver(raw.encode(), form.get("sender"), recipients)

    async def postmark(request: Request) -> Response:
        assert secrets.postmark is not None
        verify_postmark(secrets.postmark, request.headers.get("authorization", ""))
        body = await read_body(request, ADAPTER_MAX_BYTES)
        try:
            payload = json.loads(body)
        except ValueError:
            raise Refusal(
                422, "not_mail", "The body is not JSON (Postmark's inbound JSON)."
            ) from None
        raw, to = postmark_raw(payload)
        return await deliver(raw, None, to)

    return [
        Route(INBOUND_PATH, guard("kit", "KIT_MAIL_WEBHOOK_SECRET", inbound), methods=["POST"]),
        Route(MAILGUN_PATH, guard("mailgun", "KIT_MAILGUN_SIGNING_KEY", mailgun), methods=["POST"]),
        Route(
            POSTMARK_PATH,
            guard("postmark", "KIT_POSTMARK_USER and KIT_POSTMARK_PASSWORD", postmark),
            methods=["POST"],
        ),
    ]


def _configured(secrets: WebhookSecrets, name: str) -> bool:
    return bool(getattr(secrets, name))
