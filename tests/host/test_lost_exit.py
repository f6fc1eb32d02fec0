"""A sandbox whose exit its provider never reports after a SIGKILL (a Docker shim, a Fly API
that lost it) still ends, LOST_EXIT_S after the SIGKILL, decided once in
``kit.host.sandbox.Sandbox``: its stop returns 137, a session's close returns, a turn's
recovery goes on in a new sandbox, and every waiter gets the same exit. A sandbox sent only
SIGTERM, or nothing, is waited for as long as it runs. The bound is set to 0 here, so no
test waits on the clock."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import pytest

import fly
import kit.host.fly_sandbox
import kit.host.sandbox
import kit.host.session
from fly import Machine
from kit.host.errors import SandboxError
from kit.host.eventlog import SQLiteLogStore
from kit.host.fly_sandbox import FlySandbox
from kit.host.sandbox import Endpoint, ExitInfo, SandboxSpec, SandboxState
from kit.host.session import Session
from kit.ids import TurnId, new_session_id
from tests.host.scripted_runtime import Runtime, serving
from tests.host.test_pool import FakeSandbox, env_for
from tests.host.test_turn_start import Reader, ScriptedProvider

WAIT_S = 10.0
"""A safety net on each test: without the bound they would wait forever."""
YIELDS = 50
"""Turns of the loop a waiter gets to (wrongly) end in."""


class LosesExit(FakeSandbox):
    """Runs on whatever it is sent: its provider never reports an exit."""

    def __init__(self, spec: SandboxSpec, number: int) -> None:
        super().__init__(spec, number, stop_delay_s=0.0)
        self.signals: list[int] = []

    async def _send_signal(self, sig: int, reason: str | None) -> None:
        self.signals.append(sig)


class LosingProvider(ScriptedProvider):
    """Sandboxes on the scripted runtime whose exits are lost; ``live`` (from the second
    on) do exit when signalled."""

    def __init__(self, endpoint: str, *, lost: int = 1) -> None:
        super().__init__(endpoint)
        self.lost = lost

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        if len(self.started) >= self.lost:
            return await super().start(spec)
        sandbox = LosesExit(spec, len(self.started) + 1)
        sandbox.endpoint = self.endpoint
        self.started.append(sandbox)
        return sandbox


def _spec() -> SandboxSpec:
    model = Endpoint("http://localhost", "t")
    return SandboxSpec(new_session_id(), "basic", "d1", "memory://", model, "rt", 60)


@pytest.fixture
def no_bound_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kit.host.sandbox, "LOST_EXIT_S", 0.0)


async def _session(kit_tmp: Path, provider: LosingProvider) -> tuple[Session, Reader]:
    """A new session on ``provider``, and a reader subscribed to it."""
    log = await SQLiteLogStore(kit_tmp / "sessions").create(new_session_id(), {})
    session = Session(log, env_for(provider))
    reader = Reader()
    session.subscribe(reader)
    return session, reader


async def _yield() -> None:
    for _ in range(YIELDS):
        await asyncio.sleep(0)


@pytest.mark.usefixtures("no_bound_wait")
async def test_stop_returns_137_when_the_exit_is_never_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``stop``: SIGTERM, the grace, SIGKILL, then 137 once the bound has passed, logged,
    for every waiter, one that came before the kill included. (Broken on purpose once: with
    ``stop``'s plain ``await self.wait()`` after the SIGKILL, this test timed out.)"""
    sandbox = LosesExit(_spec(), 1)
    early = asyncio.ensure_future(sandbox.wait())
    async with asyncio.timeout(WAIT_S):
        info = await sandbox.stop(grace_s=0.0, reason="idle")
        assert await early == info
    assert info == ExitInfo(137, "idle")
    assert sandbox.signals == [signal.SIGTERM, signal.SIGKILL]
    assert sandbox.state is SandboxState.EXITED
    assert await sandbox.wait() == info
    assert "never reported" in caplog.text


@pytest.mark.usefixtures("no_bound_wait")
async def test_only_a_sigkill_bounds_the_wait() -> None:
    """Unsignalled, or sent SIGTERM, a sandbox runs: its wait does not end, whatever the
    bound; a SIGKILL then ends it as killed (137)."""
    sandbox = LosesExit(_spec(), 1)
    waiting = asyncio.ensure_future(sandbox.wait())
    await _yield()
    assert not waiting.done()
    await sandbox.kill(signal.SIGTERM)
    await _yield()
    assert not waiting.done()
    assert sandbox.state is SandboxState.RUNNING
    await sandbox.kill()
    async with asyncio.timeout(WAIT_S):
        assert await waiting == ExitInfo(137, "killed")


@pytest.mark.usefixtures("no_bound_wait")
async def test_a_reported_exit_is_the_one_waiters_get() -> None:
    """A provider that reports the exit in time is believed: its code and reason, not 137."""
    sandbox = FakeSandbox(_spec(), 1, stop_delay_s=0.0)
    async with asyncio.timeout(WAIT_S):
        await sandbox.kill(signal.SIGTERM, reason="stopped")
        assert await sandbox.wait() == ExitInfo(1, "stopped")


class WatchFails(LosesExit):
    """Its provider's watch of the exit fails (a Docker daemon restarting, say)."""

    async def _reported_exit(self) -> ExitInfo:
        raise SandboxError("the daemon went away")


@pytest.mark.usefixtures("no_bound_wait")
async def test_a_failed_watch_is_no_exit_and_its_error_is_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SIGKILL starts the end's task with no waiter; the provider's watch fails: the
    sandbox is not taken for exited (the pool and ``find`` read ``state``), and the error
    is read, not left for the loop to complain of. (Broken on purpose once: ``state`` said
    EXITED.)"""
    sandbox = WatchFails(_spec(), 1)
    await sandbox.kill()
    await _yield()
    assert sandbox.state is SandboxState.RUNNING
    with pytest.raises(SandboxError):
        await sandbox.wait()
    del sandbox
    import gc

    gc.collect()
    assert "never retrieved" not in caplog.text


@pytest.mark.usefixtures("no_bound_wait")
async def test_a_session_whose_sandbox_loses_its_exit_still_closes(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's close (as a stack's shutdown does it) returns, its watcher ends and the
    sandbox's tokens are revoked, though the provider never reports the exit. (Broken on
    purpose once: ``Sandbox.wait`` without the bound → close never returned.)"""
    monkeypatch.setattr(kit.host.session, "CLOSE_GRACE_S", 0.0)
    runtime = Runtime()
    async with serving(runtime) as endpoint:
        provider = LosingProvider(endpoint)
        session, reader = await _session(kit_tmp, provider)
        assert await session.submit("m1", "one")
        assert await reader.result_of(TurnId("t1")) == "answer to one"
        (sandbox,) = provider.started
        watcher = session._watcher
        live = session._live
        assert watcher is not None
        assert live is not None
        waiting = asyncio.ensure_future(sandbox.wait())
        async with asyncio.timeout(WAIT_S):
            await session.close()
            assert await waiting == ExitInfo(137, "stopped")
    assert watcher.done()
    assert not watcher.cancelled()
    assert live.retired
    assert isinstance(sandbox, LosesExit)
    assert sandbox.signals == [signal.SIGTERM, signal.SIGKILL]


@pytest.mark.usefixtures("no_bound_wait")
async def test_a_turn_whose_sandbox_loses_its_exit_is_recovered(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The turn's stream breaks; the sandbox is killed as unresponsive and its exit never
    comes: the session records it dead (137, ``unresponsive``) and continues the turn in a
    new sandbox. (Broken on purpose once: ``Sandbox.wait`` without the bound → the turn
    never got past ``_sandbox_gone``.)"""
    monkeypatch.setattr(kit.host.session, "EXIT_WAIT_S", 0.0)
    runtime = Runtime(drop={1})
    caplog.set_level(logging.ERROR, "kit.host")
    async with serving(runtime) as endpoint:
        provider = LosingProvider(endpoint)
        session, reader = await _session(kit_tmp, provider)
        try:
            assert await session.submit("m1", "one")
            assert await reader.result_of(TurnId("t1")) == "answer to one"
        finally:
            async with asyncio.timeout(WAIT_S):
                await session.close()
    lost, second = provider.started
    assert isinstance(lost, LosesExit)
    assert lost.signals == [signal.SIGKILL]
    assert await lost.wait() == ExitInfo(137, "unresponsive")
    states = [
        (e.data["state"], e.data.get("sandbox_id"), e.data.get("exit_code"), e.data.get("reason"))
        for e in reader.events
        if e.kind == "sandbox"
    ]
    assert states == [
        ("starting", None, None, None),
        ("running", lost.id, None, None),
        ("died", lost.id, 137, "unresponsive"),
        ("starting", None, None, None),
        ("running", second.id, None, None),
    ]
    assert runtime.answered == ["one"]  # the dropped request never ran
    assert "never reported" in caplog.text


class FlyLosesExits:
    """A Fly API that takes every stop and signal, and whose ``/wait`` never answers."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def stop_machine(self, app: str, machine: str, *, signal: str, timeout_s: int) -> None:
        self.calls.append(f"stop {signal}")

    async def signal_machine(self, app: str, machine: str, signal: str) -> None:
        self.calls.append(f"signal {signal}")

    async def wait(self, app: str, machine: str, states: object, *, timeout_s: int) -> None:
        await asyncio.Event().wait()  # the exit is never shown


@pytest.mark.usefixtures("no_bound_wait")
async def test_a_fly_machine_whose_exit_never_shows_still_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fly's stop, then (its grace and slack gone) a SIGKILL of kit's own, then 137 once
    the bound has passed; the machine's watch is let go. (Broken on purpose once: with
    ``stop``'s plain ``await self.wait()``, this test timed out.)"""
    monkeypatch.setattr(kit.host.fly_sandbox, "STOP_SLACK_S", 0.0)
    api = FlyLosesExits()
    machine = Machine.parse({"id": "m1", "private_ip": "fdaa::2"})
    sandbox = FlySandbox(api, "app", machine, new_session_id(), None)  # type: ignore[arg-type]
    async with asyncio.timeout(WAIT_S):
        info = await sandbox.stop(grace_s=0.0)
    assert info == ExitInfo(137, "stopped")
    assert api.calls == ["stop SIGTERM", "signal SIGKILL"]
    assert not sandbox.alive()


class FlyWontStop(FlyLosesExits):
    """Fly refuses the stop (the machine is not up yet); signals go through and end it."""

    def __init__(self, sandbox: list[FlySandbox]) -> None:
        super().__init__()
        self.sandbox = sandbox

    async def stop_machine(self, app: str, machine: str, *, signal: str, timeout_s: int) -> None:
        self.calls.append(f"stop {signal}")
        raise fly.FlyError("412: machine is starting")

    async def signal_machine(self, app: str, machine: str, signal: str) -> None:
        self.calls.append(f"signal {signal}")
        if signal == "SIGKILL":
            self.sandbox[0]._exit = ExitInfo(137, "idle")


async def test_a_fly_stop_fly_refuses_is_sent_as_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle stop of a machine Fly will not stop is not a failed runner: a SIGTERM, then
    a SIGKILL, as ``kill`` sends them. (Broken on purpose once: SandboxError.)"""
    monkeypatch.setattr(kit.host.sandbox, "LOST_EXIT_S", 0.0)
    holder: list[FlySandbox] = []
    api = FlyWontStop(holder)
    machine = Machine.parse({"id": "m1", "private_ip": "fdaa::2"})
    sandbox = FlySandbox(api, "app", machine, new_session_id(), None)  # type: ignore[arg-type]
    holder.append(sandbox)
    async with asyncio.timeout(WAIT_S):
        info = await sandbox.stop(grace_s=0.0, reason="idle")
    assert info.exit_code == 137
    assert api.calls == ["stop SIGTERM", "signal SIGTERM", "signal SIGKILL"]
