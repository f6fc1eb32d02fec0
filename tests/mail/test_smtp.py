"""kit dev's SMTP server refuses, at the SMTP level, what it must: no login, a wrong
password, another recipient, mail it cannot read; and stores nothing for them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from kit.mail.channel import MailChannel
from kit.mail.rules import Agent
from kit.mail.smtp import port_of, serve_smtp
from kit.mail.store import SqliteMailStore

TOKEN = "kit-api-test-token"
MAIL = b"From: alice@example.org\r\nTo: agent@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
async def smtp(tmp_path: Path) -> AsyncIterator[tuple[int, SqliteMailStore]]:
    store = SqliteMailStore(tmp_path / "mail.sqlite")
    # Nothing here reaches the host: every case is refused before a session is made.
    channel = MailChannel(store, Agent("agent@example.com"), "http://127.0.0.1:9", TOKEN)
    server = await serve_smtp(channel, TOKEN, port=0)
    yield port_of(server), store
    server.close()
    await server.wait_closed()
    await channel.close()
    store.close()


async def _client(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
    await client.connect()
    return client


async def _nothing_stored(store: SqliteMailStore) -> None:
    assert await store.pending() == []
    assert await store.outbox(10) == []
    assert await store.refused(10) == []


async def test_mail_without_login_is_refused(smtp: tuple[int, SqliteMailStore]) -> None:
    port, store = smtp
    client = await _client(port)
    with pytest.raises(aiosmtplib.SMTPResponseException) as err:
        await client.sendmail("alice@example.org", ["agent@example.com"], MAIL)
    assert err.value.code == 530
    await client.quit()
    await _nothing_stored(store)


async def test_a_wrong_password_is_refused(smtp: tuple[int, SqliteMailStore]) -> None:
    port, store = smtp
    client = await _client(port)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
        await client.login("alice", "kit-api-wrong")
    assert err.value.code == 535
    await client.quit()
    await _nothing_stored(store)


async def test_another_recipient_is_refused(smtp: tuple[int, SqliteMailStore]) -> None:
    port, store = smtp
    client = await _client(port)
    await client.login("alice", TOKEN)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as err:
        await client.sendmail("alice@example.org", ["bob@example.net"], MAIL)
    assert err.value.recipients[0].code == 550
    assert "takes mail for agent@example.com only" in err.value.recipients[0].message
    await client.quit()
    await _nothing_stored(store)


async def test_mail_without_a_message_id_is_refused_with_the_reason(
    smtp: tuple[int, SqliteMailStore],
) -> None:
    port, store = smtp
    client = await _client(port)
    await client.login("alice", TOKEN)
    with pytest.raises(aiosmtplib.SMTPDataError) as err:
        await client.sendmail("alice@example.org", ["agent@example.com"], MAIL)
    assert err.value.code == 554
    assert "no Message-ID" in err.value.message
    await client.quit()
    await _nothing_stored(store)
