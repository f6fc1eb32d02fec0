"""`kit chat` end to end: a real `kit dev` process stopped and started under it, `/interrupt`
answered, `--json` lines carrying the session id, and a bounded wait that ends clearly."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kit.cli.chat import DEFAULT_RETRY_FOR_S, ChatError, reconnect_policy
from kit.client import SessionClient
from kit.protocol.frames import Event
from tests.agents import write_agent
from tests.e2e.test_kit_dev import DevProcess, start_kit_dev, stop_kit_dev
from tests.kitproc import spawn_kit

WAIT_S = 60.0


def _env(state: Path) -> dict[str, str]:
    env = {**os.environ, "KIT_STATE_DIR": str(state)}
    env.pop("ANTHROPIC_API_KEY", None)
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Chat:
    """A `kit chat` subprocess fed through a pipe; its output read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = ""
        self._seen = 0

    @classmethod
    async def start(cls, cwd: Path, env: dict[str, str], *args: str) -> Chat:
        proc = await spawn_kit(
            "chat",
            *args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def until(self, pattern: str) -> str:
        """Read until ``pattern`` (a regex) appears after the last match; the match."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT_S):
            while not (found := re.compile(pattern).search(self.out, self._seen)):
                chunk = await self.proc.stdout.read(4096)
                assert chunk, f"kit chat ended before {pattern!r}:\n{self.out}"
                self.out += chunk.decode()
        self._seen = found.end()
        return found.group(0)

    async def finish(self) -> tuple[int, str, str]:
        """Close stdin; exit code, all stdout, all stderr."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        out, err = await asyncio.wait_for(self.proc.communicate(), WAIT_S)
        self.out += out.decode()
        assert self.proc.returncode is not None
        return self.proc.returncode, self.out, err.decode()


@pytest.fixture
async def agent_dev(kit_tmp: Path) -> AsyncIterator[tuple[DevProcess, Path]]:
    """`kit dev --port 0` on the test agent; yields it and the project folder."""
    project = write_agent(kit_tmp / "agent")
    dev = await start_kit_dev(project, _env(kit_tmp / "state"))
    yield dev, project
    await stop_kit_dev(dev)


def test_retry_budget_depends_on_who_waits() -> None:
    """At a terminal kit chat waits forever; -m or piped input waits 60 s; --retry-for wins."""
    assert reconnect_policy(None, interactive=True).forever
    assert reconnect_policy(None, interactive=False).give_up_after_s == DEFAULT_RETRY_FOR_S
    assert reconnect_policy(5, interactive=True).give_up_after_s == 5
    assert reconnect_policy(math.inf, interactive=False).forever
    with pytest.raises(ChatError, match="--retry-for"):
        reconnect_policy(-1, interactive=False)


async def test_kit_chat_outlives_its_host(kit_tmp: Path) -> None:
    """Ctrl-C `kit dev` under `kit chat`: it says the host is gone, keeps what is typed,
    and once `kit dev` is back on the same port and state the reply arrives, once."""
    project = write_agent(kit_tmp / "agent")
    state = kit_tmp / "state"
    port = _free_port()
    dev = await start_kit_dev(project, _env(state), port)
    chat = await Chat.start(project, _env(state))
    second: DevProcess | None = None
    try:
        await chat.type("hello one")
        await chat.until("You said: hello one")
        await _log(state, chat_session_id(state), results=1)  # that turn is over
        dev.proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(dev.proc.wait(), WAIT_S)
        await chat.until("host gone, reconnecting…")
        await chat.type("hello two")
        await chat.until(r"\(queued")
        second = await start_kit_dev(project, _env(state), port)
        await chat.until("reconnected")
        await chat.until("You said: hello two")
        code, out, err = await chat.finish()
        session_id = chat_session_id(state)
        events = await _log(state, session_id, results=2)
    finally:
        if chat.proc.returncode is None:
            chat.proc.kill()
        if second is not None:
            await stop_kit_dev(second)
        await stop_kit_dev(dev)
    assert code == 0, err
    assert out.count("host gone, reconnecting…") == 1
    assert out.count("reconnected") == 1
    assert out.count("You said: hello two") == 1
    assert [e.data["text"] for e in events if e.kind == "user"] == ["hello one", "hello two"]
    assert [e.kind for e in events].count("result") == 2
    assert "Recovered" not in out  # nothing was open at the Ctrl-C: no turn ran twice


def chat_session_id(state: Path) -> str:
    """The one session `kit chat` created under ``state``."""
    (session_id,) = json.loads((state / "chat-sessions.json").read_text())
    return str(session_id)


async def _log(state: Path, session_id: str, results: int) -> list[Event]:
    """The session's events from the start, read afresh, through its ``results``-th result."""
    known = json.loads((state / "chat-sessions.json").read_text())[session_id]
    events: list[Event] = []
    async with SessionClient(known["ws_url"], known["token"]) as reader:
        async with asyncio.timeout(WAIT_S):
            async for event in reader.events():
                events.append(event)
                if [e.kind for e in events].count("result") == results:
                    return events
    raise AssertionError("the log ended early")


async def test_interrupt_in_kit_chat(agent_dev: tuple[DevProcess, Path], kit_tmp: Path) -> None:
    """/interrupt with nothing running says so; during a reply it says "interrupting"
    and then that the turn ended interrupted."""
    _dev, project = agent_dev
    chat = await Chat.start(project, _env(kit_tmp / "state"))
    try:
        await chat.type("/interrupt")
        await chat.until("no turn is running")
        await chat.type("trickle the reply")
        await chat.until("one ")
        await chat.type("/interrupt")
        turn = await chat.until(r"interrupting turn (t\d+)…")
        await chat.until(
            re.escape(turn.split()[-1].rstrip("…")) + r" ended: interrupted \(error_during"
        )
        await chat.type("/quit")
        code, out, err = await chat.finish()
    finally:
        if chat.proc.returncode is None:
            chat.proc.kill()
    assert code == 0, err
    assert "twelve" not in out
    assert "✗ turn ended with an error" not in out


async def test_kit_chat_json_carries_the_session_id(
    agent_dev: tuple[DevProcess, Path], kit_tmp: Path
) -> None:
    """`kit chat -m … --json`: every stdout line is JSON naming the session, the one
    stderr names for resuming."""
    _dev, project = agent_dev
    chat = await Chat.start(project, _env(kit_tmp / "state"), "-m", "hello", "--json")
    code, out, err = await chat.finish()
    assert code == 0, err
    session_id = chat_session_id(kit_tmp / "state")
    lines = [json.loads(line) for line in out.splitlines()]
    assert {line["session_id"] for line in lines} == {session_id}
    assert {line["type"] for line in lines} == {"event"}
    assert lines[-1]["kind"] == "result"
    assert f"kit chat {session_id}" in err


async def test_one_shot_chat_gives_up_with_what_to_do(kit_tmp: Path) -> None:
    """`kit chat -m` whose host dies for good stops after --retry-for with exit 1 and a
    message naming how to resume."""
    project = write_agent(kit_tmp / "agent")
    state = kit_tmp / "state"
    dev = await start_kit_dev(project, _env(state))
    chat = await Chat.start(project, _env(state), "-m", "wait for go", "--retry-for", "1")
    try:
        await chat.until("Waiting for go.")
        dev.proc.kill()
        await dev.proc.wait()
        await chat.until("host gone, reconnecting…")
        code, _out, err = await chat.finish()
    finally:
        if chat.proc.returncode is None:
            chat.proc.kill()
        await stop_kit_dev(dev)
    session_id = chat_session_id(state)
    assert code == 1
    assert "did not come back within 1 s" in err
    assert f"kit chat {session_id}" in err
    assert "--retry-for" in err


async def test_a_piped_quit_waits_for_the_answers(
    agent_dev: tuple[DevProcess, Path], kit_tmp: Path
) -> None:
    """`printf 'hello\\n/quit\\n' | kit chat`: a script's /quit lets what it sent be
    answered first (at a terminal /quit stops at once). (Broken on purpose once: /quit
    that returned at once printed no answer.)"""
    _dev, project = agent_dev
    chat = await Chat.start(project, _env(kit_tmp / "state"))
    await chat.type("ponder at length")  # the offline model takes 3 s over this one
    await chat.type("/quit")
    code, out, err = await chat.finish()
    assert code == 0, err
    assert "Thought it through." in out
