"""End to end: the real `kit dev` process on port 0, a real WebSocket client, `kit chat`,
and a clean shutdown on Ctrl-C (sockets closed with 1001, sandboxes stopped)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kit.client import SessionClient, create_session
from kit.protocol import errors as e
from tests.agents import RECOVERED_REPLY, until_prompt_stored, write_agent
from tests.host.wsdriver import Driver
from tests.kitproc import KIT, spawn_kit

REPO = Path(__file__).resolve().parents[2]
BANNER_TIMEOUT_S = 60.0


class DevProcess:
    """A running `kit dev` and what its banner said."""

    def __init__(
        self, proc: asyncio.subprocess.Process, url: str, banner: str, env: dict[str, str]
    ) -> None:
        self.proc, self.url, self.banner, self.env = proc, url, banner, env


async def start_kit_dev(cwd: Path, env: dict[str, str], port: int | None = 0) -> DevProcess:
    """Start `kit dev --port PORT` (no --port for None) in ``cwd`` and read its banner."""
    proc = await spawn_kit(
        "dev",
        *(() if port is None else ("--port", str(port))),
        cwd=cwd,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    url = None
    async with asyncio.timeout(BANNER_TIMEOUT_S):
        while url is None:
            line = (await proc.stdout.readline()).decode()
            assert line, "kit dev exited before printing its banner"
            lines.append(line)
            if m := re.search(r"sessions\s+(http://\S+)/v1/sessions", line):
                url = m.group(1)
        while not lines[-1].lstrip().startswith("api token"):
            lines.append((await proc.stdout.readline()).decode())
    return DevProcess(proc, url, "".join(lines), env)


async def stop_kit_dev(dev: DevProcess) -> None:
    """Ctrl-C, as a user would; SIGKILL only if it hangs."""
    if dev.proc.returncode is None:
        dev.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(dev.proc.wait(), 30)
        except TimeoutError:
            dev.proc.kill()
            await dev.proc.wait()


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("ANTHROPIC_API_KEY", None)
    return env


@pytest.fixture
async def kit_dev(kit_tmp: Path) -> AsyncIterator[DevProcess]:
    """`kit dev --port 0` on the example agent, as a user would start it."""
    dev = await start_kit_dev(REPO, _env(KIT_STATE_DIR=str(kit_tmp / "state")))
    yield dev
    await stop_kit_dev(dev)


async def test_new_project_runs_under_kit_dev(kit_tmp: Path) -> None:
    """`kit new demo && cd demo && kit dev`: the new agent answers and its skill script runs."""
    env = _env()
    env.pop("KIT_STATE_DIR", None)
    new = await asyncio.create_subprocess_exec(KIT, "new", "demo", cwd=kit_tmp, env=env)
    assert await new.wait() == 0
    dev = await start_kit_dev(kit_tmp / "demo", env)
    try:
        assert "demo" in dev.banner
        token = (kit_tmp / "demo" / ".kit" / "api-token").read_text().strip()
        info = await create_session(dev.url, token)
        async with SessionClient(info.ws_url, info.token) as client:
            events = [e async for e in client.turn("hello")]
        assert [e.data["name"] for e in events if e.kind == "tool_use"] == ["Skill", "Bash"]
        assert "from the hello skill" in events[-1].data["text"]
    finally:
        await stop_kit_dev(dev)


async def test_banner_names_the_model_store_and_tier(kit_dev: DevProcess) -> None:
    """One banner with URLs, the offline model, the store and the tier."""
    assert "offline model (emulator)" in kit_dev.banner
    assert "tier" in kit_dev.banner
    assert "basic" in kit_dev.banner
    assert "store" in kit_dev.banner
    assert "sqlite" in kit_dev.banner


async def test_chat_runs_the_skill_script(kit_dev: DevProcess, kit_tmp: Path) -> None:
    """A WebSocket client asks about an order: Skill, then Bash runs the bundled script,
    and the streamed reply carries what the script read from its SQLite data."""
    token = (kit_tmp / "state" / "api-token").read_text().strip()
    info = await create_session(kit_dev.url, token)
    async with SessionClient(info.ws_url, info.token) as client:
        events = [e async for e in client.turn("Where is my order 1042?")]
    tools = [e.data["name"] for e in events if e.kind == "tool_use"]
    assert tools == ["Skill", "Bash"]
    results = [e.data["content"] for e in events if e.kind == "tool_result"]
    assert "1Z999AA10123456784" in results[-1]
    assert sum(e.kind == "text_delta" for e in events) > 1
    assert events[-1].kind == "result"
    assert "1Z999AA10123456784" in events[-1].data["text"]


async def test_kit_chat_one_message(kit_dev: DevProcess) -> None:
    """`kit chat -m` streams the reply and shows the tool calls and their results."""
    proc = await spawn_kit(
        "chat",
        "-m",
        "Where is my order 1042?",
        cwd=REPO,
        env=kit_dev.env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "⚙ Skill" in text
    assert "⚙ Bash" in text
    assert "↳ Order 1042: shipped" in text
    assert "1Z999AA10123456784" in text.split("↳ Order 1042")[-1]


async def test_ctrl_c_closes_sockets_with_1001_and_stops_sandboxes(
    kit_dev: DevProcess, kit_tmp: Path
) -> None:
    """SIGINT: connected clients get close 1001, sandboxes are stopped, exit code 0."""
    token = (kit_tmp / "state" / "api-token").read_text().strip()
    info = await create_session(kit_dev.url, token)
    async with SessionClient(info.ws_url, info.token) as client:
        [e async for e in client.turn("hello")]
    driver = await Driver.open(info.ws_url)
    await driver.send({"type": "hello", "token": info.token, "last_seq": None})
    assert (await driver.recv())["resume"] == "resuming"
    runtimes_before = _runtime_pids(kit_tmp)
    assert runtimes_before
    kit_dev.proc.send_signal(signal.SIGINT)
    assert await driver.close_code() == e.CLOSE_GOING_AWAY
    assert await asyncio.wait_for(kit_dev.proc.wait(), 30) == 0
    assert _runtime_pids(kit_tmp) == set()


def _runtime_pids(state: Path) -> set[int]:
    """PIDs of kit.runtime processes whose workspace is under ``state``."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if b"kit.runtime" in cmd and cwd.startswith(str(state)):
            pids.add(int(proc.name))
    return pids


async def test_sandboxes_die_with_a_killed_host(kit_dev: DevProcess, kit_tmp: Path) -> None:
    """SIGKILL to `kit dev` leaves no sandbox process behind (no orphan could later run
    beside a restarted host's sandbox for the same session)."""
    token = (kit_tmp / "state" / "api-token").read_text().strip()
    info = await create_session(kit_dev.url, token)
    async with SessionClient(info.ws_url, info.token) as client:
        [e async for e in client.turn("hello")]
    assert _runtime_pids(kit_tmp)
    kit_dev.proc.kill()
    await kit_dev.proc.wait()
    for _ in range(100):  # bounded: the kernel delivers the parent-death signal at once
        if not _runtime_pids(kit_tmp):
            break
        await asyncio.sleep(0.05)
    assert _runtime_pids(kit_tmp) == set()


async def test_host_killed_mid_turn_recovers_on_restart(kit_tmp: Path) -> None:
    """SIGKILL `kit dev` during a tool call, start it again: the client reconnects on its own,
    resumes by last_seq with no gap, and the interrupted turn finishes in a new sandbox."""
    project = write_agent(kit_tmp / "agent")
    env = _env(KIT_STATE_DIR=str(kit_tmp / "state"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = await start_kit_dev(project, env, port)
    token = (kit_tmp / "state" / "api-token").read_text().strip()
    info = await create_session(first.url, token)
    seqs: list[int] = []
    texts: list[str] = []
    second: DevProcess | None = None
    async with SessionClient(info.ws_url, info.token) as client:
        await client.send("run the slow tool")
        try:
            async with asyncio.timeout(120):
                async for event in client.events():
                    seqs.append(event.seq)
                    if event.kind == "tool_use" and second is None:
                        # Once the prompt is stored the restarted host continues the turn.
                        await until_prompt_stored(
                            kit_tmp / "state", info.session_id, "run the slow tool"
                        )
                        first.proc.kill()  # the host dies mid-tool; its sandbox dies with it
                        await first.proc.wait()
                        second = await start_kit_dev(project, env, port)
                    if event.kind == "assistant":
                        texts.append(str(event.data.get("text")))
                    if event.kind == "result":
                        break
        finally:
            if second is not None:
                await stop_kit_dev(second)
        reconnects = client.reconnects
    assert reconnects >= 1
    assert seqs == list(range(1, len(seqs) + 1))
    assert RECOVERED_REPLY in texts[-1]


async def test_a_busy_default_port_is_passed_over_in_one_line(kit_tmp: Path) -> None:
    """No --port and the default port busy: kit dev takes a free port above it and says so."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _env(KIT_STATE_DIR=str(kit_tmp / "state"), KIT_PORT=str(port))
        dev = await start_kit_dev(REPO, env, port=None)
        try:
            taken = int(dev.url.rsplit(":", 1)[1])
            assert port < taken < port + 20
            first = dev.banner.splitlines()[0]
            assert first == (
                f"kit dev: port {port} is busy, so it listens on {taken} instead "
                "(choose with --port)."
            )
            assert json.loads((kit_tmp / "state" / "dev.json").read_text())["url"] == dev.url
        finally:
            await stop_kit_dev(dev)


async def test_a_busy_port_given_with_the_flag_is_one_line_naming_it(kit_tmp: Path) -> None:
    """--port on a busy port: exit 1, one line naming --port, no traceback, nothing written."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await spawn_kit(
            "dev",
            "--port",
            str(port),
            cwd=REPO,
            env=_env(KIT_STATE_DIR=str(kit_tmp / "state")),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert out == b""
    assert err.decode() == (
        f"error: Port {port} on 127.0.0.1 is in use (another kit dev?); pick another with "
        "--port, or --port 0 for any free one.\n"
    )
    assert not (kit_tmp / "state").exists()
