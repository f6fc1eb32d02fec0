"""The session host's event log in Durable Object storage: one object per session.

:class:`SessionLogObject` is what the shim's SessionDO keeps in ``ctx.storage.sql``
(ARCHITECTURE §5): ``meta``, ``events`` and ``turns`` tables (the schema and statements of
:mod:`kit.host.logtables`, which kit's SQLite files use too, so a ``kit dev`` state dir from
before keeps working).
Its constructor rebuilds ``last_seq`` from storage, so an evicted or hibernated object
carries on where its storage left off. Each append is one ``transactionSync``: an event
over Cloudflare's limits fails with Cloudflare's text and changes nothing.

:class:`DOLogStore` is the ``LogStore`` seam over a :class:`Namespace` of those objects;
its answers come back only after the object's writes are committed (the output gate).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from emulator.durable_objects.errors import DurableObjectError
from emulator.durable_objects.namespace import DurableObject, Namespace, ObjectState
from kit.host.errors import LogError
from kit.host.eventlog import LogStore, LogSummary, SessionLog, Turn, TurnState
from kit.host.logtables import OPEN_TURN_STATES, LogTables
from kit.ids import SessionId, TurnId, is_session_id
from kit.protocol.frames import Event

T = TypeVar("T")


class SessionLogObject(DurableObject):
    """One session's log, as a Durable Object."""

    def __init__(self, ctx: ObjectState) -> None:
        super().__init__(ctx)
        sql = ctx.storage.sql
        self.tables = LogTables(lambda query, *bindings: sql.exec(query, *bindings).rows)
        """The log's SQL (shared with kit's SQLite files) on this object's storage."""
        self.tables.create()
        self.last_seq: int = self.tables.last_seq()
        self.turns: int = self.tables.turn_count()

    def create(self, meta: dict[str, Any]) -> None:
        """Write the session's metadata (once)."""
        if self.tables.has_meta():
            raise LogError(f"Session {self.ctx.id} already exists.")
        self.ctx.storage.transaction_sync(lambda: self.tables.write_meta(meta))

    def meta(self) -> dict[str, Any]:
        """The session's metadata."""
        return self.tables.meta()

    def append_many(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId | None
    ) -> list[Event]:
        """Commit events in one transaction (all or none); seqs follow ``last_seq``."""
        events = self.ctx.storage.transaction_sync(
            lambda: self.tables.insert_events(self.last_seq, items, turn_id)
        )
        self.last_seq = events[-1].seq if events else self.last_seq
        return events

    def end_turn(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId, state: TurnState
    ) -> list[Event]:
        """Commit a turn's last events and its end state in one transaction."""
        events = self.ctx.storage.transaction_sync(
            lambda: self.tables.end_turn(self.last_seq, items, turn_id, state)
        )
        self.last_seq = events[-1].seq if events else self.last_seq
        return events

    def read_after(self, seq: int, limit: int | None) -> list[Event]:
        """Events after ``seq``, oldest first."""
        return self.tables.read_after(seq, limit)

    def summary(self) -> LogSummary:
        """What the log holds (reads only)."""
        return self.tables.summary(SessionId(self.ctx.id))

    def add_user_turn(
        self, client_msg_id: str, text: str, start: bool = False
    ) -> tuple[Turn, Event] | None:
        """Queue (or ``start``) a turn and its ``user`` event together; None for a seen
        ``client_msg_id``."""
        if self.tables.turn_seen(client_msg_id):
            return None
        turn_id = TurnId(f"t{self.turns + 1}")
        turn, event = self.ctx.storage.transaction_sync(
            lambda: self.tables.add_turn(self.last_seq, turn_id, client_msg_id, text, start)
        )
        self.last_seq, self.turns = event.seq, self.turns + 1
        return turn, event

    def set_turn_state(self, turn_id: TurnId, state: TurnState, attempt: bool) -> None:
        """Move a turn to ``state``."""
        self.tables.set_turn_state(turn_id, state, attempt)

    def open_turns(self) -> list[Turn]:
        """Queued, running and interrupted turns, oldest first."""
        return self.tables.open_turns()


class DOSessionLog(SessionLog):
    """A session log reached through its object's stub."""

    def __init__(
        self, namespace: Namespace[SessionLogObject], session_id: SessionId, meta: dict[str, Any]
    ) -> None:
        self.session_id = session_id
        self.namespace = namespace
        self.path = namespace.path(session_id)
        """The object's SQLite file (tests read it to check what is committed)."""
        self._meta = meta
        self._last_seq = 0
        self._closed = False
        self._open: list[Turn] | None = None
        """The object's open turns as this log last wrote or read them (None: ask it). The
        host holding the session is its only writer, so its own writes keep this true;
        ``_turns`` orders them (a read in flight must not put back an answer older than a
        write), and a write that fails or is cancelled leaves it unknown."""
        self._turns = asyncio.Lock()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def meta(self) -> dict[str, Any]:
        return dict(self._meta)

    async def _call(
        self, what: str, fn: Callable[[SessionLogObject], T], *, durable: bool = True
    ) -> T:
        if self._closed:
            raise LogError(f"The event log of session {self.session_id} is closed.")
        try:
            return await self.namespace.call(self.session_id, fn, durable=durable)
        except DurableObjectError as exc:
            raise LogError(
                f"Cannot {what} the event log of session {self.session_id}: {exc}"
            ) from exc

    async def sync_seq(self) -> None:
        """Learn ``last_seq`` from the object (at open)."""
        self._last_seq = await self._call("read", lambda o: o.last_seq)

    async def append(self, kind: str, data: dict[str, Any], turn_id: TurnId | None = None) -> Event:
        (event,) = await self.append_many([(kind, data)], turn_id)
        return event

    async def append_many(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId | None = None
    ) -> list[Event]:
        events = await self._call("write", lambda o: o.append_many(items, turn_id))
        if events:
            self._last_seq = events[-1].seq
        return events

    async def read_after(self, seq: int, limit: int | None = None) -> list[Event]:
        return await self._call("read", lambda o: o.read_after(seq, limit))

    async def _write_turns(
        self,
        fn: Callable[[SessionLogObject], T],
        moved: Callable[[list[Turn], T], list[Turn] | None],
        *,
        durable: bool = True,
    ) -> T:
        """A write that changes the open turns, under ``_turns``: the cache is set aside
        while it runs (a write that fails or is cancelled leaves it unknown), then
        ``moved(open_turns, answer)`` is what it holds."""
        async with self._turns:
            open_turns, self._open = self._open, None
            answer = await self._call("write", fn, durable=durable)
            if open_turns is not None:
                self._open = moved(open_turns, answer)
            return answer

    async def add_user_turn(
        self, client_msg_id: str, text: str, *, start: bool = False
    ) -> tuple[Turn, Event] | None:
        added = await self._write_turns(
            lambda o: o.add_user_turn(client_msg_id, text, start),
            lambda turns, added: [*turns, added[0]] if added is not None else turns,
        )
        if added is not None:
            self._last_seq = added[1].seq
        return added

    async def set_turn_state(
        self, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        # A turn's state is the host's own: no client is told it, so it waits for its
        # COMMIT only; the next event's fsync covers it (kit.durability).
        await self._write_turns(
            lambda o: o.set_turn_state(turn_id, state, attempt),
            lambda turns, _: _moved(turns, turn_id, state, attempt),
            durable=False,
        )

    async def end_turn(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId, state: TurnState
    ) -> list[Event]:
        events = await self._write_turns(
            lambda o: o.end_turn(items, turn_id, state),
            lambda turns, _: _moved(turns, turn_id, state, False),
        )
        if events:
            self._last_seq = events[-1].seq
        return events

    async def open_turns(self) -> list[Turn]:
        # The host's own bookkeeping, told to no client: no wait for an fsync. A warm turn
        # asks twice (before and after it); its own writes answer both without a call.
        async with self._turns:
            if self._open is None:
                self._open = await self._call("read", lambda o: o.open_turns(), durable=False)
            return list(self._open)

    async def close(self) -> None:
        # The host lets go; the object stays until it idles out (hibernation) or is evicted.
        self._closed = True


def _moved(
    open_turns: list[Turn], turn_id: TurnId, state: TurnState, attempt: bool
) -> list[Turn] | None:
    """The open turns once ``turn_id`` is in ``state`` (None: not known from these)."""
    known = any(t.turn_id == turn_id for t in open_turns)
    if not known and state in OPEN_TURN_STATES:
        return None  # a turn this log never saw open: ask the object
    return [
        t
        if t.turn_id != turn_id
        else dataclasses.replace(t, state=state, attempts=t.attempts + attempt)
        for t in open_turns
        if t.turn_id != turn_id or state in OPEN_TURN_STATES
    ]


class DOLogStore(LogStore):
    """Session logs as Durable Objects in ``root`` (one SQLite file per session)."""

    def __init__(self, namespace: Namespace[SessionLogObject]) -> None:
        self.namespace = namespace

    @classmethod
    def in_dir(cls, root: Path, **options: Any) -> DOLogStore:
        """A store over a new namespace of session objects in ``root``."""
        return cls(Namespace(root, SessionLogObject, name="SessionLog", **options))

    def _id(self, session_id: SessionId) -> SessionId:
        if not is_session_id(session_id):
            raise LogError(f"{session_id!r} is not a session id.")
        return session_id

    async def create(self, session_id: SessionId, meta: dict[str, Any]) -> SessionLog:
        sid = self._id(session_id)
        if self.namespace.exists(sid):
            raise LogError(f"Session {sid} already exists.")
        log = DOSessionLog(self.namespace, sid, meta)
        await log._call("create", lambda o: o.create(meta))
        return log

    async def open(self, session_id: SessionId) -> SessionLog | None:
        sid = self._id(session_id)
        if not self.namespace.exists(sid):
            return None
        log = DOSessionLog(self.namespace, sid, {})
        log._meta = await log._call("read", lambda o: o.meta())
        await log.sync_seq()
        return log

    async def session_ids(self) -> list[SessionId]:
        return [SessionId(i) for i in self.namespace.ids() if is_session_id(i)]

    async def summary(self, session_id: SessionId) -> LogSummary | None:
        """Asked of the session's object, as a Worker would over RPC: it wakes a hibernated
        object (which idles out again) but opens no session on the host."""
        return await self._read(session_id, lambda o: o.summary())

    async def read_events(
        self, session_id: SessionId, after: int = 0, limit: int | None = None
    ) -> list[Event] | None:
        return await self._read(session_id, lambda o: o.read_after(after, limit))

    async def _read(self, session_id: SessionId, fn: Callable[[SessionLogObject], T]) -> T | None:
        sid = self._id(session_id)
        if not self.namespace.exists(sid):
            return None  # no object is made for an id that has none
        try:
            return await self.namespace.call(sid, fn)
        except DurableObjectError as exc:
            raise LogError(f"Cannot read the event log of session {sid}: {exc}") from exc

    async def aclose(self) -> None:
        """Commit and close every object (the namespace's end)."""
        await self.namespace.close()
