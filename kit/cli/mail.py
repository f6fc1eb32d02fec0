"""``kit mail send`` and ``kit mail outbox``: mail the agent, and read what it answered.

``send`` speaks SMTP to the running ``kit dev`` (its port is in ``.kit/dev.json``), logging
in with the host's API token, as a mail client would; to ``kit dev --target fly`` it posts
the message to the gateway's signed webhook (``dev.json`` ``mail``: its URL and the file
holding the secret), as a user's relay would. ``--reply`` writes as a mail client
answering the agent's newest reply to that sender: to the reply's plus address, with
``In-Reply-To`` and ``References``; to ``kit dev --target cloudflare`` it posts the raw
message to wrangler dev's local email endpoint (``dev.json`` ``mail`` ``local_email``), as
Email Routing hands mail to the Worker. ``--wait`` waits for the answer and prints it.
``outbox`` reads ``GET /_kit/mail/outbox`` (``--refused``: ``/_kit/mail/refused``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from kit.cli import console
from kit.cli.chat import ChatTarget, find_target
from kit.cli.errors import CliError
from kit.cli.rehearse import call
from kit.mail.webhook import FROM_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, TO_HEADER, sign

WAIT_POLL_S = 0.25


class MailCliError(CliError):
    """``kit mail`` cannot do what was asked; the message says what to do."""


@dataclass(frozen=True)
class MailTarget:
    control: ChatTarget
    smtp: tuple[str, int] | None
    """``kit dev``'s SMTP server (``dev.json`` ``smtp``)."""
    address: str | None
    webhook: tuple[str, str] | None = field(default=None, repr=False)
    """``kit dev --target fly``: the signed webhook's URL and secret (``dev.json`` ``mail``)."""
    local_email: str | None = None
    """``kit dev --target cloudflare``: wrangler's local email endpoint (``dev.json``
    ``mail``), which hands raw mail to the Worker's ``email()`` handler."""


def mail_target(state_dir: Path, url: str | None) -> MailTarget:
    control = find_target(state_dir, url)
    dev = state_dir / "dev.json"
    smtp: tuple[str, int] | None = None
    address: str | None = None
    webhook: tuple[str, str] | None = None
    local_email: str | None = None
    if url is None and dev.is_file():
        info = json.loads(dev.read_text())
        if isinstance(info.get("smtp"), dict):
            smtp = (str(info["smtp"]["host"]), int(info["smtp"]["port"]))
        mail = info.get("mail")
        if isinstance(mail, dict) and mail.get("webhook") and mail.get("secret_file"):
            try:
                secret = Path(str(mail["secret_file"])).read_text().strip()
            except OSError as exc:
                raise MailCliError(
                    f"Cannot read the webhook secret {mail['secret_file']} ({exc.strerror}); "
                    "is the rehearsal still running?"
                ) from None
            webhook = (str(mail["webhook"]), secret)
        if isinstance(mail, dict) and mail.get("local_email"):
            local_email = str(mail["local_email"])
        address = info.get("mail_address")
    return MailTarget(control, smtp, address, webhook, local_email)


def compose(
    sender: str,
    to: str,
    subject: str,
    text: str,
    *,
    parent: dict[str, Any] | None = None,
) -> EmailMessage:
    """The message ``kit mail send`` sends (``parent``: an outbox item it answers)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(usegmt=True)
    domain = sender.rsplit("@", 1)[-1].strip(">") or "localhost"
    msg["Message-ID"] = f"<kit-mail-send.{uuid.uuid4().hex}@{domain}>"
    if parent is not None:
        parent_id = f"<{parent['message_id']}>"
        msg["In-Reply-To"] = parent_id
        msg["References"] = f"<{parent['in_reply_to']}> {parent_id}"
    msg.set_content(text)
    return msg


def send(
    target: MailTarget,
    sender: str,
    text: str,
    *,
    to: str | None,
    subject: str | None,
    reply: bool,
    wait_s: float | None,
) -> int:
    _check_address("--from", sender)
    if to is not None:
        _check_address("--to", to)
    if subject is not None and any(c in subject for c in "\r\n\0"):
        raise MailCliError("--subject must be one line (no line breaks).")
    if target.smtp is None and target.webhook is None and target.local_email is None:
        raise MailCliError(
            "No SMTP server or mail endpoint of a running `kit dev` found (.kit/dev.json has "
            "none): start `kit dev` (or `kit dev --target fly|cloudflare`) in this project "
            "(mail to a deployment goes through your mail provider)."
        )
    parent = _newest_reply_to(target, sender) if reply else None
    if reply and parent is None:
        raise MailCliError(
            f"The agent has not answered {sender} yet, so there is nothing to reply to; "
            "send without --reply to start a thread."
        )
    to_addr = to or (parent["from"] if parent else target.address)
    if not to_addr:
        raise MailCliError("Give --to (the agent's address is not in .kit/dev.json).")
    subj = subject or (parent["subject"] if parent else "A message for the agent")
    msg = compose(sender, to_addr, subj, text, parent=parent)
    if target.smtp is not None:
        answer = asyncio.run(_smtp_send(target, msg))
    elif target.webhook is not None:
        answer = _webhook_send(target, msg)
    else:
        answer = _local_email_send(target, msg)
    message_id = str(msg["Message-ID"]).strip("<>")
    console.out(f"sent {message_id} to {to_addr}: {answer}")
    if wait_s is None:
        return 0
    return _wait_for_answer(target, message_id, wait_s)


def _check_address(option: str, value: str) -> None:
    """``value`` is one mail address (``alice@example.org`` or ``Alice <alice@example.org>``)."""
    _, addr = email.utils.parseaddr(value)
    local, at, domain = addr.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or any(c.isspace() or not c.isprintable() for c in addr)
        or any(c in value for c in "\r\n\0")
    ):
        raise MailCliError(
            f"{option} {value!r} is not a mail address: write it as name@example.org "
            "(or 'Name <name@example.org>')."
        )


async def _smtp_send(target: MailTarget, msg: EmailMessage) -> str:
    import aiosmtplib

    assert target.smtp is not None
    host, port = target.smtp
    try:
        _, message = await aiosmtplib.send(
            msg,
            hostname=host,
            port=port,
            username="kit",
            password=target.control.api_token or "",
            start_tls=False,
            use_tls=False,
            timeout=30,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        why = "; ".join(e.message for e in exc.recipients)
        raise MailCliError(f"kit dev refused the recipient: {why}") from None
    except aiosmtplib.SMTPResponseException as exc:
        raise MailCliError(f"kit dev refused the message ({exc.code}): {exc.message}") from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise MailCliError(
            f"Cannot send to kit dev's SMTP server at {host}:{port}: {exc}. Is `kit dev` running?"
        ) from None
    return message


def _webhook_send(target: MailTarget, msg: EmailMessage) -> str:
    """POST the message to the rehearsal's webhook, signed as a user's relay would sign it
    (docs/email.md, Fly)."""
    import httpx

    assert target.webhook is not None
    url, secret = target.webhook
    raw = msg.as_bytes(policy=SMTP)
    timestamp = str(int(time.time()))
    sender = email.utils.parseaddr(str(msg["From"]))[1]
    to = email.utils.parseaddr(str(msg["To"]))[1]
    headers = {
        "content-type": "message/rfc822",
        TIMESTAMP_HEADER: timestamp,
        FROM_HEADER: sender,
        TO_HEADER: to,
        SIGNATURE_HEADER: sign(secret, timestamp, raw, envelope_from=sender, envelope_to=to),
    }
    try:
        response = httpx.post(url, content=raw, headers=headers, timeout=60, trust_env=False)
    except httpx.HTTPError as exc:
        raise MailCliError(
            f"Cannot reach the mail webhook at {url}: {exc}. Is `kit dev --target fly` running?"
        ) from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200:
        why = answer.get("message") or response.text[:200]
        raise MailCliError(f"The webhook refused the message ({response.status_code}): {why}")
    if answer.get("action") == "refuse":
        return f"accepted, not answered: {answer.get('detail')}"
    return f"accepted for session {answer.get('session_id')}"


def _local_email_send(target: MailTarget, msg: EmailMessage) -> str:
    """POST the raw message to wrangler dev's local email endpoint, as Email Routing hands
    mail to the Worker (the handler's decision shows in the outbox or the refusals)."""
    import httpx

    assert target.local_email is not None
    sender = email.utils.parseaddr(str(msg["From"]))[1]
    to = email.utils.parseaddr(str(msg["To"]))[1]
    try:
        response = httpx.post(
            target.local_email,
            params={"from": sender, "to": to},
            content=msg.as_bytes(policy=SMTP),
            timeout=60,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        raise MailCliError(
            f"Cannot reach wrangler dev at {target.local_email}: {exc}. Is `kit dev --target "
            "cloudflare` running?"
        ) from None
    if response.status_code != 200:
        raise MailCliError(
            f"The Worker refused the message ({response.status_code}): {response.text[:200]}"
        )
    return "handed to the Worker's email() handler"


def _newest_reply_to(target: MailTarget, sender: str) -> dict[str, Any] | None:
    items = call(target.control, "GET", "/mail/outbox?limit=500")["items"]
    addr = email.utils.parseaddr(sender)[1].lower()  # --from may carry a name
    for item in items:
        if str(item["to"]).lower() == addr:
            return dict(item)
    return None


def _wait_for_answer(target: MailTarget, message_id: str, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for item in call(target.control, "GET", "/mail/outbox?limit=500")["items"]:
            if item["in_reply_to"] == message_id:
                console.out(f"answer in session {item['session_id']}:\n\n{item['text']}")
                return 0
        for item in call(target.control, "GET", "/mail/refused?limit=500")["items"]:
            if item["message_id"] == message_id:
                console.out(f"not answered: {item['detail']} ({item['reason']})")
                return 1
        time.sleep(WAIT_POLL_S)
    raise MailCliError(
        f"No answer within {wait_s:g} s; it will appear in `kit mail outbox` when the turn ends."
    )


def outbox(target: MailTarget, *, refused: bool, limit: int, as_json: bool) -> int:
    path = "/mail/refused" if refused else "/mail/outbox"
    answer = call(target.control, "GET", f"{path}?limit={limit}")
    items: list[dict[str, Any]] = answer["items"]
    if as_json:
        console.out(json.dumps(items))
        return 0
    if not items:
        console.out("No mail refused." if refused else f"No replies yet. Mail {answer['address']}.")
        return 0
    for item in items:
        when = time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(item.get("at") or item.get("created_at"))
        )
        if refused:
            console.out(f"{when}  {item['sender']}  {item['subject']!r}  {item['detail']}")
        else:
            first = str(item["text"]).strip().splitlines()[0] if item["text"] else ""
            console.out(
                f"{when}  to {item['to']}  {item['subject']!r}  session {item['session_id']}\n"
                f"    {first[:100]}"
            )
    return 0
