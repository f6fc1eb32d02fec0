"""The durable per-session event log and turn table.

:class:`SessionLog` is the seam: ``append`` returns only once the event is committed, and
assigns ``seq`` (1, 2, 3, … with no gaps). The host fans an event out only after
``append`` returns (ARCHITECTURE §4.1). The seam is async because a log may live across
the network: :class:`SQLiteLogStore` keeps one SQLite file per session, like a Durable
Object's storage (its calls finish without yielding: a local commit is cheaper than a
thread hop; the file is 0600, :mod:`kit.private`); ``kit.host.s3log`` keeps the log in S3 objects under a lease (Fly).

:meth:`LogStore.summary` and :meth:`LogStore.read_events` read what a store holds without
opening the session for writing: no lease is taken, no session is loaded (``kit sessions``,
``kit logs``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.host.errors import LogError
from kit.ids import SessionId, TurnId, is_session_id
from kit.private import DIR_MODE, private_sqlite
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


Query = Callable[..., Sequence[tuple[Any, ...]]]
"""``query(sql, *params)`` → rows; how :func:`summarize` reads one SQLite log (a plain
file or a Durable Object's ``ctx.storage.sql``, which share the schema)."""

EVENTS_AFTER = "SELECT seq, kind, turn_id, data, ts FROM events WHERE seq > ? ORDER BY seq LIMIT ?"


def events_of(rows: Sequence[tuple[Any, ...]]) -> list[Event]:
    """Rows of :data:`EVENTS_AFTER` as events."""
    return [Event(seq=r[0], kind=r[1], turn_id=r[2], data=json.loads(r[3]), ts=r[4]) for r in rows]


def summarize(session_id: SessionId, query: Query) -> LogSummary:
    """A :class:`LogSummary` of a log with the SQLite schema, by reads only."""
    meta = {
        k: json.loads(v) for k, v in query("SELECT key, value FROM meta WHERE key = ?", CREATED_KEY)
    }
    last = query("SELECT seq, kind, ts FROM events ORDER BY seq DESC LIMIT 1")
    turns, open_turns = query(
        "SELECT COUNT(*), COALESCE(SUM(state IN (?, ?, ?)), 0) FROM turns",
        *(s.value for s in OPEN_TURN_STATES),
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


def now_ms() -> int:
    """Wall-clock milliseconds, the ``ts`` of events."""
    return int(time.time() * 1000)


class SessionLog(ABC):
    """One session's durable events and turns."""

    session_id: SessionId

    @property
    @abstractmethod
    def last_seq(self) -> int:
        """The seq of the newest event (0 when there is none)."""

    @abstractmethod
    def meta(self) -> dict[str, Any]:
        """Session metadata written at creation (token hash, tier, bundle, created)."""

    @abstractmethod
    async def append(self, kind: str, data: dict[str, Any], turn_id: TurnId | None = None) -> Event:
        """Commit one event and return it with its seq."""

    @abstractmethod
    async def append_many(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId | None = None
    ) -> list[Event]:
        """Commit several ``(kind, data)`` events in one transaction (all or none)."""

    @abstractmethod
    async def read_after(self, seq: int, limit: int | None = None) -> list[Event]:
        """Events with seq > ``seq``, oldest first."""

    @abstractmethod
    async def add_user_turn(self, client_msg_id: str, text: str) -> tuple[Turn, Event] | None:
        """Queue a turn and commit its ``user`` event in one transaction.

        ``None`` when ``client_msg_id`` was seen before: nothing is stored twice.
        """

    @abstractmethod
    async def set_turn_state(
        self, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        """Move a turn to ``state`` (``attempt`` counts one more sandbox attempt)."""

    @abstractmethod
    async def open_turns(self) -> list[Turn]:
        """Queued, running and interrupted turns, oldest first."""

    @abstractmethod
    async def close(self) -> None:
        """Release the log's resources (and, for a leased log, the lease)."""

    def on_lost(self, callback: Callable[[str], None]) -> None:  # noqa: B027 - optional hook
        """Have ``callback(reason)`` called if this host loses the right to write the log.

        Only a leased log can lose it (another host took the session over); a local log
        never calls it.
        """


class LogStore(ABC):
    """Creates and opens session logs."""

    @abstractmethod
    async def create(self, session_id: SessionId, meta: dict[str, Any]) -> SessionLog:
        """A new, empty log for a new session."""

    @abstractmethod
    async def open(self, session_id: SessionId) -> SessionLog | None:
        """The log of an existing session, or ``None``."""

    @abstractmethod
    async def session_ids(self) -> list[SessionId]:
        """Every session with a log."""

    @abstractmethod
    async def summary(self, session_id: SessionId) -> LogSummary | None:
        """What the session's stored log says (None: no such session).

        Read-only: takes no lease and loads nothing, so it is safe on a session another
        host owns. A log being written meanwhile may be read up to any commit.
        """

    @abstractmethod
    async def read_events(
        self, session_id: SessionId, after: int = 0, limit: int | None = None
    ) -> list[Event] | None:
        """Stored events with seq > ``after``, oldest first (None: no such session).

        Read-only, like :meth:`summary`.
        """

    async def read_meta(self, session_id: SessionId) -> dict[str, Any] | None:
        """A session's metadata without opening it for writing (None: no such session)."""
        log_ = await self.open(session_id)
        if log_ is None:
            return None
        try:
            return log_.meta()
        finally:
            await log_.close()

    async def recoverable(self) -> list[SessionId]:
        """Sessions that may have open turns, for a host's recovery at start (default: all)."""
        return await self.session_ids()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY,
  kind TEXT NOT NULL,
  turn_id TEXT,
  data TEXT NOT NULL,
  ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
  turn_id TEXT PRIMARY KEY,
  client_msg_id TEXT NOT NULL UNIQUE,
  text TEXT NOT NULL,
  state TEXT NOT NULL,
  user_seq INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_state ON turns(state, user_seq);
"""


class SQLiteSessionLog(SessionLog):
    """A session log in its own SQLite file (WAL; each append is one commit)."""

    def __init__(self, path: Path, session_id: SessionId) -> None:
        self.session_id = session_id
        self.path = path
        try:
            private_sqlite(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise LogError(f"Cannot open the event log {path}: {exc}.") from exc
        self._last_seq: int = row[0]
        self._pending_seq = self._last_seq
        self._turn_counter = self._db.execute("SELECT COUNT(*) FROM turns").fetchone()[0]

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def meta(self) -> dict[str, Any]:
        rows = self._db.execute("SELECT key, value FROM meta").fetchall()
        return {k: json.loads(v) for k, v in rows}

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Store metadata (used once, at creation)."""
        with self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in meta.items()],
            )

    async def append(self, kind: str, data: dict[str, Any], turn_id: TurnId | None = None) -> Event:
        with self._tx():
            return self._insert(kind, data, turn_id)

    async def append_many(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId | None = None
    ) -> list[Event]:
        with self._tx():
            return [self._insert(kind, data, turn_id) for kind, data in items]

    def _insert(self, kind: str, data: dict[str, Any], turn_id: TurnId | None) -> Event:
        self._pending_seq += 1
        event = Event(seq=self._pending_seq, kind=kind, data=data, ts=now_ms(), turn_id=turn_id)
        self._db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
            (event.seq, kind, turn_id, json.dumps(data, ensure_ascii=False), event.ts),
        )
        return event

    async def read_after(self, seq: int, limit: int | None = None) -> list[Event]:
        return events_of(
            self._db.execute(EVENTS_AFTER, (seq, -1 if limit is None else limit)).fetchall()
        )

    async def add_user_turn(self, client_msg_id: str, text: str) -> tuple[Turn, Event] | None:
        seen = self._db.execute(
            "SELECT 1 FROM turns WHERE client_msg_id = ?", (client_msg_id,)
        ).fetchone()
        if seen:
            return None
        turn_id = TurnId(f"t{self._turn_counter + 1}")
        with self._tx():
            event = self._insert("user", {"client_msg_id": client_msg_id, "text": text}, turn_id)
            self._db.execute(
                "INSERT INTO turns VALUES (?, ?, ?, ?, ?, 0, ?)",
                (turn_id, client_msg_id, text, TurnState.QUEUED.value, event.seq, event.ts),
            )
        self._turn_counter += 1
        return Turn(turn_id, client_msg_id, text, TurnState.QUEUED, event.seq, 0), event

    async def set_turn_state(
        self, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE turns SET state = ?, attempts = attempts + ?, updated_ms = ? WHERE turn_id = ?",
                (state.value, 1 if attempt else 0, now_ms(), turn_id),
            )

    async def open_turns(self) -> list[Turn]:
        states = tuple(s.value for s in OPEN_TURN_STATES)
        rows = self._db.execute(
            "SELECT turn_id, client_msg_id, text, state, user_seq, attempts FROM turns"
            " WHERE state IN (?, ?, ?) ORDER BY user_seq",
            states,
        ).fetchall()
        return [Turn(TurnId(r[0]), r[1], r[2], TurnState(r[3]), r[4], r[5]) for r in rows]

    async def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One IMMEDIATE transaction; the in-memory seq moves only after COMMIT."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise LogError(f"Cannot write the event log {self.path}: {exc}.") from exc
        self._pending_seq = self._last_seq
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise LogError(f"Cannot write the event log {self.path}: {exc}.") from exc
            raise
        self._last_seq = self._pending_seq


class SQLiteLogStore(LogStore):
    """One SQLite file per session under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def _path(self, session_id: SessionId) -> Path:
        if not is_session_id(session_id):
            raise LogError(f"{session_id!r} is not a session id.")
        return self.root / f"{session_id}.sqlite"

    async def create(self, session_id: SessionId, meta: dict[str, Any]) -> SessionLog:
        path = self._path(session_id)
        if path.exists():
            raise LogError(f"Session {session_id} already exists.")
        log = SQLiteSessionLog(path, session_id)
        log.write_meta(meta)
        return log

    async def open(self, session_id: SessionId) -> SessionLog | None:
        path = self._path(session_id)
        return SQLiteSessionLog(path, session_id) if path.exists() else None

    async def session_ids(self) -> list[SessionId]:
        return [
            SessionId(p.stem) for p in sorted(self.root.glob("*.sqlite")) if is_session_id(p.stem)
        ]

    async def summary(self, session_id: SessionId) -> LogSummary | None:
        with self._read_only(session_id) as db:
            if db is None:
                return None
            return summarize(session_id, lambda sql, *params: db.execute(sql, params).fetchall())

    async def read_events(
        self, session_id: SessionId, after: int = 0, limit: int | None = None
    ) -> list[Event] | None:
        with self._read_only(session_id) as db:
            if db is None:
                return None
            return events_of(
                db.execute(EVENTS_AFTER, (after, -1 if limit is None else limit)).fetchall()
            )

    @contextlib.contextmanager
    def _read_only(self, session_id: SessionId) -> Iterator[sqlite3.Connection | None]:
        """The session's file opened read-only (None when there is none); its own
        connection, beside the writer's: WAL readers see the last commit."""
        path = self._path(session_id)
        if not path.exists():
            yield None
            return
        try:
            db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise LogError(f"Cannot read the event log {path}: {exc}.") from exc
        try:
            yield db
        except sqlite3.Error as exc:
            raise LogError(f"Cannot read the event log {path}: {exc}.") from exc
        finally:
            db.close()
