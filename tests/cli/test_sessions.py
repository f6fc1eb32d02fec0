"""`kit sessions` and `kit do evict` against a running stack: loaded and unloaded sessions,
turn counts and sandbox states, and refusals as one line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx

from emulator.durable_objects import DOLogStore
from kit.cli.control import sandbox_state
from kit.cli.stack import Stack, run_stack
from kit.client import create_session
from kit.host.eventlog import LogSummary
from kit.ids import SessionId
from tests.agents import open_session, turn_events, write_agent
from tests.conftest import stack_settings
from tests.kitproc import KIT


async def kit(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `kit` command against ``stack`` (found through its state dir's dev.json)."""
    env = {**os.environ, "KIT_STATE_DIR": str(stack.settings.state_dir)}
    return await asyncio.to_thread(
        subprocess.run,
        [KIT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _rows(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return {row["session_id"]: row for row in json.loads(done.stdout)}


async def test_sessions_lists_loaded_and_unloaded_sessions(kit_tmp: Path) -> None:
    """Turn counts, open turns and sandbox states of busy, idle, evicted and new sessions."""
    async with run_stack(
        stack_settings(kit_tmp / "state", write_agent(kit_tmp / "agent"))
    ) as stack:
        busy_client, busy = await open_session(stack)
        done_client, done = await open_session(stack)
        fresh = await create_session(stack.url, stack.api_token)
        try:
            await turn_events(done_client, "hello")
            await turn_events(done_client, "hello again")
            await busy_client.send("wait for go")
            async with asyncio.timeout(60):
                async for event in busy_client.events():
                    if event.kind == "tool_use":
                        break
            rows = _rows(await kit(stack, "sessions", "--json"))
            table = await kit(stack, "sessions")
            await done_client.close()  # else it reconnects at once and loads the session again
            evicted = await kit(stack, "do", "evict", done.id)
            after = _rows(await kit(stack, "sessions", "--json"))
            (stack.provider.workspace(busy.id) / "go").touch()
            await turn_events(busy_client, "hello")
        finally:
            await busy_client.close()
            await done_client.close()
    assert set(rows) == {busy.id, done.id, fresh.session_id}
    got = {sid: (r["turns"], r["open_turns"], r["sandbox"], r["loaded"]) for sid, r in rows.items()}
    assert got == {
        busy.id: (1, 1, "running", True),
        done.id: (2, 0, "running", True),
        fresh.session_id: (0, 0, "none", True),
    }
    assert rows[done.id]["last_kind"] == "result"
    assert rows[fresh.session_id]["last_kind"] is None
    assert all(isinstance(r["created_ms"], int) for r in rows.values())
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SESSION", "CREATED", "LAST", "EVENT", "TURNS", "SANDBOX"]
    busy_line = next(line for line in lines if line.startswith(busy.id))
    assert "1 (1 open)" in busy_line
    assert busy_line.endswith("running")
    assert evicted.returncode == 0, evicted.stderr
    assert (
        evicted.stdout == f"Evicted session {done.id}; its next event rebuilds it from storage.\n"
    )
    assert (after[done.id]["turns"], after[done.id]["sandbox"], after[done.id]["loaded"]) == (
        2,
        "none",
        False,
    )


async def test_evicting_a_hibernated_objects_session_is_a_success(stack: Stack) -> None:
    """The session is loaded but its object hibernated: evict unloads it, exit 0, one line."""
    info = await create_session(stack.url, stack.api_token)  # loaded; nothing runs in it
    logs = stack.host.logs
    assert isinstance(logs, DOLogStore)
    assert await logs.namespace.hibernate(info.session_id)
    assert info.session_id not in logs.namespace.live_ids()
    first = await kit(stack, "do", "evict", info.session_id)
    again = await kit(stack, "do", "evict", info.session_id)
    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout.startswith(f"Evicted session {info.session_id};")
    assert info.session_id not in {s.id for s in stack.host.live_sessions()}
    assert (again.returncode, again.stderr) == (0, "")
    assert "was not in memory; nothing to evict" in again.stdout


async def test_bad_input_is_one_line_and_changes_nothing(stack: Stack) -> None:
    """Malformed and unknown ids and a missing `kit dev` each get one line naming the fix."""
    before = sorted(await stack.host.session_ids())
    unknown = "00000000-0000-4000-8000-000000000000"
    cases = [
        (("do", "evict", "nope"), "is not a session id"),
        (("do", "evict", unknown), "`kit sessions` lists them"),
        (("logs", "nope"), "is not a session id"),
        (("logs", unknown, "--follow"), f"No session {unknown}"),
        (("sandbox", "kill", "../x"), "is not a session id"),
    ]
    for args, hint in cases:
        done = await kit(stack, *args)
        assert done.returncode == 1, (args, done.stdout)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert hint in done.stderr, (args, done.stderr)
    assert sorted(await stack.host.session_ids()) == before
    assert not (stack.settings.state_dir / "sessions" / f"{unknown}.sqlite").exists()
    env = {**os.environ, "KIT_STATE_DIR": str(stack.settings.state_dir / "elsewhere")}
    for args in (("sessions",), ("logs", unknown)):
        gone = await asyncio.to_thread(
            subprocess.run, [KIT, *args], capture_output=True, text=True, env=env, check=False
        )
        assert gone.returncode == 1
        assert len(gone.stderr.strip().splitlines()) == 1, gone.stderr
        assert "start `kit dev`" in gone.stderr


async def test_a_sandbox_between_starting_and_running_shows_as_starting(stack: Stack) -> None:
    """A loaded session whose log last said `starting` shows `starting`; unloaded, `none`."""
    info = await create_session(stack.url, stack.api_token)
    session = await stack.host.get(info.session_id)
    assert session is not None
    summary = LogSummary(SessionId(info.session_id), None, 1, "sandbox", 0, 0, 0, "starting")
    assert sandbox_state(summary, session) == "starting"
    assert sandbox_state(summary, None) == "none"


async def test_the_control_api_refuses_bad_ids_and_missing_tokens(stack: Stack) -> None:
    """400 for a malformed id, 404 for an unknown one, 401 without the API token."""
    unknown = "00000000-0000-4000-8000-000000000000"
    auth = {"authorization": f"Bearer {stack.api_token}"}
    async with httpx.AsyncClient(base_url=stack.url + "/_kit", headers=auth) as http:
        assert (await http.get("/sessions/nope/events")).status_code == 400
        assert (await http.post("/do/nope/evict")).status_code == 400
        assert (await http.get(f"/sessions/{unknown}/events?after=-1")).status_code == 400
        assert (await http.get(f"/sessions/{unknown}/events?follow=1")).status_code == 404
        assert (await http.post(f"/do/{unknown}/evict")).status_code == 404
        assert (await http.get(f"/sessions/{unknown}/events?after=x")).status_code == 400
    async with httpx.AsyncClient(base_url=stack.url + "/_kit") as http:
        assert (await http.get("/sessions")).status_code == 401
        assert (await http.get(f"/sessions/{unknown}/events")).status_code == 401
