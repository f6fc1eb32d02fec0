"""The durable per-session event log and turn table.

:class:`SessionLog` is the seam: ``append`` returns only once the event is committed, and
assigns ``seq`` (1, 2, 3, … with no gaps). The host fans an event out only after
``append`` returns (ARCHITECTURE §4.1). The seam is async because a log may live across
the network: :class:`SQLiteLogStore` keeps one SQLite file per session, like a Durable
Object's storage (its calls finish without yielding: a local commit is cheaper than a
thread hop; the file is 0600, :mod:`kit.private`; with ``fsync`` durability an append
returns once a grouped fsync of the ``-wal``, run in a thread, covers it,
:mod:`kit.durability`); ``kit.host.s3log`` keeps the log in S3
objects under a lease (Fly).

The tables and every statement on them are in :mod:`kit.host.logtables`, shared with the
emulator's Durable Object log (``emulator.durable_objects.logstore``).

:meth:`LogStore.summary` and :meth:`LogStore.read_events` read what a store holds without
opening the session for writing: no lease is taken, no session is loaded (``kit sessions``,
``kit logs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from kit.durability import DEFAULT, Durability, GroupSync
from kit.host.errors import LogError
from kit.host.logtables import (
    CREATED_KEY,
    OPEN_TURN_STATES,
    LogSummary,
    LogTables,
    Turn,
    TurnState,
    now_ms,
    started_state,
)
from kit.ids import SessionId, TurnId, is_session_id
from kit.private import DIR_MODE, private_sqlite
from kit.protocol.frames import Event

__all__ = [
    "CREATED_KEY",
    "OPEN_TURN_STATES",
    "LogStore",
    "LogSummary",
    "SQLiteLogStore",
    "SQLiteSessionLog",
    "SessionLog",
    "Turn",
    "TurnState",
    "now_ms",
    "started_state",
]


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
    async def add_user_turn(
        self, client_msg_id: str, text: str, *, start: bool = False
    ) -> tuple[Turn, Event] | None:
        """Queue a turn and commit its ``user`` event in one transaction.

        With ``start`` and no other turn open, the turn is stored RUNNING with its first
        sandbox attempt counted instead (:func:`kit.host.logtables.started_state`, in the
        same commit): the caller runs it at once. The returned turn says which.
        ``None`` when ``client_msg_id`` was seen before: nothing is stored twice.
        """

    @abstractmethod
    async def set_turn_state(
        self, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        """Move a turn to ``state`` (``attempt`` counts one more sandbox attempt)."""

    async def end_turn(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId, state: TurnState
    ) -> list[Event]:
        """Commit a turn's last events (its ``result`` or ``error``) and its end ``state``
        together: a host that dies after the answer is durable never finds the turn still
        open and runs it again. Logs that cannot do both in one commit (this default)
        commit the events first."""
        events = await self.append_many(items, turn_id)
        await self.set_turn_state(turn_id, state)
        return events

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

    async def owner_elsewhere(self, session_id: SessionId) -> str | None:
        """The host that holds ``session_id`` now, when it is another live host (a shared,
        leased store); None when this host may take it (default: always)."""
        return None


class SQLiteSessionLog(SessionLog):
    """A session log in its own SQLite file (WAL; each append is one commit)."""

    def __init__(self, path: Path, session_id: SessionId, durability: Durability = DEFAULT) -> None:
        self.session_id = session_id
        self.path = path
        self._syncer = (
            GroupSync(path, new_file=not path.exists()) if durability is Durability.FSYNC else None
        )
        try:
            private_sqlite(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._tables = LogTables(self._query, self._db.executemany)
            self._tables.create()
            self._last_seq = self._tables.last_seq()
            self._turn_counter = self._tables.turn_count()
        except (OSError, sqlite3.Error) as exc:
            raise LogError(f"Cannot open the event log {path}: {exc}.") from exc
        self._pending_seq = self._last_seq

    def _query(self, sql: str, *params: Any) -> list[Any]:
        return self._db.execute(sql, params).fetchall()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def meta(self) -> dict[str, Any]:
        with self._reading():
            return self._tables.meta()

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Store metadata (used once, at creation)."""
        with self._tx():
            self._tables.write_meta(meta)

    async def append(self, kind: str, data: dict[str, Any], turn_id: TurnId | None = None) -> Event:
        with self._tx():
            (event,) = self._tables.insert_events(self._pending_seq, [(kind, data)], turn_id)
            self._pending_seq = event.seq
        await self._durable()
        return event

    async def append_many(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId | None = None
    ) -> list[Event]:
        with self._tx():
            events = self._tables.insert_events(self._pending_seq, items, turn_id)
            if events:
                self._pending_seq = events[-1].seq
        await self._durable()
        return events

    async def end_turn(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId, state: TurnState
    ) -> list[Event]:
        with self._tx():
            events = self._tables.end_turn(self._pending_seq, items, turn_id, state)
            if events:
                self._pending_seq = events[-1].seq
        await self._durable()
        return events

    async def read_after(self, seq: int, limit: int | None = None) -> list[Event]:
        with self._reading():
            events = self._tables.read_after(seq, limit)
        if events and self._syncer is not None:
            await self._durable(self._syncer.settled())  # nothing read leaves before its fsync
        return events

    async def add_user_turn(
        self, client_msg_id: str, text: str, *, start: bool = False
    ) -> tuple[Turn, Event] | None:
        with self._reading():
            if self._tables.turn_seen(client_msg_id):
                return None
        turn_id = TurnId(f"t{self._turn_counter + 1}")
        with self._tx():
            turn, event = self._tables.add_turn(
                self._pending_seq, turn_id, client_msg_id, text, start
            )
            self._pending_seq = event.seq
        self._turn_counter += 1
        await self._durable()
        return turn, event

    async def set_turn_state(
        self, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        with self._tx():  # no client is told: the next event's fsync covers it
            self._tables.set_turn_state(turn_id, state, attempt)

    async def _durable(self, wait: Awaitable[None] | None = None) -> None:
        """Return once what was committed is durable as the setting says (``wait``: that
        instead of a new fsync request)."""
        if self._syncer is None:
            return
        try:
            await (wait or asyncio.shield(self._syncer.request()))
        except OSError as exc:
            raise LogError(f"Cannot write the event log {self.path}: {exc}") from exc

    async def open_turns(self) -> list[Turn]:
        with self._reading():
            return self._tables.open_turns()

    async def close(self) -> None:
        if self._syncer is not None:  # what was committed reaches the disk before we let go
            with contextlib.suppress(OSError):
                await self._syncer.request()
        self._db.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """sqlite3's errors on a read as :class:`LogError` (writes map theirs in ``_tx``)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise LogError(f"Cannot read the event log {self.path}: {exc}.") from exc

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

    def __init__(self, root: Path, durability: Durability = DEFAULT) -> None:
        self.root = root
        self.durability = durability
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def _path(self, session_id: SessionId) -> Path:
        if not is_session_id(session_id):
            raise LogError(f"{session_id!r} is not a session id.")
        return self.root / f"{session_id}.sqlite"

    async def create(self, session_id: SessionId, meta: dict[str, Any]) -> SessionLog:
        path = self._path(session_id)
        if path.exists():
            raise LogError(f"Session {session_id} already exists.")
        log = SQLiteSessionLog(path, session_id, self.durability)
        log.write_meta(meta)
        await log._durable()
        return log

    async def open(self, session_id: SessionId) -> SessionLog | None:
        path = self._path(session_id)
        return SQLiteSessionLog(path, session_id, self.durability) if path.exists() else None

    async def session_ids(self) -> list[SessionId]:
        return [
            SessionId(p.stem) for p in sorted(self.root.glob("*.sqlite")) if is_session_id(p.stem)
        ]

    async def summary(self, session_id: SessionId) -> LogSummary | None:
        with self._read_only(session_id) as db:
            if db is None:
                return None
            return LogTables(lambda sql, *params: db.execute(sql, params).fetchall()).summary(
                session_id
            )

    async def read_events(
        self, session_id: SessionId, after: int = 0, limit: int | None = None
    ) -> list[Event] | None:
        with self._read_only(session_id) as db:
            if db is None:
                return None
            return LogTables(lambda sql, *params: db.execute(sql, params).fetchall()).read_after(
                after, limit
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
