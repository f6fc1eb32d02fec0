"""The session host on the emulator's Durable Objects: the event log in DO storage, an
oversize write refused with Cloudflare's text, and eviction in the middle of a turn."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator.durable_objects import DOLogStore, DOSessionLog, LimitExceeded
from emulator.durable_objects.limits import MAX_VALUE_BYTES, TOO_BIG
from kit.cli.stack import Stack, run_stack
from kit.host.errors import LogError
from kit.host.eventlog import OPEN_TURN_STATES, Turn, TurnState
from kit.ids import TurnId, new_session_id
from kit.protocol.frames import MAX_TEXT_CHARS, Event
from tests.agents import RECOVERED_REPLY, open_session, until_prompt_stored, write_agent
from tests.conftest import stack_settings


class Probe:
    """A subscriber that records what it is handed."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def deliver(self, event: Event) -> None:
        self.seen.append(event)

    def moved(self, message: str) -> None:
        raise AssertionError(message)


def _rows(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT seq, kind FROM events ORDER BY seq").fetchall()


async def test_an_oversize_append_fails_with_cloudflares_text_and_changes_nothing(
    kit_tmp: Path,
) -> None:
    """Through the log seam: refused (LogError carrying ``string or blob too big:
    SQLITE_TOOBIG``), all of a batch or none, and seqs go on with no gap, even after an
    eviction."""
    logs = DOLogStore.in_dir(kit_tmp / "sessions")
    log = await logs.create(new_session_id(), {"tier": "basic"})
    assert isinstance(log, DOSessionLog)
    await log.append("sandbox", {"state": "starting"})
    big = "x" * MAX_VALUE_BYTES
    with pytest.raises(LogError) as caught:
        await log.append("tool_result", {"content": big})
    assert TOO_BIG in str(caught.value)
    assert isinstance(caught.value.__cause__, LimitExceeded)
    assert str(caught.value.__cause__) == TOO_BIG
    with pytest.raises(LogError, match=TOO_BIG):
        await log.append_many([("text_delta", {"text": "fine"}), ("tool_result", {"c": big})])
    with pytest.raises(LogError, match=TOO_BIG):
        await log.add_user_turn("m1", big)
    assert log.last_seq == 1
    assert _rows(log.path) == [(1, "sandbox")]
    assert await log.open_turns() == []
    await logs.namespace.evict(log.session_id)
    again = await logs.open(log.session_id)
    assert again is not None
    assert again.last_seq == 1
    added = await again.add_user_turn("m1", "now a small one")  # m1 was never applied
    assert added is not None
    assert added[1].seq == 2
    await logs.aclose()


async def test_kit_dev_keeps_the_event_log_in_durable_objects(stack: Stack) -> None:
    """``kit dev``'s log store is the DO one; a user message at the protocol's limits is
    stored and replayed byte for byte; an oversize event is refused and the session goes on."""
    assert isinstance(stack.host.logs, DOLogStore)
    client, session = await open_session(stack)
    assert isinstance(session.log, DOSessionLog)
    text = "é" * MAX_TEXT_CHARS  # 200 kB of UTF-8 in one user event row
    events = [e async for e in client.turn(text)]
    assert events[-1].kind == "result"
    stored = await session.log.read_after(0)
    assert next(e for e in stored if e.kind == "user").data["text"] == text
    before = _rows(session.log.path)

    probe = Probe()
    session.subscribe(probe)
    with pytest.raises(LogError, match=TOO_BIG):
        await session.emit("tool_result", {"content": "x" * MAX_VALUE_BYTES})
    assert probe.seen == []
    assert _rows(session.log.path) == before
    session.detach(probe)

    more = [e async for e in client.turn("Where is my order 1042?")]
    assert more[0].seq == before[-1][0] + 1
    assert more[-1].kind == "result"
    await client.close()


@pytest.fixture
async def agent_stack(kit_tmp: Path) -> AsyncIterator[Stack]:
    """The test agent (it has a slow tool) on a local stack."""
    project = write_agent(kit_tmp / "agent")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as running:
        yield running


async def test_evicting_mid_turn_loses_and_repeats_no_event(agent_stack: Stack) -> None:
    """Evict the session's object (control API) while a tool runs: sockets close with
    1001, the client resumes, the host rebuilds the session from storage and finishes the
    turn; the client saw every event once, in order, exactly the log's."""
    stack = agent_stack
    client, session = await open_session(stack)
    namespace = stack.host.logs.namespace  # type: ignore[attr-defined]
    seen: list[Event] = []
    evicted = False
    await client.send("echo this first")
    async with asyncio.timeout(120), httpx.AsyncClient(base_url=stack.url) as http:
        async for event in client.events():
            seen.append(event)
            if event.kind == "result" and [e.kind for e in seen].count("result") == 1:
                generation = namespace.generation(session.id)
                await client.send("run the slow tool")
            in_second_turn = [e.kind for e in seen].count("result") == 1
            if event.kind == "tool_use" and in_second_turn and not evicted:
                await until_prompt_stored(stack.settings.state_dir, session.id, "run the slow tool")
                r = await http.post(
                    f"/_emulator/do/SessionLog/objects/{session.id}/evict",
                    headers={"authorization": f"Bearer {stack.api_token}"},
                )
                assert r.json() == {"evicted": True}
                evicted = True
            if event.kind == "result" and evicted:
                break
    assert client.reconnects >= 1
    assert session.closed  # the old in-memory session is gone ...
    reloaded = await stack.host.get(session.id)
    assert reloaded is not None
    assert reloaded is not session  # ... and a new one was built from storage
    assert namespace.generation(session.id) > generation
    logged = await reloaded.log.read_after(0)
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert [(e.seq, e.kind) for e in seen] == [(e.seq, e.kind) for e in logged[: len(seen)]]
    assert [e.kind for e in seen].count("result") == 2
    assert RECOVERED_REPLY in seen[-1].data["text"]
    await client.close()


async def test_open_turns_known_from_the_logs_own_writes(kit_tmp: Path) -> None:
    """The log answers ``open_turns`` from its own writes (a warm turn asks twice and pays
    no call for it); after every write its answer is what the object's storage says, and a
    failed write makes it ask the object again."""
    logs = DOLogStore.in_dir(kit_tmp / "sessions")
    log = await logs.create(new_session_id(), {"tier": "basic"})
    calls = 0
    real_call = logs.namespace.call

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real_call(*args, **kwargs)

    logs.namespace.call = counted  # type: ignore[method-assign]

    async def stored() -> list[Turn]:
        fresh = await logs.open(log.session_id)
        assert fresh is not None
        return await fresh.open_turns()

    assert await log.open_turns() == []
    steps: list[tuple[str, TurnState | None, bool]] = [
        ("add", None, False),
        ("add", None, False),
        ("t1", TurnState.RUNNING, True),
        ("t1", TurnState.INTERRUPTED, False),
        ("t1", TurnState.RUNNING, True),
        ("t1", TurnState.COMPLETED, False),
        ("t2", TurnState.RUNNING, True),
        ("t9", TurnState.RUNNING, False),  # a turn it never saw open: it asks again
        ("add", None, False),
        ("t2", TurnState.FAILED, False),
    ]
    for n, (what, state, attempt) in enumerate(steps):
        if what == "add":
            await log.add_user_turn(f"m{n}", f"message {n}")
        else:
            assert state is not None
            await log.set_turn_state(TurnId(what), state, attempt=attempt)
        before = calls
        mine = await log.open_turns()
        assert calls - before == (1 if what == "t9" else 0)
        assert mine == await stored()
    assert [t.turn_id for t in await log.open_turns()] == ["t3"]
    big = "x" * MAX_VALUE_BYTES
    with pytest.raises(LogError, match=TOO_BIG):
        await log.add_user_turn("m-big", big)
    before = calls
    assert await log.open_turns() == await stored()
    assert calls - before == 1 + 3  # its own read, then the fresh log's open and read
    await logs.aclose()


@pytest.mark.parametrize("first", ["submit", "runner", "reader"])
async def test_open_turns_stay_true_when_calls_overlap(kit_tmp: Path, first: str) -> None:
    """A submit, the runner's state change and a read of the open turns at once (each is
    a call to the object; a session does not order them): the log's answer afterwards is
    still what the object's storage says."""
    logs = DOLogStore.in_dir(kit_tmp / "sessions")
    log = await logs.create(new_session_id(), {"tier": "basic"})
    await log.add_user_turn("m1", "one")
    await log.set_turn_state(TurnId("t1"), TurnState.RUNNING, attempt=True)
    if first != "reader":
        await log.open_turns()  # known, as a warm session's log has it
    calls = {
        "submit": lambda: log.add_user_turn("m2", "two"),
        "runner": lambda: log.set_turn_state(TurnId("t1"), TurnState.COMPLETED),
        "reader": log.open_turns,
    }
    order = [first, *(name for name in calls if name != first)]
    await asyncio.gather(*(calls[name]() for name in order))
    fresh = await logs.open(log.session_id)
    assert fresh is not None
    assert await log.open_turns() == await fresh.open_turns()
    assert [t.turn_id for t in await log.open_turns()] == ["t2"]
    await logs.aclose()


async def test_an_answer_and_its_turns_end_are_one_call(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turn's ``result`` and its COMPLETED state go to the object in one call: with
    every later state write failing (a host that dies right after the answer), the stored
    turn is still closed and a restart would not run it again."""

    alive = DOSessionLog.set_turn_state

    async def dead(
        self: DOSessionLog, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        if state not in OPEN_TURN_STATES:
            raise LogError("the host died here")
        await alive(self, turn_id, state, attempt=attempt)

    monkeypatch.setattr(DOSessionLog, "set_turn_state", dead)
    client, session = await open_session(stack)
    events = [e async for e in client.turn("Where is my order 1042?")]
    assert events[-1].kind == "result"
    assert "1Z999AA10123456784" in events[-1].data["text"]
    fresh = await stack.host.logs.open(session.id)
    assert fresh is not None
    assert await fresh.open_turns() == []
    await client.close()
