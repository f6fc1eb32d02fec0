"""`kit sandbox …` against a running host: list, kill with a signal, refusals as one line."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from emulator.sandbox.cgroups import Cgroups
from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session
from tests.agents import until
from tests.conftest import stack_settings
from tests.kitproc import KIT


async def _kit(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KIT_STATE_DIR": str(stack.settings.state_dir)}
    return await asyncio.to_thread(
        subprocess.run,
        [KIT, *args, "--url", stack.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


async def test_list_and_kill_a_sandbox(stack: Stack) -> None:
    info = await create_session(stack.url, stack.api_token)
    async with SessionClient(info.ws_url, info.token) as client:
        async with asyncio.timeout(60):
            first = [e async for e in client.turn("hello")]  # the first message starts it
        (sandbox_id,) = [
            e.data["sandbox_id"]
            for e in first
            if e.kind == "sandbox" and e.data["state"] == "running"
        ]
        listed = await _kit(stack, "sandbox", "list")
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if info.session_id in line)
        assert sandbox_id in row
        assert "running" in row

        killed = await _kit(stack, "sandbox", "kill", info.session_id, "--signal", "TERM")
        assert killed.returncode == 0, killed.stderr
        assert f"Sent signal 15 to {sandbox_id}" in killed.stdout
        async with asyncio.timeout(30):
            async for event in client.events():
                if event.kind == "sandbox" and event.data["state"] in ("stopped", "died"):
                    assert event.data["exit_code"] == 143
                    break
        listed = await _kit(stack, "sandbox", "list")
        assert info.session_id not in listed.stdout


@pytest.mark.skipif(not Cgroups.available(), reason="needs writable cgroup v1 (root)")
async def test_kit_sandbox_oom_kills_like_the_tier_would_and_the_session_resumes(
    stack: Stack,
) -> None:
    """`kit sandbox oom SESSION`: the client sees `died oom 137`, the next message starts a
    new sandbox that resumes the session, and no event is lost or repeated."""
    info = await create_session(stack.url, stack.api_token)
    async with SessionClient(info.ws_url, info.token) as client:
        first = [e async for e in client.turn("hello")]
        oomed = await _kit(stack, "sandbox", "oom", info.session_id)
        assert oomed.returncode == 0, oomed.stderr
        async with asyncio.timeout(30):
            async for event in client.events():
                if event.kind == "sandbox" and event.data["state"] == "died":
                    assert (event.data["reason"], event.data["exit_code"]) == ("oom", 137)
                    break
        second = [e async for e in client.turn("again")]
    running = [e for e in second if e.kind == "sandbox" and e.data["state"] == "running"]
    assert running, [(e.kind, e.data) for e in second]
    assert running[-1].data["resumed"] is True
    assert second[-1].kind == "result"
    seqs = [e.seq for e in first + second]
    assert seqs == sorted(set(seqs))


async def test_refusals_are_one_clear_line(stack: Stack) -> None:
    info = await create_session(stack.url, stack.api_token)
    for args, hint in [
        (("sandbox", "kill", info.session_id, "--signal", "NOPE"), "Unknown signal 'NOPE'"),
        (("sandbox", "kill", info.session_id), "has no running sandbox"),
        (("sandbox", "oom"), "needs a SESSION id"),
    ]:
        done = await _kit(stack, *args)
        assert done.returncode == 1
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert hint in done.stderr
    async with httpx.AsyncClient() as http:
        r = await http.get(stack.url + "/_kit/sandboxes")
    assert r.status_code == 401


async def test_kit_do_evict_rebuilds_the_session_from_storage(stack: Stack) -> None:
    """`kit do evict`: the client's socket closes (1001), it resumes, nothing lost or twice."""
    info = await create_session(stack.url, stack.api_token)
    async with SessionClient(info.ws_url, info.token) as client:
        first = [e async for e in client.turn("hello")]
        evicted = await _kit(stack, "do", "evict", info.session_id)
        assert evicted.returncode == 0, evicted.stderr
        assert "Evicted session" in evicted.stdout
        second = [e async for e in client.turn("again")]
        assert client.reconnects >= 1
    seqs = [e.seq for e in first + second]
    assert seqs == sorted(set(seqs))
    unknown = await _kit(stack, "do", "evict", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1
    assert "not loaded" in unknown.stderr or "no" in unknown.stderr.lower()


async def test_sandbox_list_shows_the_pools_sandboxes(kit_tmp: Path) -> None:
    """Sandboxes started ahead of sessions are listed as the pool's: a spare, then one
    reserved for a new session (its id beside it)."""
    async with run_stack(stack_settings(kit_tmp / "state", pool_size=1)) as stack:
        pool = stack.pool
        assert pool is not None
        await until(lambda: pool.spares == 1, "a spare")
        listed = await _kit(stack, "sandbox", "list")
        assert listed.returncode == 0, listed.stderr
        assert "(pool spare)" in listed.stdout
        info = await create_session(stack.url, stack.api_token)
        listed = await _kit(stack, "sandbox", "list")
        assert f"{info.session_id} (pool)" in listed.stdout
