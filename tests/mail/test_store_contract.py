"""The MailStore contract, run against every backend: SQLite (kit dev) and S3 (Fly, on moto's
server). Two stores opened on the same state stand for two gateways, or one gateway before
and after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

import kit.mail.s3store
import kit.mail.store
from kit.mail.rules import Thread
from kit.mail.s3store import S3MailStore
from kit.mail.store import InboundRecord, MailStore, OutboxEntry, Refused, SqliteMailStore
from kit.storage.s3 import unique_prefix
from kit.storage.s3io import S3Bucket
from tests.conftest import BUCKET

Opener = Callable[[], MailStore]


@pytest.fixture(params=["sqlite", "s3"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another store on the same state each time it is called."""
    opened: list[SqliteMailStore] = []
    if request.param == "sqlite":

        def sqlite() -> MailStore:
            opened.append(SqliteMailStore(tmp_path / "mail.sqlite"))
            return opened[-1]

        yield sqlite
        for store in opened:
            store.close()
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = unique_prefix() + "mail"

    def s3() -> MailStore:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        return S3MailStore(S3Bucket(client, BUCKET, prefix))

    yield s3


def _record(n: int, session_id: str = "s-1", token: str = "tok1tok1tok1tok1") -> InboundRecord:
    return InboundRecord(
        message_id=f"m{n}@example.org",
        session_id=session_id,
        client_msg_id=f"mail-{n}",
        text=f"message {n}",
        sender="alice@example.org",
        sender_name="Alice",
        subject="Hello",
        in_reply_to=(f"m{n - 1}@example.org",) if n > 1 else (),
        references=("m1@example.org",) if n > 1 else (),
        token=token,
        received_at=1_800_000_000.0 + n,
    )


def _entry(record: InboundRecord, *, sent: bool = False, at: float | None = None) -> OutboxEntry:
    created = at if at is not None else record.received_at + 0.5
    return OutboxEntry(
        inbound_id=record.message_id,
        session_id=record.session_id,
        sender="agent+" + record.token + "@example.com",
        to=record.sender,
        subject="Re: " + record.subject,
        message_id="kit-" + record.message_id.replace("@", "-") + "@example.com",
        text="You said: " + record.text,
        raw=b"From: agent@example.com\r\n\r\nYou said\r\n",
        created_at=created,
        sent_at=created if sent else None,
    )


THREAD = Thread("s-1", "tok1tok1tok1tok1", ("alice@example.org",))


async def test_a_message_is_taken_once(open_store: Opener) -> None:
    """The second take of a Message-ID is False and changes nothing; seen() says so."""
    store = open_store()
    first = _record(1)
    assert not await store.seen(first.message_id)
    assert await store.take(first, THREAD, "session-token-1")
    again = InboundRecord(**{**first.__dict__, "text": "changed"})
    assert not await store.take(again, THREAD, "session-token-2")
    assert await store.seen(first.message_id)
    assert [r.text for r in await store.pending()] == ["message 1"]
    assert await store.session_token("s-1") == "session-token-1"


async def test_a_thread_is_found_by_token_and_by_ids(open_store: Opener) -> None:
    """A new thread is found by its token, by the inbound id and, once answered, by the
    reply's id; its reply count follows the replies."""
    store = open_store()
    first = _record(1)
    await store.take(first, THREAD, "session-token-1")
    by_token = await store.thread_by_token(THREAD.token)
    assert by_token == THREAD
    assert await store.thread_by_token("unknownunknown00") is None
    assert await store.thread_by_ids(["nope@x", first.message_id]) == THREAD
    entry = _entry(first)
    assert await store.reply(entry)
    found = await store.thread_by_ids([entry.message_id])
    assert found is not None
    assert (found.session_id, found.replies) == ("s-1", 1)
    second = _record(2)
    assert await store.take(second, found, None)  # a thread that exists: no session token
    assert await store.session_token("s-1") == "session-token-1"
    assert await store.reply(_entry(second))
    again = await store.thread_by_token(THREAD.token)
    assert again is not None
    assert again.replies == 2


async def test_pending_until_replied_oldest_first(open_store: Opener) -> None:
    """Taken messages without a reply are pending, oldest first, also for another store
    opened on the same state (a restarted gateway)."""
    store = open_store()
    for n in (2, 1, 3):
        await store.take(_record(n), THREAD, "session-token-1" if n == 2 else None)
    assert [r.message_id for r in await store.pending()] == [
        "m1@example.org",
        "m2@example.org",
        "m3@example.org",
    ]
    assert await store.reply(_entry(_record(2)))
    restarted = open_store()
    pending = await restarted.pending()
    assert [r.message_id for r in pending] == ["m1@example.org", "m3@example.org"]
    assert pending[1] == _record(3)


async def test_a_message_is_answered_once(open_store: Opener) -> None:
    """The second reply to a message is False and changes nothing: the outbox holds the
    first, and the thread counts one reply."""
    store = open_store()
    record = _record(1)
    await store.take(record, THREAD, "session-token-1")
    first = _entry(record)
    assert await store.reply(first)
    other = OutboxEntry(**{**first.__dict__, "text": "a second answer", "created_at": 1.0})
    assert not await store.reply(other)
    assert [e.text for e in await store.outbox(10)] == [first.text]
    thread = await store.thread_by_token(THREAD.token)
    assert thread is not None
    assert thread.replies == 1


async def test_two_gateways_race(open_store: Opener) -> None:
    """Two stores on the same state take the same message and reply to it at the same
    time: exactly one of each wins."""
    a, b = open_store(), open_store()
    record = _record(1)
    other = Thread("s-2", "tok2tok2tok2tok2", ("alice@example.org",))
    took = await asyncio.gather(
        a.take(record, THREAD, "session-token-1"),
        b.take(InboundRecord(**{**record.__dict__, "session_id": "s-2"}), other, "session-token-2"),
    )
    assert sorted(took) == [False, True]
    winner = (await a.pending())[0]
    replied = await asyncio.gather(a.reply(_entry(winner)), b.reply(_entry(winner)))
    assert sorted(replied) == [False, True]
    assert len(await a.outbox(10)) == len(await b.outbox(10)) == 1
    assert await a.pending() == await b.pending() == []
    assert await a.thread_by_ids([record.message_id]) == await b.thread_by_ids([record.message_id])


async def test_unsent_until_marked_sent(open_store: Opener) -> None:
    """A reply made without a relay's word is unsent (oldest first) until mark_sent; the
    outbox then shows when it left. A reply written as sent is never unsent."""
    store = open_store()
    records = [_record(n) for n in (1, 2, 3)]
    for r in records:
        await store.take(r, THREAD, "session-token-1" if r is records[0] else None)
    await store.reply(_entry(records[1]))
    await store.reply(_entry(records[0]))
    await store.reply(_entry(records[2], sent=True))
    assert [e.inbound_id for e in await store.unsent()] == ["m1@example.org", "m2@example.org"]
    await store.mark_sent("m1@example.org", 1_900_000_000.0)
    await store.mark_sent("m1@example.org", 1_900_000_999.0)  # a second mark changes nothing
    assert [e.inbound_id for e in await open_store().unsent()] == ["m2@example.org"]
    by_id = {e.inbound_id: e for e in await store.outbox(10)}
    assert by_id["m1@example.org"].sent_at == 1_900_000_000.0
    assert by_id["m2@example.org"].sent_at is None
    assert by_id["m1@example.org"].raw == _entry(records[0]).raw


async def test_outbox_newest_first(open_store: Opener) -> None:
    """The outbox lists the newest ``limit`` replies, newest first."""
    store = open_store()
    for n in range(1, 6):
        record = _record(n)
        await store.take(record, THREAD, "session-token-1" if n == 1 else None)
        await store.reply(_entry(record, at=1_800_000_100.0 + n))
    assert [e.inbound_id for e in await store.outbox(3)] == [
        "m5@example.org",
        "m4@example.org",
        "m3@example.org",
    ]


async def test_refusals_newest_first_and_capped(
    open_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusals list newest first; only the newest MAX_REFUSED_KEPT are kept."""
    monkeypatch.setattr(kit.mail.store, "MAX_REFUSED_KEPT", 3)
    monkeypatch.setattr(kit.mail.s3store, "MAX_REFUSED_KEPT", 3)
    store = open_store()
    for n in range(5):
        await store.refuse(
            Refused(f"r{n}@x", "bot@x", "Out of office", "auto_submitted", "machine", 100.0 + n)
        )
    assert [r.message_id for r in await store.refused(10)] == ["r4@x", "r3@x", "r2@x"]
    assert [r.message_id for r in await store.refused(1)] == ["r4@x"]
    assert (await store.refused(1))[0].reason == "auto_submitted"
