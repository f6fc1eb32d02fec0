"""SMTP out: a reply handed to a relay (an aiosmtpd server on loopback, in the test's event
loop) arrives as composed, envelope and threading headers included; the relay URL is read
strictly and never shows its password."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiosmtplib
import pytest

from kit.cli.relaysink import RelaySink
from kit.mail.compose import compose_reply
from kit.mail.message import Inbound
from kit.mail.relay import Relay, RelayError, parse_relay
from kit.mail.rules import Agent
from kit.mail.store import OutboxEntry


@pytest.fixture
async def sink() -> AsyncIterator[tuple[RelaySink, int]]:
    relay = RelaySink("kit", "relay-password")
    server = await asyncio.get_running_loop().create_server(relay.protocol, "127.0.0.1", 0)
    try:
        yield relay, int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def _entry() -> OutboxEntry:
    agent = Agent("agent@example.com", "Agent")
    msg = Inbound(
        message_id="m2@example.org",
        sender="alice@example.org",
        sender_name="Alice",
        recipients=(),
        return_path=None,
        subject="Re: Hello",
        in_reply_to=("kit-1@example.com",),
        references=("m1@example.org", "kit-1@example.com"),
        headers={},
        text="",
    )
    raw = bytes(compose_reply(msg, agent, "tok1tok1tok1tok1", "You said: again"))
    return OutboxEntry(
        "m2@example.org",
        "s-1",
        agent.with_token("tok1tok1tok1tok1"),
        "alice@example.org",
        "Re: Hello",
        "kit-2@example.com",
        "You said: again",
        raw,
        1.0,
    )


async def test_a_reply_reaches_the_relay(sink: tuple[RelaySink, int]) -> None:
    """Logged in with the URL's user and password: the relay gets the reply from the
    thread's plus address to the sender, with its threading headers and text."""
    relay, port = sink
    await parse_relay(f"smtp://kit:relay-password@127.0.0.1:{port}").deliver(_entry())
    (got,) = relay.received
    assert (got.mail_from, got.rcpt_tos) == (
        "agent+tok1tok1tok1tok1@example.com",
        ("alice@example.org",),
    )
    msg = got.message
    assert msg["In-Reply-To"] == "<m2@example.org>"
    assert msg["References"] == "<m1@example.org> <kit-1@example.com> <m2@example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert got.text.strip() == "You said: again"


async def test_the_relay_refusing_raises(sink: tuple[RelaySink, int]) -> None:
    """A wrong password, or STARTTLS required by a relay that offers none: deliver raises
    (the channel tries again later) and nothing is relayed."""
    relay, port = sink
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await parse_relay(f"smtp://kit:wrong@127.0.0.1:{port}").deliver(_entry())
    required = Relay("127.0.0.1", port, implicit_tls=False, starttls=True, username="kit")
    with pytest.raises(aiosmtplib.SMTPException, match="STARTTLS"):
        await required.deliver(_entry())
    assert relay.received == []


def test_relay_urls() -> None:
    """smtp:// is STARTTLS (required off loopback), smtps:// TLS, ?tls=none plain; the
    password is percent-decoded and never shown."""
    far = parse_relay("smtp://u%40x:p%2Fw@smtp.example.com")
    assert (far.host, far.port, far.starttls, far.implicit_tls) == (
        "smtp.example.com",
        587,
        True,
        False,
    )
    assert (far.username, far.password) == ("u@x", "p/w")
    assert "p/w" not in repr(far)
    assert "p/w" not in far.describe()
    assert parse_relay("smtp://127.0.0.1:2525").starttls is None
    tls = parse_relay("smtps://u:p@smtp.example.com")
    assert (tls.port, tls.implicit_tls, tls.starttls) == (465, True, False)
    plain = parse_relay("smtp://relay.internal:25?tls=none")
    assert (plain.starttls, plain.implicit_tls) == (False, False)
    for bad in (
        "http://u:secretpw@smtp.example.com",
        "smtp://",
        "smtp://h?tls=maybe",
        "smtps://h?tls=none",
        "smtp://h:port",
    ):
        with pytest.raises(RelayError) as caught:
            parse_relay(bad)
        assert "secretpw" not in str(caught.value)
