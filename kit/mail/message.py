"""Raw RFC 5322 mail → :class:`Inbound`, the one form every mail source is reduced to."""

from __future__ import annotations

import contextlib
import email
import email.errors
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from email.message import EmailMessage

from kit.mail.errors import MailChannelError

MAX_INBOUND_BYTES = 25 * 1024 * 1024
"""Largest raw message accepted (Cloudflare Email Routing's inbound limit)."""

MAX_ID_CHARS = 900
"""Longest message id kit takes (a longer one could not be written on one line of a reply's
``In-Reply-To``, RFC 5322's 998)."""

_MSGID = re.compile(rf"<([\x21-\x3b\x3d\x3f-\x7e]{{1,{MAX_ID_CHARS}}})>")
"""A message id: printable ASCII without ``<``/``>``, as written on the wire (RFC 5322)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_HEADER_ERRORS = (ValueError, TypeError, IndexError, AttributeError, email.errors.MessageError)
"""What the email package raises for a header it cannot read."""
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})
MAX_DECODED_CHARS = 16_384
"""A longer header keeps its encoded words as they came."""


class MailError(MailChannelError):
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
    """The ids in a ``Message-ID``/``In-Reply-To``/``References`` value, brackets removed
    (an id with spaces, control or non-ASCII characters, or longer than
    :data:`MAX_ID_CHARS`, is no id)."""
    if not value:
        return ()
    return tuple(dict.fromkeys(_MSGID.findall(value)))


def one_line(value: str) -> str:
    """``value`` with every run of control characters (CR, LF, NUL, tab...) a single space
    and undecodable bytes (8-bit headers) as U+FFFD: what reaches a reply's header or the
    turn's first lines cannot add a line."""
    return _CONTROL.sub(" ", utf8(value)).strip()


def utf8(value: str) -> str:
    """``value`` with the raw bytes the parser kept as surrogates (8-bit headers, RFC 6532)
    read as UTF-8, U+FFFD where they are not: text a client and a JSON frame can carry."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return value.encode("utf-8", "replace").decode("utf-8")


def address(value: str | None) -> tuple[str, str]:
    """``(name, address)`` of a single-address header value as written on the wire (encoded
    words in the name decoded), the address lower-cased.

    ``("", "")`` unless the value holds exactly one ASCII address and reads one way only:
    in ``alice@example.org <mallory@evil.test>`` or ``=?utf-8?q?alice=40example.org?=``
    mail software disagrees on who the sender is (and DMARC may have checked another), so
    kit takes neither.
    """
    if not value:
        return "", ""
    try:
        header = email.policy.default.header_fetch_parse("From", value)
        addresses = header.addresses
    except _HEADER_ERRORS:
        return "", ""
    if len(addresses) != 1 or any(
        isinstance(d, email.errors.InvalidHeaderDefect) for d in header.defects
    ):
        return "", ""
    spec = addresses[0].addr_spec
    if "@" not in spec or spec.lower() not in value.lower():  # an encoded word made it
        return "", ""
    if not spec.isascii():  # RFC 6532: the email package cannot write a reply to it
        return "", ""
    return one_line(addresses[0].display_name), spec.strip().lower()


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
    try:
        return _parse(raw, envelope_from, envelope_to)
    except RecursionError:
        raise MailError(
            "The message's MIME parts are nested too deeply for kit to read; send it with "
            "fewer nested parts."
        ) from None


def _parse(raw: bytes, envelope_from: str | None, envelope_to: list[str] | None) -> Inbound:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    headers: dict[str, str] = {}
    froms: list[str] = []
    for name, undecoded in msg.raw_items():
        raw_value = utf8(str(undecoded))  # 8-bit header bytes are UTF-8 (RFC 6532)
        key = name.lower()
        if key == "from":
            froms.append(raw_value)
        if key in headers:
            continue
        # Decoded (RFC 2047 encoded words) one header at a time: msg[name] would search
        # every header for each, quadratic in their number. Ids are never encoded, and the
        # decoder is superlinear in a header's length (800,000 References took minutes):
        # those, and one that fails, stay raw.
        value = raw_value
        if key not in _ID_HEADERS and len(raw_value) <= MAX_DECODED_CHARS:
            with contextlib.suppress(*_HEADER_ERRORS):
                value = str(msg.policy.header_fetch_parse(name, raw_value))
        headers[key] = one_line(_unfold(value))
    ids = message_ids(headers.get("message-id"))
    if not ids:
        raise MailError(
            "The message has no Message-ID header kit can use (one <id> of printable ASCII, "
            f"at most {MAX_ID_CHARS} characters); kit needs one to thread replies."
        )
    # Two From headers, or one kit reads two ways: no sender (refused as malformed).
    name, sender = address(froms[0]) if len(froms) == 1 else ("", "")
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
            name = one_line(filename or "") or "attachment"
            attachments.append(Attachment(name, ctype, len(data), data))
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
