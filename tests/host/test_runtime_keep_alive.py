"""The host's runtime client keeps a connection between requests (kit/host/runtime_client.py):
a turn then costs no connect or accept on either side. These tests hold it to what keeping
must not change: every turn reads its own answer, a request reaches the runtime once, a
connection with anything left unread on it is never used again."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest

from kit.host import runtime_client
from kit.host.runtime_client import RuntimeClient, SandboxGone
from kit.protocol.runtime_api import TurnRequest
from kit.runtime.server import create_app, http_server
from tests.host.scripted_runtime import Runtime, header, serving
from tests.runtime.offline import offline_agent

TOKEN = "token"


async def _turn(client: RuntimeClient, text: str) -> list[str]:
    """The texts of a turn's events, read to the stream's end."""
    request = TurnRequest(turn_id="t1", text=text, recover=False)
    return [ev.data["text"] async for batch in client.stream_turn(request) for ev in batch]


async def test_turns_on_a_kept_connection_each_read_their_own_answer() -> None:
    """Three turns and a health probe between them use one connection, and each turn
    reads the answer to its own text. (Broken on purpose once: every connection closed
    after its request → 4 connections.)"""
    runtime = Runtime()
    async with serving(runtime) as endpoint:
        client = RuntimeClient(endpoint, TOKEN, keep_alive=True)
        for text in ("one", "two"):
            assert await _turn(client, text) == [f"answer to {text}"] * 2
        assert (await client.health())["ready"] is True
        assert await _turn(client, "three") == ["answer to three"] * 2
        await client.aclose()
    assert runtime.connections == 1
    assert runtime.answered == ["one", "two", "three"]
    assert all(header(head, b"connection") is None for head in runtime.requests)


async def test_an_answer_with_no_body_ends_with_its_head() -> None:
    """A file put is answered 204 with no length (as uvicorn answers it): the answer ends
    with its head, the connection is kept, and the next request is answered on it. (Broken
    on purpose once: the 204's body read to the connection's end → a kept connection waited
    forever; the files tests of the real stack hung so.)"""
    runtime = Runtime()
    async with serving(runtime) as endpoint, asyncio.timeout(10):
        client = RuntimeClient(endpoint, TOKEN, keep_alive=True)
        await client.put_file("notes/a.txt", b"first")
        await client.put_file("notes/a.txt", b"second")
        assert await _turn(client, "one") == ["answer to one"] * 2
        await client.aclose()
    assert runtime.files == [b"first", b"second"]
    assert runtime.connections == 1


async def test_a_kept_connection_closed_before_an_answer_is_replaced_once() -> None:
    """The runtime closes the kept connection when the next request arrives, without a
    byte of an answer (its side timed out just then): the request goes again on a new
    connection, and the turn reads its answer, run once. (Broken on purpose once: no
    second try → SandboxGone.)"""
    runtime = Runtime(drop={2})
    async with serving(runtime) as endpoint:
        client = RuntimeClient(endpoint, TOKEN, keep_alive=True)
        assert await _turn(client, "one") == ["answer to one"] * 2
        assert await _turn(client, "two") == ["answer to two"] * 2
        await client.aclose()
    assert runtime.connections == 2
    assert runtime.answered == ["one", "two"]


async def test_a_kept_connection_reset_after_part_of_an_answer_is_not_tried_again() -> None:
    """The runtime took the turn and began its answer on the kept connection, then the
    connection was reset: the turn is the sandbox gone, never sent again (the runtime runs
    it once). (Broken on purpose once: a reset counted as "closed before an answer" however
    much had come → the runtime ran ``two`` twice.)"""
    runtime = Runtime(reset_after_head={2})
    async with serving(runtime) as endpoint:
        client = RuntimeClient(endpoint, TOKEN, keep_alive=True)
        assert await _turn(client, "one") == ["answer to one"] * 2
        with pytest.raises(SandboxGone):
            await _turn(client, "two")
        await client.aclose()
    assert runtime.answered == ["one", "two"]


async def test_a_new_connection_closed_before_an_answer_is_the_sandbox_gone() -> None:
    """Only a kept connection is tried again: a new one that breaks is the runtime gone,
    and the request is not sent twice."""
    runtime = Runtime(drop={1})
    async with serving(runtime) as endpoint:
        client = RuntimeClient(endpoint, TOKEN, keep_alive=True)
        with pytest.raises(SandboxGone):
            await _turn(client, "one")
        await client.aclose()
    assert len(runtime.requests) == 1


async def test_a_turn_left_midway_does_not_leave_its_connection_to_the_next() -> None:
    """A turn's stream abandoned before its end (the host lost interest: an interrupt, a
    cancel) closes its connection; the next turn gets a new one and reads only its own
    answer, never the rest of the old one. Meanwhile an interrupt goes on a connection of
    its own. (Broken on purpose once: the connection kept whatever happened → the next turn
    read the old turn's ``result``.)"""
    runtime = Runtime()
    async with serving(runtime) as endpoint:
        client = RuntimeClient(endpoint, TOKEN, keep_alive=True)
        stream = client.stream_turn(TurnRequest(turn_id="t1", text="slow one", recover=False))
        first = await anext(stream)
        assert [ev.data["text"] for ev in first] == ["answer to slow one"]
        await runtime.between.wait()
        await client.interrupt()
        await stream.aclose()
        runtime.go.set()
        assert await _turn(client, "two") == ["answer to two"] * 2
        await client.aclose()
    assert runtime.answered == ["slow one", "two"]
    # The abandoned turn's connection, and the interrupt's, kept and then the next turn's.
    assert runtime.connections == 2


async def test_what_the_runtime_says_to_close_is_closed() -> None:
    """An answer with ``connection: close`` is not kept; a kept connection idle longer than
    KEEP_IDLE_S is not used; ``aclose`` closes what is kept (the runtime reads its end)."""
    runtime = Runtime(close_after={1})
    async with serving(runtime) as endpoint:
        client = RuntimeClient(endpoint, TOKEN, keep_alive=True)
        assert await _turn(client, "one") == ["answer to one"] * 2
        assert await _turn(client, "two") == ["answer to two"] * 2
        assert runtime.connections == 2
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(runtime_client, "KEEP_IDLE_S", 0.0)
            assert await _turn(client, "three") == ["answer to three"] * 2
        assert runtime.connections == 3
        await client.aclose()
        async with asyncio.timeout(10):
            while runtime.eof_seen < 2:
                runtime.eof_event.clear()
                await runtime.eof_event.wait()
    assert runtime.eof_seen == 2  # the idle one dropped for its age, and the last one


async def test_a_client_without_keep_alive_asks_for_a_connection_per_request() -> None:
    """Probes of a starting sandbox (no ``keep_alive``) say ``connection: close`` and
    leave nothing open."""
    runtime = Runtime()
    async with serving(runtime) as endpoint:
        client = RuntimeClient(endpoint, TOKEN)
        for _ in range(3):
            assert (await client.health())["ready"] is True
    assert runtime.connections == 3
    assert all(header(head, b"connection") == b"close" for head in runtime.requests)


async def test_the_runtime_server_keeps_the_hosts_connection(kit_tmp: Path) -> None:
    """kit's runtime server (uvicorn as ``kit.runtime.server.http_server`` configures it)
    keeps the host's connection between requests: three probes, one connection, counted
    by a loopback relay in between. (Broken on purpose once: ``timeout_keep_alive=0`` →
    3 connections.)"""
    agent = offline_agent(kit_tmp, kit_tmp)
    server = http_server(create_app(agent))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    serving_task = asyncio.create_task(server.serve(sockets=[sock]))
    port = sock.getsockname()[1]
    relayed = 0

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal relayed
        relayed += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    relay_server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:  # the socket listens already: a connection waits in its backlog for uvicorn
        client = RuntimeClient(
            f"http://127.0.0.1:{relay_server.sockets[0].getsockname()[1]}", "r", keep_alive=True
        )
        answers = [await client.health() for _ in range(3)]
        await client.aclose()
    finally:
        relay_server.close()
        server.should_exit = True
        await asyncio.wait_for(serving_task, 10)
        await relay_server.wait_closed()
    assert [a["session_id"] for a in answers] == [str(agent.config.session_id)] * 3
    assert relayed == 1


async def test_a_kept_connection_is_closed_by_the_host_once_idle_too_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kept connection idle for KEEP_IDLE_S is closed by the client on its own, with no
    request after it and no ``aclose``: the host closes before the runtime does, so no
    connection sits half-closed on the host (CLOSE_WAIT, a descriptor) for as long as the
    sandbox stays warm. (Broken on purpose once: no pruning → the runtime never saw an EOF
    and the wait timed out.)"""
    monkeypatch.setattr(runtime_client, "KEEP_IDLE_S", 0.05)
    runtime = Runtime()
    async with serving(runtime) as endpoint:
        client = RuntimeClient(endpoint, TOKEN, keep_alive=True)
        assert await _turn(client, "one") == ["answer to one"] * 2
        async with asyncio.timeout(10):
            await runtime.eof_event.wait()
        assert runtime.eof_seen == 1
        assert await _turn(client, "two") == ["answer to two"] * 2  # on a new connection
        await client.aclose()
    assert runtime.connections == 2
