"""The sandbox pool's bookkeeping, on a provider whose sandboxes are futures (no processes):
backoff when spares die young, and a session waiting for its old pooled sandbox to stop."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

from kit.host.launch import Release, SessionEnv, launch
from kit.host.pool import BACKOFF_S, SandboxPool
from kit.host.sandbox import (
    Endpoint,
    ExitInfo,
    Sandbox,
    SandboxProvider,
    SandboxSpec,
    SandboxState,
)
from kit.ids import SandboxId, SessionId

RELEASE = Release(Path("/nonexistent/bundle"), "d1", "basic", 600)
WAIT_S = 10.0


class FakeSandbox(Sandbox):
    """Runs until killed (after ``stop_delay_s`` for SIGTERM) or ``die()``."""

    def __init__(self, spec: SandboxSpec, number: int, stop_delay_s: float) -> None:
        self.id = SandboxId(f"fake-{number}")
        self.session_id = spec.session_id
        self.endpoint = "unix:/nonexistent/runtime.sock"
        self.resumed = False
        self.stop_delay_s = stop_delay_s
        self._exit: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()

    def _has_exited(self) -> bool:
        return self._exit.done()

    async def _reported_exit(self) -> ExitInfo:
        return await asyncio.shield(self._exit)

    def die(self, reason: str = "exited") -> None:
        if not self._exit.done():
            self._exit.set_result(ExitInfo(1, reason))

    async def _send_signal(self, sig: int, reason: str | None) -> None:
        delay = self.stop_delay_s if sig == signal.SIGTERM else 0.0
        asyncio.get_running_loop().call_later(delay, self.die, reason or "killed")


class FakeProvider(SandboxProvider):
    def __init__(self, *, stop_delay_s: float = 0.0, die_at_once: bool = False) -> None:
        self.stop_delay_s = stop_delay_s
        self.die_at_once = die_at_once
        self.started: list[FakeSandbox] = []

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        sandbox = FakeSandbox(spec, len(self.started) + 1, self.stop_delay_s)
        self.started.append(sandbox)
        if self.die_at_once:
            asyncio.get_running_loop().call_soon(sandbox.die, "oom")
        return sandbox

    async def find(self, session_id: SessionId) -> FakeSandbox | None:
        return next(
            (
                s
                for s in self.started
                if s.session_id == session_id and s.state is not SandboxState.EXITED
            ),
            None,
        )

    async def reap(self, keep: Callable[[SessionId], bool]) -> list[SandboxId]:
        return []


def env_for(provider: SandboxProvider, grace_s: float = 30.0) -> SessionEnv:
    return SessionEnv(
        provider=provider,
        issue_model_token=lambda sid, limits: f"model-{sid}",
        revoke_model_token=lambda token: None,
        model_endpoint="http://localhost",
        store_url=lambda sid: "memory://",
        release=lambda: RELEASE,
        grace_s=grace_s,
    )


def state_of(sandbox: Sandbox) -> SandboxState:
    return sandbox.state


async def until(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def test_spares_that_die_young_make_the_pool_back_off() -> None:
    """A tier too small to idle in: each spare dies at once. The pool counts each as a
    failure and waits longer each time, instead of restarting them in a loop. (Broken on
    purpose once: without counting such deaths the pool started ~100 a second.)"""
    provider = FakeProvider(die_at_once=True)
    pool = SandboxPool(env_for(provider), 1)
    pool.start()
    try:
        await until(lambda: pool.failures == 2, "two young deaths")
        assert len(provider.started) == 2
        assert pool._retry_at - time.monotonic() > BACKOFF_S[1] / 2  # the third waits
    finally:
        await pool.close()


async def test_take_waits_until_an_expired_reservations_sandbox_is_gone() -> None:
    """A reservation that ran out is stopped in the background; the session's first turn
    asks for it then, and gets None only once that sandbox has exited, so it never starts a
    second sandbox beside it. (Broken on purpose once: a ``take`` that did not wait.)"""
    provider = FakeProvider(stop_delay_s=0.3)
    pool = SandboxPool(env_for(provider, grace_s=0.05), 1)
    pool.start()
    try:
        await until(lambda: pool.spares == 1, "a spare")
        session_id = pool.claim()
        assert session_id is not None
        (held,) = [s for s in provider.started if s.session_id == session_id]
        await until(lambda: pool.reserved == 0, "the reservation to end")
        assert state_of(held) is SandboxState.RUNNING  # still stopping (SIGTERM, 0.3 s)
        assert await pool.take(SessionId(session_id)) is None
        assert state_of(held) is SandboxState.EXITED
    finally:
        await pool.close()


async def test_a_taken_sandbox_leaves_the_pool_and_a_new_spare_starts() -> None:
    provider = FakeProvider()
    pool = SandboxPool(env_for(provider), 1)
    pool.start()
    try:
        await until(lambda: pool.spares == 1, "a spare")
        session_id = pool.claim()
        assert session_id is not None
        assert pool.claim() is None  # the only spare is reserved
        live = await pool.take(session_id)
        assert live is not None
        assert live.sandbox is provider.started[0]
        assert await pool.take(session_id) is None  # once
        await until(lambda: pool.spares == 1, "a new spare")
        assert len(provider.started) == 2
    finally:
        await pool.close()
    assert all(s.state is SandboxState.EXITED for s in provider.started[1:])


async def test_a_sandbox_left_for_the_session_is_stopped_before_another_starts() -> None:
    """A sandbox the provider still runs for the session (left by a host that died) is
    killed (reason ``orphan``) before ``launch`` starts the session's new one: never two
    sandboxes on one transcript. (Broken on purpose once: without the check both ran.)"""
    provider = FakeProvider()
    env = env_for(provider)
    session_id = SessionId("3f0c1a4e-0000-4000-8000-000000000001")
    left = await provider.start(
        SandboxSpec(
            session_id, "basic", "d1", "memory://", Endpoint("http://localhost", "t"), "rt", 60
        )
    )
    live = await launch(env, session_id, RELEASE)
    assert left.state is SandboxState.EXITED
    assert (await left.wait()).reason == "orphan"
    assert live.sandbox is not left
    assert await provider.find(session_id) is live.sandbox
