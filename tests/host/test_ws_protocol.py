"""The host's WebSocket against real sockets: golden transcripts, bad input, idempotency."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session
from kit.host.app import REPLAY_PAGE, create_app
from kit.protocol import errors as e
from kit.protocol.golden import golden_names
from tests.agents import write_agent
from tests.conftest import serve_on_loopback, stack_settings
from tests.host.wsdriver import Driver, replay_golden


async def _new(stack: Stack) -> tuple[str, dict[str, str]]:
    info = await create_session(stack.url, stack.api_token)
    return info.ws_url, {"token": info.token, "session_id": info.session_id}


@pytest.mark.parametrize("name", golden_names())
async def test_golden_transcripts(stack: Stack, name: str) -> None:
    """kit dev's host reproduces every golden transcript over a real WebSocket."""
    ws_url, variables = await _new(stack)
    await replay_golden(name, ws_url, variables)


@pytest.mark.parametrize("name", ["bad_input", "oversize"])
async def test_bad_input_stores_nothing(stack: Stack, name: str) -> None:
    """After a transcript of bad input nothing it sent is stored (invariant 8): no event
    at all (a hello starts no sandbox), no turn."""
    ws_url, variables = await _new(stack)
    await replay_golden(name, ws_url, variables)
    session = await stack.host.get(variables["session_id"])
    assert session is not None
    assert await session.log.read_after(0) == []
    assert await session.log.open_turns() == []


async def test_unknown_session_closes_4404(stack: Stack) -> None:
    """A hello to a session that does not exist → unknown_session, close 4404."""
    driver = await Driver.open(
        stack.url.replace("http", "ws", 1) + "/v1/sessions/00000000-0000-4000-8000-000000000000/ws"
    )
    await driver.send({"type": "hello", "token": "x", "last_seq": None})
    assert (await driver.recv())["code"] == "unknown_session"
    assert await driver.close_code() == e.CLOSE_UNKNOWN_SESSION


async def test_binary_frames_are_refused(stack: Stack) -> None:
    """A binary WebSocket message gets bad_frame and the socket stays usable."""
    ws_url, _variables = await _new(stack)
    driver = await Driver.open(ws_url)
    await driver.ws.send(b"\x00\x01")
    assert (await driver.recv())["code"] == "bad_frame"
    await driver.send({"type": "ping"})
    assert (await driver.recv())["type"] == "pong"


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"hello","token":"\\ud800","last_seq":null}',
        '{"type":"user","client_msg_id":"\\ud800","text":"hi"}',
        '{"type":"user","client_msg_id":"m1","text":"half an emoji \\ud83d"}',
    ],
    ids=["hello.token", "user.client_msg_id", "user.text"],
)
async def test_a_lone_surrogate_is_a_bad_frame_not_a_host_fault(stack: Stack, raw: str) -> None:
    """A lone UTF-16 surrogate (as a browser's JSON.stringify sends half an emoji) gets
    bad_frame naming the field; the socket stays open (no 1011), the session still
    works and nothing is stored."""
    ws_url, variables = await _new(stack)
    driver = await Driver.open(ws_url)
    hello = {"type": "hello", "token": variables["token"], "last_seq": None}
    if '"user"' in raw:
        await driver.send(hello)
        assert (await driver.recv())["type"] == "welcome"
    await driver.send(raw)
    error = await driver.recv()
    assert error["code"] == "bad_frame"
    assert "is not valid Unicode" in error["message"]
    if '"hello"' in raw:
        await driver.send(hello)
        assert (await driver.recv())["type"] == "welcome"
    await driver.send({"type": "ping"})
    assert (await driver.recv())["type"] == "pong"
    await driver.close()
    session = await stack.host.get(variables["session_id"])
    assert session is not None
    assert await session.log.read_after(0) == []


async def test_creating_a_session_needs_the_api_token(stack: Stack) -> None:
    """POST /v1/sessions without the host's API token is 401 and creates nothing."""
    before = len(await stack.host.session_ids())
    async with httpx.AsyncClient() as http:
        r = await http.post(stack.url + "/v1/sessions", headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert len(await stack.host.session_ids()) == before


async def test_repeated_client_msg_id_is_applied_once(stack: Stack) -> None:
    """The same client_msg_id twice → one user event, one turn (invariant 3)."""
    ws_url, variables = await _new(stack)
    driver = await Driver.open(ws_url)
    await driver.send({"type": "hello", "token": variables["token"], "last_seq": None})
    await driver.recv()
    await driver.send({"type": "user", "client_msg_id": "same", "text": "hello"})
    await driver.until("result")
    await driver.send({"type": "user", "client_msg_id": "same", "text": "hello"})
    await driver.send({"type": "ping"})
    assert (await driver.recv())["type"] == "pong"
    session = await stack.host.get(variables["session_id"])
    assert session is not None
    users = [ev for ev in await session.log.read_after(0) if ev.kind == "user"]
    assert len(users) == 1
    assert await session.log.open_turns() == []


async def test_hello_deadline_is_not_extended_by_other_frames(stack: Stack) -> None:
    """Pings before hello do not keep an unauthenticated socket open past the deadline."""
    app = create_app(stack.host, api_token=stack.api_token, hello_timeout_s=0.5)
    async with serve_on_loopback(app) as base:
        _, variables = await _new(stack)
        driver = await Driver.open(
            f"{base.replace('http', 'ws', 1)}/v1/sessions/{variables['session_id']}/ws"
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        frames = []
        for _ in range(50):  # bounded: a ping every 0.1 s would hold it 5 s if the deadline moved
            try:
                await driver.send({"type": "ping"})
                frames.append(await driver.recv())
            except ConnectionClosed:
                break
            if frames[-1].get("type") == "error":
                break
            await asyncio.sleep(0.1)
        if frames[-1].get("type") == "error":
            assert frames[-1]["code"] == "hello_required"
            assert await driver.close_code() == e.CLOSE_BAD_REQUEST
        else:
            assert driver.ws.close_code == e.CLOSE_BAD_REQUEST
        assert loop.time() - started < 2.0


async def test_api_token_needs_the_bearer_scheme(stack: Stack) -> None:
    """The bare API token without 'Bearer ' is refused."""
    async with httpx.AsyncClient() as http:
        bare = await http.post(
            stack.url + "/v1/sessions", headers={"authorization": stack.api_token}
        )
        good = await http.post(
            stack.url + "/v1/sessions", headers={"authorization": f"bearer {stack.api_token}"}
        )
    assert bare.status_code == 401
    assert good.status_code == 201


async def test_a_long_replay_is_paged_and_misses_nothing_committed_meanwhile(
    stack: Stack,
) -> None:
    """A backlog of several replay pages, with the session committing more events while the
    pages go out: the client gets 1..n exactly once, in order, replayed then live."""
    info = await create_session(stack.url, stack.api_token)
    session = await stack.host.get(info.session_id)
    assert session is not None
    backlog = REPLAY_PAGE * 3 + 17
    await session.emit_many([("text_delta", {"text": f"{i}"}) for i in range(backlog)], None)
    driver = await Driver.open(info.ws_url)
    await driver.send({"type": "hello", "token": info.token, "last_seq": 0})
    welcome = await driver.recv()
    assert welcome["resume"] == "resuming"
    await driver.send({"type": "ack", "seq": 0})

    async def commit_more() -> None:
        for i in range(200):
            await session.emit("text_delta", {"text": f"live {i}"})
            await asyncio.sleep(0)

    more = asyncio.create_task(commit_more())
    seqs: list[int] = []
    replayed: list[bool] = []
    async with asyncio.timeout(60):
        while not (more.done() and seqs and seqs[-1] >= session.log.last_seq):
            frame = await driver.recv()
            if frame.get("type") != "event":
                continue
            seqs.append(frame["seq"])
            replayed.append(bool(frame.get("replay")))
    await more
    assert seqs == list(range(1, session.log.last_seq + 1))
    assert all(replayed[:backlog])
    assert replayed == sorted(replayed, reverse=True)  # replay first, then live only
    await driver.close()


async def test_an_idle_session_is_unloaded_and_comes_back_whole(kit_tmp: Path) -> None:
    """No client and no sandbox for a while: the host unloads the session (log closed, no
    memory, no lease held); the next hello loads it again with every event and turn."""
    project = write_agent(kit_tmp / "agent", extra_toml="idle_timeout = 1")
    async with run_stack(stack_settings(kit_tmp / "state", project, grace_s=1.0)) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            assert [e.kind async for e in client.turn("hello")][-1] == "result"
            last = client.last_seq
        for _ in range(100):  # sandbox idle-stopped after 1 s, session unloaded 1 s later
            if all(s.id != info.session_id for s in stack.host.live_sessions()):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the idle session was never unloaded")
        async with SessionClient(info.ws_url, info.token, last_seq=0) as client:
            replayed = [await anext(aiter(client.events())) for _ in range(last or 0)]
            assert [e.seq for e in replayed] == list(range(1, (last or 0) + 1))
            assert [e.kind async for e in client.turn("again")][-1] == "result"
        session = await stack.host.get(info.session_id)
        assert session is not None
        logged = await session.log.read_after(0)
        assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
        stops = [e.data.get("reason") for e in logged if e.data.get("state") == "stopped"]
        assert stops[:1] == ["idle"]
        assert [e.data["text"] for e in logged if e.kind == "user"] == ["hello", "again"]
