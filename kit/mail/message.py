"""Raw RFC 5322 mail → :class:`Inbound`, the one form every mail source is reduced to."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from email.message import EmailMessage

MAX_INBOUND_BYTES = 25 * 1024 * 1024
"""Largest raw message accepted (Cloudflare Email Routing's inbound limit)."""

_MSGID = re.compile(r"<([^<>\s]+)>")


class MailError(ValueError):
    """Mail that cannot be taken: the message says why and what to change."""


@dataclass(frozen=True)
class Attachment:
    """A part of the message meant as a file."""

    filename: str
    content_type: str
    size: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Inbound:
    """What kit reads of one inbound message."""

    message_id: str
    """Without angle brackets."""
    sender: str
    """The ``From`` address, lower-cased (``""`` when there is none)."""
    sender_name: str
    recipients: tuple[str, ...]
    """Envelope recipients when the source gives them, else ``To`` and ``Cc``; lower-cased."""
    return_path: str | None
    """The envelope sender (``""``: the null path ``<>``; None: unknown)."""
    subject: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    headers: dict[str, str]
    """Every header, names lower-cased; a repeated header keeps its first value."""
    text: str
    """The plain-text body (HTML reduced to text when there is no plain part)."""
    attachments: tuple[Attachment, ...] = ()


def message_ids(value: str | None) -> tuple[str, ...]:
    """The ids in a ``Message-ID``/``In-Reply-To``/``References`` value, brackets removed."""
    if not value:
        return ()
    return tuple(dict.fromkeys(_MSGID.findall(value)))


def address(value: str | None) -> tuple[str, str]:
    """``(name, address)`` of a single-address header value, address lower-cased."""
    if not value:
        return "", ""
    name, addr = email.utils.parseaddr(str(value))
    if "@" not in addr:
        return name, ""
    return name, addr.strip().lower()


def parse(
    raw: bytes, *, envelope_from: str | None = None, envelope_to: list[str] | None = None
) -> Inbound:
    """Parse ``raw``; raises :class:`MailError` for mail kit cannot thread (too large, no
    ``Message-ID``)."""
    if len(raw) > MAX_INBOUND_BYTES:
        raise MailError(
            f"The message is {len(raw)} bytes; kit takes at most {MAX_INBOUND_BYTES} "
            "(send large files as links)."
        )
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    headers: dict[str, str] = {}
    for name, raw_value in msg.raw_items():
        if name.lower() in headers:
            continue
        try:  # decoded (RFC 2047 encoded words); a header the parser chokes on stays raw
            value = str(msg[name])
        except (ValueError, TypeError, IndexError):
            value = str(raw_value)
        headers[name.lower()] = _unfold(value)
    ids = message_ids(headers.get("message-id"))
    if not ids:
        raise MailError("The message has no Message-ID header; kit needs one to thread replies.")
    name, sender = address(headers.get("from"))
    if envelope_to:
        recipients = tuple(dict.fromkeys(a.strip().lower() for a in envelope_to if a.strip()))
    else:
        found = email.utils.getaddresses([headers.get("to", ""), headers.get("cc", "")])
        recipients = tuple(dict.fromkeys(a.lower() for _, a in found if "@" in a))
    if envelope_from is not None:
        return_path: str | None = envelope_from.strip().strip("<>").lower()
    elif "return-path" in headers:
        return_path = headers["return-path"].strip().strip("<>").strip().lower()
    else:
        return_path = None
    text, attachments = _body(msg)
    return Inbound(
        message_id=ids[0],
        sender=sender,
        sender_name=name,
        recipients=recipients,
        return_path=return_path,
        subject=headers.get("subject", ""),
        in_reply_to=message_ids(headers.get("in-reply-to")),
        references=message_ids(headers.get("references")),
        headers=headers,
        text=text,
        attachments=tuple(attachments),
    )


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value).strip()


def _body(msg: EmailMessage) -> tuple[str, list[Attachment]]:
    plain: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        ctype = part.get_content_type()
        if (
            disposition == "attachment"
            or (filename and disposition != "inline")
            or (filename and not ctype.startswith("text/"))
        ):
            data = part.get_payload(decode=True) or b""
            assert isinstance(data, bytes)
            attachments.append(Attachment(filename or "attachment", ctype, len(data), data))
            continue
        if ctype == "text/plain" and plain is None:
            plain = _text_of(part)
        elif ctype == "text/html" and html is None:
            html = _text_of(part)
    if plain is not None:
        return _lines(plain), attachments
    if html is not None:
        return _lines(html_to_text(html)), attachments
    return "", attachments


def _text_of(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # an unknown charset: take the bytes as UTF-8
        data = part.get_payload(decode=True) or b""
        assert isinstance(data, bytes)
        content = data.decode("utf-8", "replace")
    return str(content)


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


_TAG = re.compile(r"<[^>]*>")
_BLOCK = re.compile(r"<\s*(br|/p|/div|/li|/tr|/h[1-6])\b[^>]*>", re.I)
_DROP = re.compile(r"<\s*(script|style|head)\b.*?<\s*/\s*\1\s*>", re.I | re.S)
_QUOTE_BLOCK = re.compile(r"<\s*blockquote\b.*?<\s*/\s*blockquote\s*>", re.I | re.S)


def html_to_text(html: str) -> str:
    """A plain reading of an HTML body: blocks become lines, quoted blocks are dropped."""
    import html as html_lib

    text = _DROP.sub("", html)
    text = _QUOTE_BLOCK.sub("", text)
    text = _BLOCK.sub("\n", text)
    text = _TAG.sub("", text)
    text = html_lib.unescape(text)
    return "\n".join(line.strip() for line in text.splitlines()).strip()
