"""`kit sessions`, `kit logs [--follow]`, `kit sandbox list|kill|oom` and `kit do evict`
against `kit dev --target cloudflare`'s rehearsal: the real shim in `wrangler dev` answers
kit's control API, its containers from kit's container emulator under Docker. Each command
runs as a user runs it (the `kit` program, ``--url``), and the test reads what it prints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kit.cli.cfdev import rehearse_cloudflare
from kit.client import SessionClient, create_session
from kit.protocol.frames import Event
from kit.protocol.turns import ends_turn
from tests.agents import write_agent
from tests.dockerhost import runtime_image
from tests.kitproc import KIT, spawn_kit

pytestmark = pytest.mark.slow

TURN_TIMEOUT_S = 180.0
COMMAND_TIMEOUT_S = 60.0


class Cli:
    """The `kit` program pointed at the rehearsal (its URL, the state dir's API token)."""

    def __init__(self, url: str, state_dir: Path) -> None:
        self.url = url
        self.env = {**os.environ, "KIT_STATE_DIR": str(state_dir)}

    async def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``kit ARGS --url URL``, finished."""
        return await asyncio.to_thread(
            subprocess.run,
            [KIT, *args, "--url", self.url],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            env=self.env,
            check=False,
        )

    async def ok(self, *args: str) -> str:
        """What ``kit ARGS`` printed, having exited 0 with nothing on stderr."""
        done = await self.run(*args)
        assert (done.returncode, done.stderr) == (0, ""), (args, done.stdout, done.stderr)
        return done.stdout


async def _until(client: SessionClient, seqs: list[int], wanted: Any) -> list[Event]:
    """Events up to the first one ``wanted`` accepts (bounded by TURN_TIMEOUT_S)."""
    events: list[Event] = []
    async with asyncio.timeout(TURN_TIMEOUT_S):
        async for event in client.events():
            seqs.append(event.seq)
            events.append(event)
            if wanted(event):
                return events
    raise AssertionError("the session's events ended")


async def _turn(client: SessionClient, text: str, seqs: list[int]) -> list[Event]:
    await client.send(text)
    return await _until(client, seqs, lambda e: ends_turn(e.kind, e.data))


@contextlib.asynccontextmanager
async def _following(kit: Cli, session_id: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`kit logs SESSION --follow --json` running; killed at the end if still running."""
    proc = await spawn_kit(
        "logs",
        session_id,
        "--follow",
        "--json",
        "--url",
        kit.url,
        env=kit.env,
        # Ctrl-C reaches it even when the test run was started in the background.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _exited(event: Event) -> bool:
    """A `sandbox` event saying it ended (died or stopped)."""
    return event.kind == "sandbox" and event.data.get("state") in ("died", "stopped")


def _sandbox_id(events: list[Event]) -> str:
    (found,) = [
        str(e.data["sandbox_id"])
        for e in events
        if e.kind == "sandbox" and e.data.get("state") == "running"
    ]
    return found


def _row(table: str, session_id: str) -> list[str]:
    (line,) = [line for line in table.splitlines() if line.startswith(session_id)]
    return line.split()


async def test_the_control_commands_against_the_shim(kit_tmp: Path) -> None:
    """A tool turn, then: the session listed with its sandbox running; its log printed as
    `kit chat` shows it; the sandbox listed, killed (`died killed 137`) and OOM-killed
    (`died oom 137`), each time the next turn answering from a new one; the DO evicted (the
    client resumes on the next instance); a `kit logs --follow` running throughout prints
    every event once; refusals are one line."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = write_agent(kit_tmp / "agent")
    state = kit_tmp / "state"
    async with rehearse_cloudflare(project, state, image.tag) as cf:
        kit = Cli(cf.url, state)
        assert (await kit.ok("sessions")).strip() == "No sessions yet; start one with `kit chat`."
        assert (await kit.ok("sandbox", "list")).strip() == "No sandbox is running."
        info = await create_session(cf.url, cf.api_token)
        sid = info.session_id
        seqs: list[int] = []
        async with (
            contextlib.AsyncExitStack() as stack,
            SessionClient(info.ws_url, info.token) as client,
        ):
            first = await _turn(client, "slow", seqs)
            assert first[-1].kind == "result", first[-1]
            sandbox = _sandbox_id(first)

            # kit sessions: the table and the JSON.
            table = await kit.ok("sessions")
            assert table.splitlines()[0].split() == [
                "SESSION",
                "CREATED",
                "LAST",
                "EVENT",
                "TURNS",
                "SANDBOX",
            ]
            row = _row(table, sid)
            assert row[-3:] == ["result", "1", "running"], row
            (listed,) = json.loads(await kit.ok("sessions", "--json"))
            assert {k: listed[k] for k in ("session_id", "turns", "open_turns", "sandbox")} == {
                "session_id": sid,
                "turns": 1,
                "open_turns": 0,
                "sandbox": "running",
            }
            assert listed["loaded"] is True
            assert listed["last_seq"] == first[-1].seq

            # kit logs: the turn as kit chat shows it; --json, every stored event once.
            shown = await kit.ok("logs", sid)
            assert "> slow" in shown
            assert "⚙ Bash" in shown
            assert "Slow tool said: started-slow-tool" in shown
            as_json = [
                json.loads(line) for line in (await kit.ok("logs", sid, "--json")).splitlines()
            ]
            assert [(x["seq"], x["kind"], x["data"]) for x in as_json] == [
                (e.seq, e.kind, e.data) for e in first
            ]

            follower = await stack.enter_async_context(_following(kit, sid))

            # kit sandbox list, then kill: the session logs the death, a new sandbox answers.
            listing = await kit.ok("sandbox", "list")
            assert listing.splitlines()[0].split() == ["SESSION", "SANDBOX", "TIER", "STATE", "PID"]
            assert _row(listing, sid) == [sid, sandbox, "basic", "running", "-"]
            assert await kit.ok("sandbox", "kill", sid) == f"Sent signal 9 to {sandbox}.\n"
            died = (await _until(client, seqs, _exited))[-1]
            assert (died.data["state"], died.data["reason"], died.data["exit_code"]) == (
                "died",
                "killed",
                137,
            )
            assert died.data["sandbox_id"] == sandbox
            assert (await kit.ok("sandbox", "list")).strip() == "No sandbox is running."
            assert _row(await kit.ok("sessions"), sid)[-1] == "none"
            second = await _turn(client, "echo after the kill", seqs)
            assert "You said: echo after the kill" in str(second[-1].data["text"])
            sandbox = _sandbox_id(second)

            # kit sandbox oom: the container emulator kills it as at its memory limit.
            pushed = await kit.ok("sandbox", "oom", sid)
            assert pushed == f"Pushed {sandbox} past its memory limit.\n"
            died = (await _until(client, seqs, _exited))[-1]
            assert (died.data["state"], died.data["reason"], died.data["exit_code"]) == (
                "died",
                "oom",
                137,
            )

            # kit do evict: the socket closes, the client resumes on the next instance.
            evicted = await kit.ok("do", "evict", sid)
            assert evicted == f"Evicted session {sid}; its next event rebuilds it from storage.\n"
            third = await _turn(client, "echo after the eviction", seqs)
            assert client.reconnects >= 1
            assert "You said: echo after the eviction" in str(third[-1].data["text"])
            idle = await create_session(cf.url, cf.api_token)  # nothing of it in memory
            assert (await kit.ok("do", "evict", idle.session_id)).startswith(
                f"Session {idle.session_id} was not in memory; nothing to evict"
            )

            # Refusals: one line each, exit 1.
            unknown = "00000000-0000-4000-8000-000000000000"
            for args, hint in [
                (("logs", unknown), f"No session {unknown}"),
                (("do", "evict", unknown), "`kit sessions` lists them"),
                (("sandbox", "kill", unknown), "has no running sandbox"),
                (("sandbox", "kill", sid, "--signal", "NOPE"), "Unknown signal 'NOPE'"),
            ]:
                done = await kit.run(*args)
                assert done.returncode == 1, (args, done.stdout)
                assert len(done.stderr.strip().splitlines()) == 1, done.stderr
                assert hint in done.stderr, (args, done.stderr)

            # The follower printed every event once, across the kill, the OOM and the eviction.
            assert follower.stdout is not None
            printed: list[dict[str, Any]] = []
            async with asyncio.timeout(TURN_TIMEOUT_S):
                while not printed or printed[-1]["seq"] < seqs[-1]:
                    line = await follower.stdout.readline()
                    assert line, "kit logs --follow ended early"
                    printed.append(json.loads(line))
            follower.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(follower.communicate(), COMMAND_TIMEOUT_S)
            assert (follower.returncode, err.decode()) == (0, "")
        assert seqs == list(range(1, len(seqs) + 1)), seqs  # none lost, none repeated
        assert [e["seq"] for e in printed] == seqs
        table = await kit.ok("sessions")
        assert _row(table, sid)[-3:] == ["result", "3", "running"]
        assert _row(table, idle.session_id)[-2:] == ["0", "none"]
