"""Hostile and odd mail against the channel's own code: what reaches a reply on the wire,
what is refused, and what the host's event loop is spared. (Routing of ambiguous senders
is in ``golden/route.jsonl``, shared with the shim.)"""

from __future__ import annotations

import asyncio
import email
import email.policy
import stat
from email.message import EmailMessage
from pathlib import Path

import pytest

from kit.mail.channel import MailChannel
from kit.mail.compose import compose_reply
from kit.mail.message import MailError, message_ids, parse
from kit.mail.rules import MAX_REFERENCES, Agent, thread_ids
from kit.mail.store import SqliteMailStore
from kit.mail.text import turn_text

AGENT = Agent("agent@example.com", "Acme Support")
OUTLOOK_ID = "BY5PR11MB4243D0A3C5D6E2F1B3A4B9F4C8A2912345@BY5PR11MB4243.namprd11.prod.outlook.com"
"""The length of id Outlook writes (85 characters): longer than a folded header line."""


def _mail(headers: str, body: str = "Hello.") -> bytes:
    return (
        "From: Alice <alice@example.org>\r\nTo: agent@example.com\r\n" + headers + "\r\n" + body
    ).encode()


def _wire(reply: EmailMessage) -> list[str]:
    """The reply's header lines as they go out, unfolded."""
    head = bytes(reply).split(b"\r\n\r\n", 1)[0].decode("ascii")
    return head.replace("\r\n ", " ").split("\r\n")


def test_long_ids_go_out_as_ids_not_encoded_words() -> None:
    """An Outlook-length Message-ID and 150 References: the reply's In-Reply-To and
    References carry the ids themselves on the wire (mail clients thread on them), folded
    between ids, every line within RFC 5322's 998 characters."""
    refs = " ".join(f"<r{n:03d}.{OUTLOOK_ID}>" for n in range(150))
    msg = parse(_mail(f"Message-ID: <{OUTLOOK_ID}>\r\nReferences: {refs}\r\nSubject: Hi\r\n"))
    reply = compose_reply(msg, AGENT, "tok", "An answer.")
    lines = _wire(reply)
    assert f"In-Reply-To: <{OUTLOOK_ID}>" in lines
    (references,) = [line for line in lines if line.startswith("References: ")]
    ids = references.removeprefix("References: ").split(" ")
    assert len(ids) == 100
    assert ids[0] == f"<r000.{OUTLOOK_ID}>"
    assert ids[-1] == f"<{OUTLOOK_ID}>"
    raw = bytes(reply)
    assert b"=?" not in raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    back = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(back["In-Reply-To"]) == f"<{OUTLOOK_ID}>"


def test_a_line_break_in_a_stored_subject_or_name_adds_no_header() -> None:
    """A message taken before kit cleaned its headers (a pending record of an older kit)
    with CR/LF and NUL in its Subject and name: the reply composes, each on one line."""
    msg = parse(_mail("Message-ID: <m1@example.org>\r\nSubject: Hi\r\n"))
    msg = type(msg)(**{**msg.__dict__, "subject": "Hi\r\nBcc: x@evil.test", "sender_name": "A\0b"})
    lines = _wire(compose_reply(msg, AGENT, "tok", "An answer."))
    assert "Subject: Re: Hi Bcc: x@evil.test" in lines
    assert "To: A b <alice@example.org>" in lines
    assert not any(line.startswith("Bcc:") for line in lines)


def test_eight_bit_and_control_bytes_in_headers_compose() -> None:
    """Raw 8-bit bytes in the name and Subject (no encoded words), NUL in the Subject: the
    turn reads one line each, and the reply composes."""
    raw = (
        b"From: Ren\xe9e <renee@example.org>\r\nTo: agent@example.com\r\n"
        b"Message-ID: <m1@example.org>\r\nSubject: caf\xe9\x00menu\r\n\r\nHello.\r\n"
    )
    msg = parse(raw)
    assert (msg.sender, msg.sender_name, msg.subject) == (
        "renee@example.org",
        "Ren\ufffde",
        "caf\ufffd menu",
    )
    lines = _wire(compose_reply(msg, AGENT, "tok", "An answer."))
    assert any(line.startswith("To: ") and "<renee@example.org>" in line for line in lines)


def test_utf8_headers_reach_the_turn_as_text() -> None:
    """Internationalized mail (RFC 6532: raw UTF-8 in the name, Subject and an attachment's
    file name): the turn's text is UTF-8 through and through (a lone surrogate made the
    session refuse the turn, retried forever); a non-ASCII address gets no reply."""
    raw = (
        "From: Jürgen <juergen@example.org>\r\nTo: agent@example.com\r\n"
        "Message-ID: <m1@example.org>\r\nSubject: Grüße\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHallo.\r\n--b\r\n"
        "Content-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="Bestätigung.pdf"\r\n\r\n%PDF\r\n--b--\r\n'
    ).encode()
    text = turn_text(parse(raw))
    text.encode("utf-8")  # no lone surrogates
    assert text.startswith("Email from Jürgen <juergen@example.org>\nSubject: Grüße\n\nHallo.")
    assert "- Bestätigung.pdf (application/pdf" in text
    assert parse(raw.replace(b"<juergen@", "<jürgen@".encode())).sender == ""


def test_deeply_nested_parts_are_a_mail_error() -> None:
    """A thousand nested multiparts: a MailError naming the problem (the SMTP server
    answers 554 with it), not a RecursionError."""
    body = ""
    for n in range(1000):
        body += f"Content-Type: multipart/mixed; boundary=b{n}\r\n\r\n--b{n}\r\n"
    body += "Content-Type: text/plain\r\n\r\nhello\r\n"
    for n in reversed(range(1000)):
        body += f"--b{n}--\r\n"
    raw = (
        _mail("Message-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\n", "").replace(
            b"\r\n\r\n", b"\r\n"
        )
        + body.encode()
    )
    with pytest.raises(MailError, match="nested too deeply"):
        parse(raw)


def test_a_thread_is_looked_up_among_the_nearest_ids_only() -> None:
    """References with 100,000 ids: kit looks for the thread among In-Reply-To and the
    newest References (each id is a store lookup), as many as its replies carry."""
    refs = " ".join(f"<r{n}@example.org>" for n in range(100_000))
    msg = parse(
        _mail(f"Message-ID: <m1@example.org>\r\nIn-Reply-To: <p@x>\r\nReferences: {refs}\r\n")
    )
    assert len(msg.references) == 100_000
    ids = thread_ids(msg)
    assert len(ids) == MAX_REFERENCES + 1
    assert ids[:3] == ["p@x", "r99999@example.org", "r99998@example.org"]


@pytest.mark.parametrize(
    "value",
    [
        "<a b@example.org>",
        "<a\x00b@example.org>",
        "<caf\u00e9@example.org>",
        "<" + "a" * 900 + "@example.org>",
    ],
    ids=["space", "NUL", "non-ASCII", "too long"],
)
def test_what_is_no_message_id(value: str) -> None:
    """Ids that could not be written back on the wire as they came are no ids."""
    assert message_ids(value) == ()
    assert message_ids(f"<ok@example.org> {value}") == ("ok@example.org",)


async def test_mail_is_read_off_the_event_loop(kit_tmp: Path) -> None:
    """The host's loop serves every session while a message is parsed (25 MB of MIME takes
    a while): a task scheduled before ``receive`` runs before it returns, even for mail
    refused without any other wait."""
    store = SqliteMailStore(kit_tmp / "mail.sqlite")
    channel = MailChannel(store, AGENT, "http://127.0.0.1:9", "unused")
    order: list[str] = []

    async def tick() -> None:
        order.append("the loop ran")

    task = asyncio.create_task(tick())
    raw = _mail("Message-ID: <m1@example.org>\r\nAuto-Submitted: auto-replied\r\n")
    receipt = await channel.receive(raw, envelope_from="alice@example.org")
    order.append("received")
    await task
    store.close()
    assert receipt.reason == "auto_submitted"
    assert order == ["the loop ran", "received"]


def test_the_mail_store_is_private(kit_tmp: Path) -> None:
    """mail.sqlite holds every thread's session token: 0600, like the session stores."""
    path = kit_tmp / "mail.sqlite"
    SqliteMailStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
