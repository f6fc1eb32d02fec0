"""kit.client against real hosts: scripted WebSocket servers on port 0 for close codes and
budgets, the in-process stack restarted on its port, and real `kit dev` processes stopped
with Ctrl-C or SIGKILL while a message is on its way."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from kit.cli.stack import Stack, run_stack
from kit.client import (
    ClientError,
    ConnectionLost,
    ConnectionStatus,
    ReconnectPolicy,
    SessionClient,
    SessionRefused,
    StatusChange,
    create_session,
)
from kit.protocol.errors import (
    CLOSE_BAD_REQUEST,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_SESSION_ELSEWHERE,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_LARGE,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNKNOWN_SESSION,
    INTERNAL,
    SHUTTING_DOWN,
)
from kit.protocol.frames import Event
from tests.agents import RECOVERED_REPLY, until_prompt_stored, write_agent
from tests.conftest import stack_settings
from tests.e2e.test_kit_dev import start_kit_dev, stop_kit_dev

QUICK = ReconnectPolicy(first_delay_s=0.02, max_delay_s=0.1, give_up_after_s=60)
WAIT_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _welcome(last_seq: int = 0) -> str:
    return json.dumps(
        {"type": "welcome", "session_id": "s", "resume": "none", "last_seq": last_seq}
    )


@contextlib.asynccontextmanager
async def scripted_host(
    script: Callable[[ServerConnection], Awaitable[None]],
) -> AsyncIterator[tuple[str, list[ServerConnection]]]:
    """A WebSocket server on a free port running ``script`` per connection; yields its URL
    and the connections it took."""
    seen: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        seen.append(ws)
        await script(ws)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/sessions/s/ws", seen


class StatusLog:
    """Every status change, and a way to wait for one."""

    def __init__(self) -> None:
        self.changes: list[StatusChange] = []
        self._changed = asyncio.Event()

    def __call__(self, change: StatusChange) -> None:
        self.changes.append(change)
        self._changed.set()

    async def until(self, status: ConnectionStatus, count: int = 0) -> None:
        """Until the latest change is to ``status`` (or, with ``count``, until ``count``
        changes to it have been seen)."""
        async with asyncio.timeout(WAIT_S):
            while not self._reached(status, count):
                self._changed.clear()
                await self._changed.wait()

    def _reached(self, status: ConnectionStatus, count: int) -> bool:
        if count:
            return len(self.of(status)) >= count
        return bool(self.changes) and self.changes[-1].status is status

    def of(self, status: ConnectionStatus) -> list[StatusChange]:
        """The changes to ``status`` so far."""
        return [c for c in self.changes if c.status is status]


async def _drain(client: SessionClient) -> None:
    """Read events until the client stops (it raises why)."""
    async with asyncio.timeout(WAIT_S):
        async for _event in client.events():
            pass


async def _connect_and_drain(client: SessionClient) -> None:
    await client.connect()
    await _drain(client)


# -- refusals and budgets (scripted hosts) -----------------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "before_welcome"),
    [
        (CLOSE_UNAUTHORIZED, "unauthorized", True),
        (CLOSE_UNKNOWN_SESSION, "unknown_session", True),
        (CLOSE_BAD_REQUEST, "seq_ahead", True),
        (CLOSE_TOO_LARGE, "too_large", False),
    ],
)
async def test_fatal_closes_stop_at_once(code: int, error: str, before_welcome: bool) -> None:
    """Unauthorized, unknown session, seq_ahead and too_large end the client with
    SessionRefused on the first connection: no retry."""

    async def refuse(ws: ServerConnection) -> None:
        await ws.recv()
        if not before_welcome:
            await ws.send(_welcome())
        await ws.send(json.dumps({"type": "error", "code": error, "message": "No."}))
        await ws.close(code, error)

    async with scripted_host(refuse) as (url, seen):
        client = SessionClient(url, "tok", policy=QUICK)
        with pytest.raises(SessionRefused) as refused:
            await _connect_and_drain(client)
        await client.close()
    assert refused.value.code == error
    assert len(seen) == 1
    assert client.reconnects == 0
    assert client.status is ConnectionStatus.CLOSED
    with pytest.raises(SessionRefused):
        await client.send("still there?")


@pytest.mark.parametrize(
    "code", [CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_SLOW_CONSUMER, CLOSE_SESSION_ELSEWHERE]
)
async def test_other_closes_are_retried(code: int) -> None:
    """Shutting down, internal, slow consumer and session elsewhere mean "reconnect"."""
    again = asyncio.Event()

    async def close_first(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(_welcome())
        if again.is_set():
            await ws.wait_closed()
            return
        again.set()
        await ws.close(code, "bye")

    async with scripted_host(close_first) as (url, seen):
        status = StatusLog()
        async with SessionClient(url, "tok", policy=QUICK, on_status=status) as client:
            await status.until(ConnectionStatus.RECONNECTING)
            await status.until(ConnectionStatus.OPEN)
        assert len(seen) == 2
        assert client.reconnects == 1


async def test_gives_up_after_the_budget_with_what_to_do() -> None:
    """A host that never comes back ends the client with ConnectionLost after the budget;
    the message says what to do and carries the messages the host never confirmed."""

    async def welcome_then_die(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(_welcome())
        await ws.close(CLOSE_GOING_AWAY, SHUTTING_DOWN)

    budget = dataclasses.replace(QUICK, give_up_after_s=0.5)
    status = StatusLog()
    async with scripted_host(welcome_then_die) as (url, _seen):
        client = SessionClient(url, "tok", policy=budget, on_status=status)
        await client.connect()
    # The server is gone now: every try is refused.
    await status.until(ConnectionStatus.RECONNECTING)
    msg_id = await client.send("are you there?")  # queued, not raised
    with pytest.raises(ConnectionLost) as lost:
        await _drain(client)
    assert lost.value.unsent == {msg_id: "are you there?"}
    assert "Start the host again" in str(lost.value)
    assert "give_up_after_s" in str(lost.value)
    retries = [c for c in status.changes if c.status is ConnectionStatus.RECONNECTING]
    assert [c.attempt for c in retries] == list(range(1, len(retries) + 1))
    assert all(c.retry_in_s is not None and c.retry_in_s <= 0.1 for c in retries)
    assert status.changes[-1].status is ConnectionStatus.CLOSED
    await client.close()


async def _welcome_then_fail(ws: ServerConnection) -> None:
    """A host that fails on every connection right after its welcome (as one that cannot
    take a message the client re-sends on each connection)."""
    await ws.recv()
    await ws.send(_welcome())
    await ws.close(CLOSE_INTERNAL, INTERNAL)


async def test_a_welcome_alone_does_not_reset_the_backoff() -> None:
    """Welcomed and closed 1011 at once, on every try: the waits keep growing to the cap
    (not 0.1 s after each welcome: 359 reconnects in 20 s), since only a connection that
    stays open healthy_after_s resets them."""
    policy = dataclasses.replace(QUICK, jitter=0, healthy_after_s=WAIT_S)
    status = StatusLog()
    async with scripted_host(_welcome_then_fail) as (url, seen):
        client = SessionClient(url, "tok", policy=policy, on_status=status)
        await client.connect()
        await status.until(ConnectionStatus.RECONNECTING, count=6)
        await client.close()
    retries = status.of(ConnectionStatus.RECONNECTING)[:6]
    assert [c.attempt for c in retries] == [1, 2, 3, 4, 5, 6]
    assert [c.retry_in_s for c in retries] == pytest.approx([0.02, 0.04, 0.08, 0.1, 0.1, 0.1])
    assert all(str(CLOSE_INTERNAL) in c.reason for c in retries)
    assert len(seen) >= 6


async def test_a_healthy_connection_resets_the_backoff() -> None:
    """A connection that stayed open healthy_after_s (0 here) starts the schedule afresh."""
    policy = dataclasses.replace(QUICK, jitter=0, healthy_after_s=0)
    status = StatusLog()
    async with scripted_host(_welcome_then_fail) as (url, _seen):
        client = SessionClient(url, "tok", policy=policy, on_status=status)
        await client.connect()
        await status.until(ConnectionStatus.RECONNECTING, count=3)
        await client.close()
    assert [c.attempt for c in status.of(ConnectionStatus.RECONNECTING)[:3]] == [1, 1, 1]


async def test_a_connection_that_brings_events_resets_the_backoff() -> None:
    """A connection that brought a new event proved the host works: however short it
    was, the schedule starts afresh (a turn streaming when the host dies)."""
    seq = 0

    async def one_event_then_fail(ws: ServerConnection) -> None:
        nonlocal seq
        await ws.recv()
        await ws.send(_welcome(seq))
        seq += 1
        event = {"type": "event", "seq": seq, "kind": "text_delta", "data": {}, "ts": 0}
        await ws.send(json.dumps(event))
        await ws.close(CLOSE_INTERNAL, INTERNAL)

    policy = dataclasses.replace(QUICK, jitter=0, healthy_after_s=WAIT_S)
    status = StatusLog()
    async with scripted_host(one_event_then_fail) as (url, _seen):
        client = SessionClient(url, "tok", policy=policy, on_status=status)
        await client.connect()
        await status.until(ConnectionStatus.RECONNECTING, count=3)
        await client.close()
    assert [c.attempt for c in status.of(ConnectionStatus.RECONNECTING)[:3]] == [1, 1, 1]


async def test_a_host_that_fails_every_connection_is_given_up_on() -> None:
    """Welcomes followed by 1011 do not renew the budget: the client stops with
    ConnectionLost, holding the message the host never confirmed."""
    budget = dataclasses.replace(QUICK, give_up_after_s=0.5, healthy_after_s=WAIT_S)
    async with scripted_host(_welcome_then_fail) as (url, seen):
        client = SessionClient(url, "tok", policy=budget)
        await client.connect()
        msg_id = await client.send("is anyone there?")
        with pytest.raises(ConnectionLost) as lost:
            await _drain(client)
        await client.close()
    assert lost.value.unsent == {msg_id: "is anyone there?"}
    assert len(seen) >= 2


async def test_first_connection_retries_within_the_budget() -> None:
    """No host at all: connect() keeps trying for the budget, then says so."""
    url = f"ws://127.0.0.1:{_free_port()}/v1/sessions/s/ws"
    client = SessionClient(url, "tok", policy=dataclasses.replace(QUICK, give_up_after_s=0.3))
    with pytest.raises(ConnectionLost, match="Gave up reconnecting"):
        await asyncio.wait_for(client.connect(), WAIT_S)
    assert client.reconnects >= 2


async def test_a_message_the_host_would_refuse_is_refused_here() -> None:
    """An empty or oversized message raises at once, before anything is queued."""
    client = SessionClient("ws://127.0.0.1:9/unused", "tok")
    with pytest.raises(ClientError, match="non-empty"):
        await client.send("   ")
    with pytest.raises(ClientError, match="100000"):
        await client.send("x" * 100_001)
    with pytest.raises(ClientError, match=r"user\.text is not valid Unicode \(a lone surrogate"):
        await client.send("half an emoji: \ud83d")
    with pytest.raises(ClientError, match=r"user\.client_msg_id is not valid Unicode"):
        await client.send("hi", client_msg_id="\udc00")
    assert client.unsent == {}
    with pytest.raises(ClientError, match=r"hello\.token is not valid Unicode"):
        SessionClient("ws://127.0.0.1:9/unused", "tok\ud800")


async def test_a_lone_surrogate_never_leaves_the_client(stack: Stack) -> None:
    """Against kit dev's host: a message holding a lone surrogate raises at the call and is
    not queued; the connection stays up (before, it reconnected in a loop and the message
    never left) and the next message gets its turn."""
    info = await create_session(stack.url, stack.api_token)
    status = StatusLog()
    async with SessionClient(info.ws_url, info.token, on_status=status) as client:
        with pytest.raises(ClientError, match="at character 14"):
            await client.send("half an emoji \ud83d")
        assert client.unsent == {}
        async with asyncio.timeout(180):
            events = [e async for e in client.turn("hello")]
    assert events[-1].kind == "result"
    assert [c.status for c in status.changes] == [ConnectionStatus.OPEN, ConnectionStatus.CLOSED]
    assert client.reconnects == 0


# -- a real host, restarted --------------------------------------------------------------


async def test_message_sent_while_the_host_is_down_is_queued_and_applied_once(
    kit_tmp: Path,
) -> None:
    """The stack stops (1001): send() queues instead of raising; the stack starts again on
    the same port and state, and the message is applied once and answered."""
    project = write_agent(kit_tmp / "agent")
    settings = dataclasses.replace(stack_settings(kit_tmp / "state", project), port=_free_port())
    status = StatusLog()
    async with run_stack(settings) as stack:
        info = await create_session(stack.url, stack.api_token)
        client = SessionClient(info.ws_url, info.token, policy=QUICK, on_status=status)
        await client.connect()
    await status.until(ConnectionStatus.RECONNECTING)
    msg_id = await client.send("hello while you were away")
    assert client.status is ConnectionStatus.RECONNECTING
    assert client.unsent == {msg_id: "hello while you were away"}
    try:
        async with run_stack(settings):
            events = await _until_result(client)
    finally:
        await client.close()
    users = [e for e in events if e.kind == "user" and e.data["client_msg_id"] == msg_id]
    assert len(users) == 1
    assert events[-1].data["text"] == "You said: hello while you were away"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert client.unsent == {}


async def _until_result(client: SessionClient, seen: list[Event] | None = None) -> list[Event]:
    events = seen if seen is not None else []
    async with asyncio.timeout(180):
        async for event in client.events():
            events.append(event)
            if event.kind == "result":
                return events
    raise AssertionError("the events ended without a result")


class HoldingProxy:
    """Forwards a loopback port to the host. A held direction is read but kept back; if the
    host goes away meanwhile, what was held is lost with the connection (it is reset), as
    if the host died just before sending, or just before receiving."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self.release()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def hold(self, *, up: bool) -> None:
        """Hold what the host sends, and with ``up`` also what the client sends."""
        self._down.clear()
        if up:
            self._up.clear()

    def release(self) -> None:
        self._up.set()
        self._down.set()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        up = asyncio.create_task(_forward(reader, up_writer, self._up))
        await _forward(up_reader, writer, self._down)
        writer.transport.abort()  # the host is gone: so is whatever was held for the client
        up.cancel()


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    """Copy until EOF; while ``flowing`` is clear, keep what is read."""
    held = bytearray()
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            held += data
            if flowing.is_set():
                writer.write(bytes(held))
                held.clear()
                await writer.drain()
    if flowing.is_set():
        writer.close()


def _env(state: Path) -> dict[str, str]:
    env = {**os.environ, "KIT_STATE_DIR": str(state)}
    env.pop("ANTHROPIC_API_KEY", None)
    return env


@pytest.mark.parametrize(
    ("sig", "stored"),
    [(signal.SIGINT, True), (signal.SIGKILL, True), (signal.SIGKILL, False)],
    ids=["ctrl-c-after-storing", "sigkill-after-storing", "sigkill-before-receiving"],
)
async def test_host_dies_while_a_message_is_on_its_way(
    kit_tmp: Path, sig: int, stored: bool
) -> None:
    """`kit dev` dies (Ctrl-C: 1001; SIGKILL) with a message on its way: stored but its
    user event never sent, or never received at all. Restarted on the same port and state,
    the client resumes, the message is applied exactly once and the reply is right."""
    project = write_agent(kit_tmp / "agent")
    state = kit_tmp / "state"
    port = _free_port()
    first = await start_kit_dev(project, _env(state), port)
    second = None
    proxy = HoldingProxy(port)
    await proxy.start()
    info = await create_session(first.url, (state / "api-token").read_text().strip())
    observer = SessionClient(info.ws_url, info.token, policy=QUICK)
    status = StatusLog()
    client = SessionClient(
        f"ws://127.0.0.1:{proxy.port}/v1/sessions/{info.session_id}/ws",
        info.token,
        policy=QUICK,
        on_status=status,
    )
    # "wait for go": its tool waits, so the turn still runs when the host dies, and the
    # restarted host recovers it; a message that never arrived is simply answered.
    text = "wait for go" if stored else "hello there"
    try:
        await observer.connect()
        await client.connect()
        proxy.hold(up=not stored)
        msg_id = await client.send(text)
        if stored:
            async with asyncio.timeout(WAIT_S):
                async for event in observer.events():
                    if event.kind == "tool_use":
                        break
            await until_prompt_stored(state, info.session_id, text)
        first.proc.send_signal(sig)
        await asyncio.wait_for(first.proc.wait(), WAIT_S)
        await status.until(ConnectionStatus.RECONNECTING)
        assert client.unsent == {msg_id: text}  # it never saw the user event
        proxy.release()
        restarted_ms = time.time() * 1000
        second = await start_kit_dev(project, _env(state), port)
        events = await _until_result(client)
    finally:
        await client.close()
        await observer.close()
        await proxy.aclose()
        if second is not None:
            await stop_kit_dev(second)
        await stop_kit_dev(first)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # the whole log, once
    users = [e for e in events if e.kind == "user" and e.data["client_msg_id"] == msg_id]
    assert len(users) == 1
    # Stored by the first host, or sent again by the client and stored by the second.
    assert (users[0].ts < restarted_ms) is stored
    results = [e for e in events if e.kind == "result"]
    assert len(results) == 1
    assert results[0].turn_id == users[0].turn_id
    reply = RECOVERED_REPLY if stored else "You said: hello there"
    assert reply in results[0].data["text"]
    assert client.unsent == {}


# -- interrupt ---------------------------------------------------------------------------


@pytest.fixture
async def agent_stack(kit_tmp: Path) -> AsyncIterator[tuple[SessionClient, object]]:
    """The test agent's stack and a connected client."""
    project = write_agent(kit_tmp / "agent")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            yield client, stack


async def test_interrupt_with_no_turn_says_so(
    agent_stack: tuple[SessionClient, object],
) -> None:
    """An interrupt with nothing running is answered: no turn, nothing interrupted."""
    client, _stack = agent_stack
    ack = await asyncio.wait_for(client.interrupt(), WAIT_S)
    assert ack.turn_id is None
    assert not ack.interrupted


async def test_interrupt_stops_the_running_turn(
    agent_stack: tuple[SessionClient, object],
) -> None:
    """An interrupt while a reply trickles in names the turn, says it was interrupted,
    and the turn ends early with an error result."""
    client, _stack = agent_stack
    msg_id = await client.send("trickle the reply")
    turn_id = None
    ack = None
    events: list[Event] = []
    async with asyncio.timeout(WAIT_S):
        async for event in client.events():
            events.append(event)
            if event.kind == "user" and event.data["client_msg_id"] == msg_id:
                turn_id = event.turn_id
            if event.kind == "text_delta" and ack is None:
                ack = await client.interrupt()
            if event.kind == "result":
                break
    assert ack is not None
    assert ack.turn_id == turn_id
    assert ack.interrupted
    assert events[-1].turn_id == turn_id
    assert events[-1].data["is_error"]
    assert events[-1].data["subtype"] == "error_during_execution"
    assert "twelve" not in "".join(e.data.get("text", "") for e in events)


async def test_interrupt_racing_a_turns_start_is_honest(
    agent_stack: tuple[SessionClient, object],
) -> None:
    """Interrupts sent right behind their message always name that (open) turn, and a turn
    the ack says was not interrupted finishes normally."""
    client, _stack = agent_stack
    for round_ in range(3):
        msg_id = await client.send(f"round {round_}")
        ack = await asyncio.wait_for(client.interrupt(), WAIT_S)
        events = await _until_result(client)
        user = next(e for e in events if e.kind == "user" and e.data["client_msg_id"] == msg_id)
        assert ack.turn_id == user.turn_id  # never "no turn" while it is open
        if not ack.interrupted:
            assert events[-1].data["subtype"] == "success"


async def test_interrupt_while_the_sandbox_restarts_is_honest(
    agent_stack: tuple[SessionClient, object], kit_tmp: Path
) -> None:
    """The sandbox dies mid-turn; an interrupt sent on its death names the open turn and
    says nothing was interrupted (no sandbox runs it), and indeed the turn goes on."""
    client, stack = agent_stack
    msg_id = await client.send("trickle the reply")
    turn_id = ack = None
    events: list[Event] = []
    async with asyncio.timeout(120):
        async for event in client.events():
            events.append(event)
            if event.kind == "user" and event.data["client_msg_id"] == msg_id:
                turn_id = event.turn_id
            if event.kind == "text_delta" and turn_id is not None and ack is None:
                assert client.session_id is not None
                await until_prompt_stored(kit_tmp / "state", client.session_id, "trickle the reply")
                await stack.provider.kill(client.session_id)  # type: ignore[attr-defined]
            if event.kind == "sandbox" and event.data["state"] == "died" and ack is None:
                ack = await client.interrupt()
            if event.kind == "result":
                break
    assert ack is not None
    assert ack.turn_id == turn_id
    # The ack comes within milliseconds of the death; a new runtime takes hundreds of
    # milliseconds to come up, and until then no sandbox runs the turn.
    assert not ack.interrupted
    assert events[-1].data["subtype"] == "success"
    assert RECOVERED_REPLY in events[-1].data["text"]


async def test_an_unanswered_interrupt_is_sent_again_after_a_reconnect(kit_tmp: Path) -> None:
    """An interrupt asked for while the host is away waits, goes out once the client is
    back, and is answered."""
    settings = dataclasses.replace(
        stack_settings(kit_tmp / "state", write_agent(kit_tmp / "agent")), port=_free_port()
    )
    status = StatusLog()
    async with run_stack(settings) as stack:
        info = await create_session(stack.url, stack.api_token)
        client = SessionClient(info.ws_url, info.token, policy=QUICK, on_status=status)
        await client.connect()
    await status.until(ConnectionStatus.RECONNECTING)
    pending = asyncio.create_task(client.interrupt())
    try:
        async with run_stack(settings):
            ack = await asyncio.wait_for(pending, WAIT_S)
    finally:
        await client.close()
    assert ack.turn_id is None
    assert not ack.interrupted
