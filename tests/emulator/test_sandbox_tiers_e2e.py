"""Tier limits seen from a client: OOM kills, pids and idle stops in a real `kit dev` stack."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from emulator.sandbox import LocalSandboxProvider
from emulator.sandbox.cgroups import Cgroups
from emulator.sandbox.process import LocalSandbox
from kit.cli.stack import run_stack
from kit.client import SessionClient, create_session
from kit.host.advisor import MIN_THROTTLED_S
from kit.host.sandbox import Usage
from kit.protocol.frames import Event
from tests.agents import RECOVERED_REPLY, pids_under, turn_events, write_agent
from tests.conftest import stack_settings
from tests.dockerhost import containers_of

needs_cgroups = pytest.mark.skipif(
    not Cgroups.available(), reason="needs writable cgroup v1 hierarchies (root)"
)


def _sandbox_states(events: list[Event]) -> list[tuple[str, str | None, int | None]]:
    return [
        (e.data["state"], e.data.get("reason"), e.data.get("exit_code"))
        for e in events
        if e.kind == "sandbox"
    ]


@needs_cgroups
async def test_allocating_past_the_tier_is_oom_killed_and_the_session_resumes(
    kit_tmp: Path, sandbox_kind: str
) -> None:
    """A Bash command allocating 400 MiB under `lite` (256 MiB): the sandbox is OOM-killed
    (reason 'oom', exit 137), a new sandbox resumes the session, the turn finishes, and the
    tier advisor names a tier that fits; on both sandbox kinds."""
    project = write_agent(kit_tmp / "agent", tier="lite")
    settings = stack_settings(kit_tmp / "state", project, sandbox=sandbox_kind)
    async with run_stack(settings) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            seen = await turn_events(client, "please allocate 400 MiB")
            assert client.reconnects == 0
        states = _sandbox_states(seen)
        texts = "".join(e.data.get("text", "") for e in seen if e.kind == "text_delta")
        assert ("died", "oom", 137) in states, [(e.kind, e.data) for e in seen]
        died = states.index(("died", "oom", 137))
        assert [s for s, _, _ in states[died:]] == ["died", "starting", "running"]
        running = [e for e in seen if e.kind == "sandbox" and e.data["state"] == "running"]
        assert running[-1].data["resumed"] is True
        assert seen[-1].kind == "result"
        texts = "".join(e.data.get("text", "") for e in seen if e.kind == "text_delta")
        assert RECOVERED_REPLY in texts
        # kit dev prints the advisor's lines; after the OOM it names the next tier that fits.
        advice = [line for sid, line in stack.advice if sid == info.session_id]
        assert any('tier = "basic"' in line for line in advice), advice
    assert pids_under(kit_tmp) == set()  # the allocating tool died with its sandbox
    if sandbox_kind == "docker":
        assert containers_of(info.session_id) == []  # and its containers are gone


@needs_cgroups
async def test_pids_max_stops_a_fork_storm(kit_tmp: Path) -> None:
    """Forking past pids.max fails inside the sandbox and the turn gets its answer.

    The CLI shares the sandbox's pids with the storm: when it needs a thread while the storm
    holds them all, it aborts. Then the runtime exits 70 ('harness') and a new sandbox
    finishes the turn; otherwise the sandbox carries on and the tool's output is the answer.
    Either way the user reads an answer and the session takes the next message."""
    project = write_agent(kit_tmp / "agent")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        assert isinstance(stack.provider, LocalSandboxProvider)
        stack.provider.overrides["pids_max"] = 64
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            seen = await turn_events(client, "fork many now")
            assert seen[-1].kind == "result", [(e.kind, e.data) for e in seen]
            answer = str(seen[-1].data.get("text"))
            deaths = [(r, c) for s, r, c in _sandbox_states(seen) if s == "died"]
            if deaths:
                assert deaths == [("harness", 70)], deaths
                assert RECOVERED_REPLY in answer, answer
            else:
                assert "Forking said: fork failed after" in answer, answer
            again = await turn_events(client, "still there?")
            assert again[-1].kind == "result"
            assert again[-1].data.get("text") == "You said: still there?"


async def test_an_idle_sandbox_stops_with_143_and_the_next_message_resumes(
    kit_tmp: Path,
) -> None:
    """After its inactivity timeout the sandbox gets SIGTERM (reported 'idle', 143); the next
    message starts a new sandbox that resumes the session's transcript."""
    project = write_agent(kit_tmp / "agent", extra_toml="idle_timeout = 1")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            first = await turn_events(client, "hello")
            assert first[-1].kind == "result"
            stopped: list[Event] = []
            async with asyncio.timeout(30):
                async for event in client.events():
                    if event.kind == "sandbox" and event.data["state"] == "stopped":
                        stopped.append(event)
                        break
            assert (stopped[0].data["reason"], stopped[0].data["exit_code"]) == ("idle", 143)
            second = await turn_events(client, "again")
        running = [e for e in second if e.kind == "sandbox" and e.data["state"] == "running"]
        assert running
        assert running[0].data["resumed"] is True
        assert second[-1].kind == "result"


@needs_cgroups
async def test_cpu_advice_is_said_once_per_session_across_sandboxes(kit_tmp: Path) -> None:
    """A CPU-heavy tool under `basic` holds the turn at the CPU share: the advisor names
    standard-1 (and no smaller tier); after the sandbox is killed, the session's next sandbox
    is held as long again and the advice is not repeated."""
    project = write_agent(kit_tmp / "agent", tier="basic")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        info = await create_session(stack.url, stack.api_token)

        def advice() -> list[str]:
            return [line for sid, line in stack.advice if sid == info.session_id]

        async with SessionClient(info.ws_url, info.token) as client:
            assert (await turn_events(client, "heat the cpu"))[-1].kind == "result"
            # The advisor runs after a turn's result; the next turn starts after it.
            await turn_events(client, "barrier")
            [line] = advice()
            assert "held at tier basic's CPU share (0.25 vCPU)" in line
            assert 'set [sandbox] tier = "standard-1"' in line
            assert await stack.provider.kill(info.session_id)
            async with asyncio.timeout(30):
                async for event in client.events():
                    if event.kind == "sandbox" and event.data["state"] == "died":
                        break
            second = await turn_events(client, "heat the cpu")
            assert [s for s, _, _ in _sandbox_states(second)][:2] == ["starting", "running"]
            session = await stack.host.get(info.session_id)
            assert session is not None
            assert session.sandbox is not None
            used = await session.sandbox.usage()
            assert used is not None
            assert used.throttled_s is not None
            assert used.throttled_s >= MIN_THROTTLED_S  # the new sandbox was held as well
            await turn_events(client, "barrier")
        assert advice() == [line]


@needs_cgroups
async def test_a_turn_does_not_wait_for_the_advisors_reading(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advisor reads a sandbox's usage before and after each turn; the reading before
    is taken beside the turn, so a slow one (cgroup files, a walk of the workspace) does
    not hold the turn on its way to the sandbox: with the first turn's held until the client
    has the turn's result, the turn still ends. A warm turn is still measured as its own:
    the CPU-heavy one gets the advice to move to standard-1."""
    project = write_agent(kit_tmp / "agent", tier="basic")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        info = await create_session(stack.url, stack.api_token)
        session = await stack.host.get(info.session_id)
        assert session is not None
        readings: list[str | None] = []  # the turn each reading was for
        answered = {"t1": asyncio.Event()}  # t2 and t3 are measured as they come
        read = LocalSandbox.usage

        async def held(self: LocalSandbox) -> Usage | None:
            turn = session._running_turn
            first = turn not in readings
            readings.append(turn)
            if first and turn in answered:  # the reading before the turn: held
                await answered[turn].wait()
            return await read(self)

        monkeypatch.setattr(LocalSandbox, "usage", held)
        async with SessionClient(info.ws_url, info.token) as client:
            for n, text in enumerate(("barrier", "heat the cpu", "barrier"), 1):
                async with asyncio.timeout(60):
                    assert (await turn_events(client, text))[-1].kind == "result"
                if n == 1:
                    answered["t1"].set()
        assert readings[:5] == ["t1", "t1", "t2", "t2", "t3"]
        lines = [line for sid, line in stack.advice if sid == info.session_id]
        assert any('set [sandbox] tier = "standard-1"' in line for line in lines), lines
