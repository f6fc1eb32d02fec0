"""Where the email channel keeps its threads, the mail it took, its replies and refusals.

:class:`MailStore` is the seam; :class:`SqliteMailStore` backs ``kit dev`` (a file in the
state directory). Each inbound Message-ID is taken at most once (:meth:`MailStore.take`) and
answered at most once (:meth:`MailStore.reply` writes the outbox row only if there is none):
with the session host's ``client_msg_id`` de-duplication this gives one turn and one reply
per inbound message, across restarts.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kit.mail.rules import Thread
from kit.private import private_sqlite

MAX_REFUSED_KEPT = 1000
"""Refusals kept for ``kit mail outbox --refused`` (the oldest go first)."""
MAX_THREADS_LISTED = 50
"""Threads :meth:`SqliteMailStore.threads` lists at most (the chat page's Email list)."""


@dataclass(frozen=True)
class InboundRecord:
    """An inbound message kit took: enough to run its turn and compose its reply."""

    message_id: str
    session_id: str
    client_msg_id: str
    text: str
    """The turn's text."""
    sender: str
    sender_name: str
    subject: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    token: str
    """The thread's plus-address token (replies come from ``local+token@domain``)."""
    received_at: float


@dataclass(frozen=True)
class OutboxEntry:
    """A reply kit composed (``sent_at``: when it left; None: not yet handed to a relay)."""

    inbound_id: str
    session_id: str
    sender: str
    """The reply's ``From`` address (the thread's plus address)."""
    to: str
    subject: str
    message_id: str
    text: str
    raw: bytes
    created_at: float
    sent_at: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "in_reply_to": self.inbound_id,
            "session_id": self.session_id,
            "from": self.sender,
            "to": self.to,
            "subject": self.subject,
            "message_id": self.message_id,
            "text": self.text,
            "created_at": self.created_at,
            "sent_at": self.sent_at,
        }


@dataclass(frozen=True)
class ThreadSummary:
    """A thread as the chat page lists it (``kit dev``: :meth:`SqliteMailStore.threads`)."""

    session_id: str
    session_token: str
    """The token that joins the thread's session: for the host's own page only."""
    participants: tuple[str, ...]
    subject: str
    """The subject of the thread's first message ("" when it had none)."""
    messages: int
    """Mails in the thread both ways: the messages taken and the replies written."""
    last_at: float
    """When the newest of them was taken or written (epoch seconds)."""


@dataclass(frozen=True)
class Refused:
    """An inbound message kit did not answer, and why."""

    message_id: str
    sender: str
    subject: str
    reason: str
    detail: str
    at: float

    def to_json(self) -> dict[str, object]:
        return {
            "message_id": self.message_id,
            "sender": self.sender,
            "subject": self.subject,
            "reason": self.reason,
            "detail": self.detail,
            "at": self.at,
        }


class MailStore(Protocol):
    """The email channel's durable state."""

    async def seen(self, message_id: str) -> bool:
        """Whether an inbound message with this id was taken."""
        ...

    async def thread_by_token(self, token: str) -> Thread | None: ...

    async def thread_by_ids(self, ids: list[str]) -> Thread | None:
        """The thread of the first of ``ids`` kit knows (inbound ids and its replies')."""
        ...

    async def session_token(self, session_id: str) -> str | None:
        """The session token the channel uses to join the thread's session."""
        ...

    async def take(self, record: InboundRecord, thread: Thread, session_token: str | None) -> bool:
        """Record ``record`` as taken for ``thread`` (a new thread when ``session_token`` is
        given). False, changing nothing, when its Message-ID was taken already."""
        ...

    async def pending(self) -> list[InboundRecord]:
        """Taken messages without a reply yet, oldest first."""
        ...

    async def reply(self, entry: OutboxEntry) -> bool:
        """Record the reply to ``entry.inbound_id``; False, changing nothing, if it has one."""
        ...

    async def unsent(self) -> list[OutboxEntry]:
        """Replies not yet handed to the relay, oldest first."""
        ...

    async def mark_sent(self, inbound_id: str, at: float) -> None: ...

    async def outbox(self, limit: int) -> list[OutboxEntry]:
        """The newest ``limit`` replies, newest first."""
        ...

    async def refuse(self, refused: Refused) -> None: ...

    async def refused(self, limit: int) -> list[Refused]:
        """The newest ``limit`` refusals, newest first."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
  session_id TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, session_token TEXT NOT NULL,
  participants TEXT NOT NULL, replies INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ids (message_id TEXT PRIMARY KEY, session_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbound (
  message_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, body TEXT NOT NULL,
  replied INTEGER NOT NULL DEFAULT 0, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
  inbound_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, body TEXT NOT NULL, raw BLOB NOT NULL,
  created_at REAL NOT NULL, sent_at REAL);
CREATE TABLE IF NOT EXISTS refused (
  n INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbound_session ON inbound (session_id, received_at);
CREATE INDEX IF NOT EXISTS outbox_session ON outbox (session_id, created_at);
"""

# A thread's subject, size and last activity, from the mail it holds (newest first).
_THREADS = """
SELECT t.session_id, t.session_token, t.participants,
  (SELECT json_extract(i.body, '$.subject') FROM inbound i WHERE i.session_id = t.session_id
   ORDER BY i.received_at, i.rowid LIMIT 1),
  (SELECT COUNT(*) FROM inbound i WHERE i.session_id = t.session_id)
  + (SELECT COUNT(*) FROM outbox o WHERE o.session_id = t.session_id),
  MAX(t.created_at,
      COALESCE((SELECT MAX(i.received_at) FROM inbound i WHERE i.session_id = t.session_id), 0),
      COALESCE((SELECT MAX(o.created_at) FROM outbox o WHERE o.session_id = t.session_id), 0))
  AS last_at
FROM threads t ORDER BY last_at DESC, t.rowid DESC LIMIT ?
"""


class SqliteMailStore:
    """:class:`MailStore` in one SQLite file (``kit dev``: ``STATE/mail.sqlite``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        private_sqlite(path)  # it holds the session tokens of every mail thread
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _thread(self, row: tuple[str, str, str, int] | None) -> Thread | None:
        if row is None:
            return None
        return Thread(row[0], row[1], tuple(json.loads(row[2])), row[3])

    async def seen(self, message_id: str) -> bool:
        q = "SELECT 1 FROM inbound WHERE message_id = ?"
        return self._db.execute(q, (message_id,)).fetchone() is not None

    async def thread_by_token(self, token: str) -> Thread | None:
        q = "SELECT session_id, token, participants, replies FROM threads WHERE token = ?"
        return self._thread(self._db.execute(q, (token,)).fetchone())

    async def thread_by_ids(self, ids: list[str]) -> Thread | None:
        for message_id in ids:
            row = self._db.execute(
                "SELECT t.session_id, t.token, t.participants, t.replies FROM ids i "
                "JOIN threads t ON t.session_id = i.session_id WHERE i.message_id = ?",
                (message_id,),
            ).fetchone()
            if row is not None:
                return self._thread(row)
        return None

    async def session_token(self, session_id: str) -> str | None:
        q = "SELECT session_token FROM threads WHERE session_id = ?"
        row = self._db.execute(q, (session_id,)).fetchone()
        return None if row is None else str(row[0])

    async def take(self, record: InboundRecord, thread: Thread, session_token: str | None) -> bool:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            q = "SELECT 1 FROM inbound WHERE message_id = ?"
            if db.execute(q, (record.message_id,)).fetchone() is not None:
                db.execute("ROLLBACK")
                return False
            if session_token is not None:
                db.execute(
                    "INSERT INTO threads (session_id, token, session_token, participants, "
                    "created_at) VALUES (?, ?, ?, ?, ?)",
                    (
                        thread.session_id,
                        thread.token,
                        session_token,
                        json.dumps(list(thread.participants)),
                        record.received_at,
                    ),
                )
            db.execute(
                "INSERT OR IGNORE INTO ids (message_id, session_id) VALUES (?, ?)",
                (record.message_id, thread.session_id),
            )
            db.execute(
                "INSERT INTO inbound (message_id, session_id, body, received_at) "
                "VALUES (?, ?, ?, ?)",
                (record.message_id, record.session_id, record_json(record), record.received_at),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    async def pending(self) -> list[InboundRecord]:
        rows = self._db.execute(
            "SELECT body FROM inbound WHERE replied = 0 ORDER BY received_at, rowid"
        ).fetchall()
        return [record_of(json.loads(r[0])) for r in rows]

    async def reply(self, entry: OutboxEntry) -> bool:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            q = "SELECT 1 FROM outbox WHERE inbound_id = ?"
            if db.execute(q, (entry.inbound_id,)).fetchone() is not None:
                db.execute("ROLLBACK")
                return False
            db.execute(
                "INSERT INTO outbox (inbound_id, session_id, body, raw, created_at, sent_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entry.inbound_id,
                    entry.session_id,
                    json.dumps(entry.to_json()),
                    entry.raw,
                    entry.created_at,
                    entry.sent_at,
                ),
            )
            db.execute("UPDATE inbound SET replied = 1 WHERE message_id = ?", (entry.inbound_id,))
            db.execute(
                "UPDATE threads SET replies = replies + 1 WHERE session_id = ?",
                (entry.session_id,),
            )
            db.execute(
                "INSERT OR IGNORE INTO ids (message_id, session_id) VALUES (?, ?)",
                (entry.message_id, entry.session_id),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    async def unsent(self) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT body, raw FROM outbox WHERE sent_at IS NULL ORDER BY created_at, rowid"
        ).fetchall()
        return [entry_of(json.loads(b), bytes(r)) for b, r in rows]

    async def mark_sent(self, inbound_id: str, at: float) -> None:
        self._db.execute(
            "UPDATE outbox SET sent_at = ?, body = json_set(body, '$.sent_at', ?) "
            "WHERE inbound_id = ? AND sent_at IS NULL",
            (at, at, inbound_id),
        )

    async def outbox(self, limit: int) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT body, raw FROM outbox ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [entry_of(json.loads(b), bytes(r)) for b, r in rows]

    async def refuse(self, refused: Refused) -> None:
        db = self._db
        db.execute(
            "INSERT INTO refused (body, at) VALUES (?, ?)",
            (json.dumps(refused.to_json()), refused.at),
        )
        db.execute(
            "DELETE FROM refused WHERE n <= (SELECT MAX(n) FROM refused) - ?", (MAX_REFUSED_KEPT,)
        )

    async def refused(self, limit: int) -> list[Refused]:
        rows = self._db.execute(
            "SELECT body FROM refused ORDER BY n DESC LIMIT ?", (limit,)
        ).fetchall()
        return [Refused(**json.loads(r[0])) for r in rows]

    async def threads(self, limit: int = MAX_THREADS_LISTED) -> list[ThreadSummary]:
        """The newest ``limit`` threads (by their last mail either way), newest first, with
        their session tokens. ``kit dev`` only (its page lists them); not part of
        :class:`MailStore`, which other hosts implement without it."""
        rows = self._db.execute(_THREADS, (limit,)).fetchall()
        return [
            ThreadSummary(
                session_id=str(r[0]),
                session_token=str(r[1]),
                participants=tuple(json.loads(r[2])),
                subject=str(r[3] or ""),
                messages=int(r[4]),
                last_at=float(r[5]),
            )
            for r in rows
        ]


def record_json(record: InboundRecord) -> str:
    """``record`` as JSON (what :func:`record_of` reads back)."""
    body = dict(record.__dict__)
    body["in_reply_to"] = list(record.in_reply_to)
    body["references"] = list(record.references)
    return json.dumps(body)


def record_of(body: dict[str, object]) -> InboundRecord:
    """The record :func:`record_json` wrote."""
    irt = body.pop("in_reply_to")
    refs = body.pop("references")
    assert isinstance(irt, list)
    assert isinstance(refs, list)
    return InboundRecord(in_reply_to=tuple(irt), references=tuple(refs), **body)  # type: ignore[arg-type]


def entry_of(body: dict[str, object], raw: bytes) -> OutboxEntry:
    """The reply :meth:`OutboxEntry.to_json` described, with its raw bytes."""
    sent = body.get("sent_at")
    return OutboxEntry(
        inbound_id=str(body["in_reply_to"]),
        session_id=str(body["session_id"]),
        sender=str(body["from"]),
        to=str(body["to"]),
        subject=str(body["subject"]),
        message_id=str(body["message_id"]),
        text=str(body["text"]),
        raw=raw,
        created_at=float(body["created_at"]),  # type: ignore[arg-type]
        sent_at=None if sent is None else float(sent),  # type: ignore[arg-type]
    )


def now() -> float:
    return time.time()
