"""The event log's rows and the one copy of its SQL.

A session's log is three tables (``meta``, ``events``, ``turns``; :data:`SCHEMA`) wherever
it lives in SQLite: a plain file (:class:`kit.host.eventlog.SQLiteSessionLog`) or a Durable
Object's ``ctx.storage.sql`` (``emulator.durable_objects.logstore``, and the shim's
SessionDO). :class:`LogTables` is every statement either of them runs, behind a
:data:`Query` function; the caller owns the connection and the transactions (BEGIN
IMMEDIATE on a file, ``transactionSync`` in an object), so each write method here is meant
to run inside one.

Sans-I/O in spirit: nothing here opens a file or knows which SQLite it talks to. The row
types (:class:`Turn`, :class:`TurnState`, :class:`LogSummary`) are the log seam's, re-exported
by :mod:`kit.host.eventlog`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kit.ids import SessionId, TurnId
from kit.protocol.frames import Event

# The turn table holds the turn planner's states (kit.protocol.turns); re-exported here.
from kit.protocol.turns import OPEN_TURN_STATES as OPEN_TURN_STATES
from kit.protocol.turns import TurnState as TurnState

CREATED_KEY = "created_ms"
"""The metadata key holding when the session was created (wall-clock milliseconds)."""


@dataclass(frozen=True)
class Turn:
    """One user message and the work it started."""

    turn_id: TurnId
    client_msg_id: str
    text: str
    state: TurnState
    user_seq: int
    attempts: int


@dataclass(frozen=True)
class LogSummary:
    """What a session's stored log says, read without opening it for writing."""

    session_id: SessionId
    created_ms: int | None
    """From the metadata's ``created_ms`` (None for sessions made before it was written)."""
    last_seq: int
    """The newest event's seq (0: no event yet)."""
    last_kind: str | None
    last_ts: int | None
    turns: int
    open_turns: int
    """Turns queued, running or interrupted (a recovery would pick them up)."""
    sandbox: str | None
    """The ``state`` of the newest ``sandbox`` event: what the log last said about the
    session's sandbox (None: it never had one). Not proof that one runs now."""


def started_state(start: bool) -> tuple[TurnState, int]:
    """A new turn's state and attempts: queued (0), or, ``start``, running with its first
    sandbox attempt counted, which is what :meth:`TurnPlanner.begin` records first for a
    queued turn (kit.protocol.turns): a turn that starts at once saves that commit."""
    return (TurnState.RUNNING, 1) if start else (TurnState.QUEUED, 0)


def now_ms() -> int:
    """Wall-clock milliseconds, the ``ts`` of events."""
    return int(time.time() * 1000)


Query = Callable[..., Sequence[tuple[Any, ...]]]
"""``query(sql, *params)`` → rows: one statement on the caller's connection (a file's
``execute(...).fetchall()``, or a Durable Object's ``sql.exec(...).rows``)."""
QueryMany = Callable[[str, list[tuple[Any, ...]]], object]
"""``query_many(sql, rows)``: one statement run once per row (a file's ``executemany``)."""

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
    " turn_id TEXT, data TEXT NOT NULL, ts INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS turns (turn_id TEXT PRIMARY KEY,"
    " client_msg_id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, state TEXT NOT NULL,"
    " user_seq INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " updated_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS turns_state ON turns(state, user_seq)",
)
"""The tables, one statement each (a Durable Object's ``exec`` takes one at a time)."""

_EVENTS_AFTER = "SELECT seq, kind, turn_id, data, ts FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
_INSERT_EVENT = "INSERT INTO events VALUES (?, ?, ?, ?, ?)"
_OPEN_TURNS = (
    "SELECT turn_id, client_msg_id, text, state, user_seq, attempts FROM turns"
    " WHERE state IN (?, ?, ?) ORDER BY user_seq"
)
_ANY_OPEN_TURN = "SELECT 1 FROM turns WHERE state IN (?, ?, ?) LIMIT 1"
_SET_TURN_STATE = (
    "UPDATE turns SET state = ?, attempts = attempts + ?, updated_ms = ? WHERE turn_id = ?"
)
_OPEN_STATE_VALUES = tuple(s.value for s in OPEN_TURN_STATES)


class LogTables:
    """Every read and write of one session's log tables, through ``query``.

    ``query_many``, when the connection has one, runs a batch of inserts in one call;
    without it each row is one ``query`` (a Durable Object has no ``executemany``).
    """

    def __init__(self, query: Query, query_many: QueryMany | None = None) -> None:
        self.query = query
        self.query_many = query_many

    def create(self) -> None:
        """Create the tables when they are missing (idempotent)."""
        for statement in SCHEMA:
            self.query(statement)

    def last_seq(self) -> int:
        """The newest event's seq (0: none)."""
        return int(self.query("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0])

    def turn_count(self) -> int:
        """How many turns the log holds (the next turn is ``t{count + 1}``)."""
        return int(self.query("SELECT COUNT(*) FROM turns")[0][0])

    def has_meta(self) -> bool:
        """Whether any metadata was written (the session was created)."""
        return bool(self.query("SELECT 1 FROM meta LIMIT 1"))

    def meta(self) -> dict[str, Any]:
        """The session's metadata."""
        return {k: json.loads(v) for k, v in self.query("SELECT key, value FROM meta")}

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Store metadata (once, at creation)."""
        for key, value in meta.items():
            self.query("INSERT OR REPLACE INTO meta VALUES (?, ?)", key, json.dumps(value))

    def insert_events(
        self, after: int, items: Sequence[tuple[str, dict[str, Any]]], turn_id: TurnId | None
    ) -> list[Event]:
        """Insert ``(kind, data)`` events with seqs ``after + 1, after + 2, …``; return them."""
        events = [
            Event(
                seq=seq,
                kind=kind,
                data=data,
                ts=now_ms(),
                turn_id=turn_id,
                data_json=json.dumps(data, ensure_ascii=False, separators=(",", ":")),
            )
            for seq, (kind, data) in enumerate(items, after + 1)
        ]
        rows = [(e.seq, e.kind, turn_id, e.data_json, e.ts) for e in events]
        if self.query_many is not None:
            self.query_many(_INSERT_EVENT, rows)
        else:
            for row in rows:
                self.query(_INSERT_EVENT, *row)
        return events

    def end_turn(
        self,
        after: int,
        items: Sequence[tuple[str, dict[str, Any]]],
        turn_id: TurnId,
        state: TurnState,
    ) -> list[Event]:
        """Insert a turn's last events and move it to its end ``state`` (one transaction
        of the caller's: an answer that is durable is never run again)."""
        events = self.insert_events(after, items, turn_id)
        self.set_turn_state(turn_id, state, False)
        return events

    def read_after(self, seq: int, limit: int | None = None) -> list[Event]:
        """Events with seq > ``seq``, oldest first, at most ``limit``."""
        rows = self.query(_EVENTS_AFTER, seq, -1 if limit is None else limit)
        return [
            Event(seq=r[0], kind=r[1], turn_id=r[2], data=json.loads(r[3]), ts=r[4], data_json=r[3])
            for r in rows
        ]

    def turn_seen(self, client_msg_id: str) -> bool:
        """Whether a turn with this ``client_msg_id`` was stored already."""
        return bool(self.query("SELECT 1 FROM turns WHERE client_msg_id = ?", client_msg_id))

    def add_turn(
        self, after: int, turn_id: TurnId, client_msg_id: str, text: str, start: bool = False
    ) -> tuple[Turn, Event]:
        """Insert a turn and its ``user`` event (seq ``after + 1``): queued, or with
        ``start`` and no other turn open, running with its first attempt counted
        (:func:`started_state`)."""
        state, attempts = started_state(start and not self.has_open_turn())
        (event,) = self.insert_events(
            after, [("user", {"client_msg_id": client_msg_id, "text": text})], turn_id
        )
        self.query(
            "INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?)",
            turn_id,
            client_msg_id,
            text,
            state.value,
            event.seq,
            attempts,
            event.ts,
        )
        return Turn(turn_id, client_msg_id, text, state, event.seq, attempts), event

    def has_open_turn(self) -> bool:
        """Whether a turn is queued, running or interrupted."""
        return bool(self.query(_ANY_OPEN_TURN, *_OPEN_STATE_VALUES))

    def set_turn_state(self, turn_id: TurnId, state: TurnState, attempt: bool) -> None:
        """Move a turn to ``state`` (``attempt``: count one more sandbox attempt)."""
        self.query(_SET_TURN_STATE, state.value, 1 if attempt else 0, now_ms(), turn_id)

    def open_turns(self) -> list[Turn]:
        """Queued, running and interrupted turns, oldest first."""
        rows = self.query(_OPEN_TURNS, *_OPEN_STATE_VALUES)
        return [Turn(TurnId(r[0]), r[1], r[2], TurnState(r[3]), r[4], r[5]) for r in rows]

    def summary(self, session_id: SessionId) -> LogSummary:
        """A :class:`LogSummary`, by reads only."""
        query = self.query
        meta = {
            k: json.loads(v)
            for k, v in query("SELECT key, value FROM meta WHERE key = ?", CREATED_KEY)
        }
        last = query("SELECT seq, kind, ts FROM events ORDER BY seq DESC LIMIT 1")
        turns, open_turns = query(
            "SELECT COUNT(*), COALESCE(SUM(state IN (?, ?, ?)), 0) FROM turns",
            *_OPEN_STATE_VALUES,
        )[0]
        sandbox = query("SELECT data FROM events WHERE kind = 'sandbox' ORDER BY seq DESC LIMIT 1")
        created = meta.get(CREATED_KEY)
        return LogSummary(
            session_id=session_id,
            created_ms=int(created) if created is not None else None,
            last_seq=last[0][0] if last else 0,
            last_kind=last[0][1] if last else None,
            last_ts=last[0][2] if last else None,
            turns=int(turns),
            open_turns=int(open_turns),
            sandbox=str(json.loads(sandbox[0][0]).get("state")) if sandbox else None,
        )
