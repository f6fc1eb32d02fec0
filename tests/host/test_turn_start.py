"""A turn sent to a session with no other turn open starts in the commit of its ``user``
event (``SessionLog.add_user_turn``'s ``start``): stored RUNNING with its first sandbox
attempt counted, which is what the turn planner would otherwise record in a commit of its
own before the sandbox is asked. Checked on a real session, its SQLite log and a scripted
runtime on loopback: the runtime is asked for a fresh turn (not a recovery), the answer
reaches the client, and no host restart loses the count of attempts."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kit.host.eventlog import SessionLog, SQLiteLogStore, TurnState
from kit.host.sandbox import SandboxSpec
from kit.host.session import Session
from kit.ids import TurnId, new_session_id
from kit.protocol.frames import Event
from tests.host.scripted_runtime import Runtime, serving
from tests.host.test_pool import FakeProvider, FakeSandbox, env_for

WAIT_S = 10.0


class ScriptedProvider(FakeProvider):
    """Sandboxes whose runtime is the scripted one at ``endpoint``."""

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        sandbox = await super().start(spec)
        sandbox.endpoint = self.endpoint
        return sandbox


class Reader:
    """A client of the session: what it reads, and a wait for a turn's ``result``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._arrived = asyncio.Event()

    def deliver(self, event: Event) -> None:
        self.events.append(event)
        self._arrived.set()

    def moved(self, message: str) -> None:
        raise AssertionError(message)

    async def result_of(self, turn_id: TurnId) -> str:
        async with asyncio.timeout(WAIT_S):
            while True:
                for event in self.events:
                    if event.kind == "result" and event.turn_id == turn_id:
                        return str(event.data["text"])
                self._arrived.clear()
                await self._arrived.wait()


@pytest.fixture
async def runtime() -> AsyncIterator[tuple[Runtime, str]]:
    scripted = Runtime()
    async with serving(scripted) as endpoint:
        yield scripted, endpoint


def _rows(log: SessionLog) -> list[tuple[str, str, int]]:
    path = log.path  # type: ignore[attr-defined]
    with sqlite3.connect(path) as db:
        return db.execute("SELECT turn_id, state, attempts FROM turns ORDER BY user_seq").fetchall()


async def test_a_turn_on_an_idle_session_starts_with_its_user_event(
    kit_tmp: Path, runtime: tuple[Runtime, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two turns, one after the other: neither writes RUNNING after its ``user`` event's
    commit, the runtime is asked for each as a fresh turn, each answer reaches the client,
    and each turn is stored COMPLETED after one attempt. (Broken on purpose once: without
    ``start`` the runner wrote RUNNING for each → ``moves`` not empty.)"""
    scripted, endpoint = runtime
    log = await SQLiteLogStore(kit_tmp / "sessions").create(new_session_id(), {"tier": "basic"})
    moves: list[tuple[TurnId, TurnState]] = []
    write = log.set_turn_state

    async def set_turn_state(turn_id: TurnId, state: TurnState, *, attempt: bool = False) -> None:
        moves.append((turn_id, state))
        await write(turn_id, state, attempt=attempt)

    monkeypatch.setattr(log, "set_turn_state", set_turn_state)
    session = Session(log, env_for(ScriptedProvider(endpoint)))
    reader = Reader()
    session.subscribe(reader)
    try:
        assert await session.submit("m1", "one")
        assert await reader.result_of(TurnId("t1")) == "answer to one"
        assert await session.submit("m2", "two")
        assert await reader.result_of(TurnId("t2")) == "answer to two"
    finally:
        await session.close()
    assert moves == []
    assert [(t.turn_id, t.text, t.recover) for t in scripted.turns] == [
        ("t1", "one", False),
        ("t2", "two", False),
    ]
    assert _rows(log) == [("t1", "completed", 1), ("t2", "completed", 1)]


class HeldLog:
    """A session log whose ``add_user_turn`` holds on after its commit (as an fsync or a
    lease renewal does) until ``release`` is set; ``committed`` is set when it got there."""

    def __init__(self, log: SessionLog) -> None:
        self._log = log
        self.hold = False
        self.committed = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._log, name)

    async def add_user_turn(self, client_msg_id: str, text: str, *, start: bool = False) -> object:
        added = await self._log.add_user_turn(client_msg_id, text, start=start)
        if self.hold:
            self.committed.set()
            await self.release.wait()
        return added


async def test_the_runner_never_reads_a_started_turn_before_it_is_marked(
    kit_tmp: Path, runtime: tuple[Runtime, str]
) -> None:
    """The runner looks at the open turns while a submit's commit is done but the submit is
    not (its log still waits for an fsync): it must not take the started turn for one a dead
    host left RUNNING and recover it (a recovery prompt, a second attempt counted). (Broken
    on purpose once: the runner's read outside the session's lock → the runtime was asked
    for ``t2`` with ``recover`` and the turn stored 2 attempts.)"""
    scripted, endpoint = runtime
    held = HeldLog(
        await SQLiteLogStore(kit_tmp / "sessions").create(new_session_id(), {"tier": "basic"})
    )
    session = Session(held, env_for(ScriptedProvider(endpoint)))  # type: ignore[arg-type]
    reader = Reader()
    session.subscribe(reader)
    try:
        assert await session.submit("m1", "one")
        assert await reader.result_of(TurnId("t1")) == "answer to one"
        held.hold = True
        submitting = asyncio.create_task(session.submit("m2", "two"))
        async with asyncio.timeout(WAIT_S):
            await held.committed.wait()
        session.refresh()  # the runner wakes and looks at the open turns now
        for _ in range(100):  # loop turns (no time): the runner's way to its read is a few
            await asyncio.sleep(0)
        held.release.set()
        assert await submitting
        assert await reader.result_of(TurnId("t2")) == "answer to two"
    finally:
        await session.close()
    assert [(t.turn_id, t.recover) for t in scripted.turns] == [("t1", False), ("t2", False)]
    assert _rows(held._log) == [("t1", "completed", 1), ("t2", "completed", 1)]
