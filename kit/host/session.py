"""One session on the host: its durable log, its clients, its turns and its sandbox.

The rule everything here keeps: an event is appended (committed) first and handed to
subscribers only after ``append`` returns (ARCHITECTURE §4.1). One lock per session orders
commits with their fan-out, and a client's handshake holds the same lock while it reads the
tail of the backlog and subscribes, so a client sees every event exactly once, in ``seq``
order, whether the log answers at once (SQLite) or over the network (S3).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kit.host.advisor import TierAdvisor
from kit.host.errors import SandboxError
from kit.host.eventlog import SessionLog, Turn, TurnState
from kit.host.runtime_client import RuntimeClient, SandboxGone
from kit.host.sandbox import (
    EgressAccess,
    ModelAccess,
    Sandbox,
    SandboxProvider,
    SandboxSpec,
    Usage,
)
from kit.ids import SessionId, TurnId
from kit.protocol.frames import Event, ResumeMode
from kit.protocol.sandbox import TurnRequest

log = logging.getLogger("kit.host")

MAX_SANDBOX_ATTEMPTS = 5
"""Sandboxes one turn may use before the host gives up on it."""
RESTART_BACKOFF_S = (0.0, 0.0, 0.5, 1.0, 2.0)
"""Wait before attempt N of a turn: a first death is retried at once, repeated ones back off."""
EXIT_WAIT_S = 10.0


class Subscriber(Protocol):
    """Something that receives a session's committed events (a client connection)."""

    def deliver(self, event: Event) -> None:
        """Take one committed event; must not block."""

    def evict(self, message: str) -> None:
        """The session left this host (another host owns it now): end the connection."""


def hash_token(token: str) -> str:
    """How a session token is stored: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_token(token: str, stored_hash: str) -> bool:
    """Whether ``token`` hashes to ``stored_hash`` (constant-time; an empty hash never matches)."""
    return bool(stored_hash) and hmac.compare_digest(hash_token(token), stored_hash)


@dataclass(frozen=True)
class SessionEnv:
    """What a session needs from its host to start sandboxes."""

    provider: SandboxProvider
    issue_model_token: Callable[[SessionId], str]
    revoke_model_token: Callable[[str], None]
    model_base_url: str
    model_unix_socket: str | None
    store_url: Callable[[str], str]
    writable: Callable[[str], tuple[Any, ...]]
    bundle_dir: Any
    tier: str
    idle_timeout_s: int
    advise: Callable[[SessionId, str], None] | None = None
    """Where the tier advisor's lines go (``kit dev`` prints them); None: nowhere."""
    issue_egress_token: Callable[[SessionId], str] | None = None
    """Issues a sandbox's egress proxy token (:class:`kit.host.egress.EgressProxy`); None,
    or no ``egress_unix_socket``: sandboxes get no egress proxy."""
    revoke_egress_token: Callable[[str], None] | None = None
    egress_unix_socket: str | None = None
    """The egress proxy's Unix socket, which providers bind into each sandbox."""


class Session:
    """A session's live state on the host."""

    def __init__(self, log_: SessionLog, env: SessionEnv) -> None:
        self.log = log_
        self.id = log_.session_id
        self.env = env
        self._token_hash = str(log_.meta().get("token_sha256", ""))
        self._subscribers: set[Subscriber] = set()
        self._handshaking: set[Subscriber] = set()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._sandbox: Sandbox | None = None
        self._runtime: RuntimeClient | None = None
        self._model_token: str | None = None
        self._egress_token: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[RuntimeClient] | None = None
        self._running_turn: TurnId | None = None
        self._closing = False
        self.advisor = TierAdvisor(env.tier)
        """The tier advisor's state: kept across this session's sandboxes, in memory (a
        host restart or an unload starts it afresh)."""
        self._lock = asyncio.Lock()
        self.lost: str | None = None
        """Why this host may no longer write the session (its lease was taken over)."""
        self.on_gone: Callable[[Session], None] | None = None
        """Called once the session has shut itself down after losing its log."""
        self.on_idle: Callable[[Session], None] | None = None
        """Called when the session sat idle with no sandbox and no client: the host may
        unload it (close its log, release its lease) until someone asks for it again."""
        log_.on_lost(self._log_lost)

    # -- clients -------------------------------------------------------------------------

    def check_token(self, token: str) -> bool:
        """Whether ``token`` is this session's token (constant-time)."""
        return check_token(token, self._token_hash)

    async def resume_mode(self, last_seq: int | None) -> ResumeMode:
        """What a client that has everything up to ``last_seq`` is about to get."""
        if self.log.last_seq > (last_seq or 0):
            return "resuming"
        return "pending" if await self.log.open_turns() else "none"

    @contextlib.asynccontextmanager
    async def quiet(self) -> AsyncIterator[None]:
        """Hold commits off: no event is appended or fanned out inside this block.

        A handshake reads ``last_seq`` (or the backlog's tail) and subscribes inside it, so
        the client misses nothing and gets nothing twice.
        """
        async with self._lock:
            yield

    def subscribe(self, subscriber: Subscriber) -> None:
        """Deliver every later commit to ``subscriber`` (call inside :meth:`quiet`)."""
        self._handshaking.discard(subscriber)
        self._subscribers.add(subscriber)

    def expect(self, subscriber: Subscriber) -> None:
        """A client is mid-handshake: it counts as present (the session is not unloaded)."""
        self._handshaking.add(subscriber)

    def detach(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber``."""
        self._subscribers.discard(subscriber)
        self._handshaking.discard(subscriber)

    async def emit(self, kind: str, data: dict[str, Any], turn_id: TurnId | None = None) -> Event:
        """Append an event durably, then fan it out."""
        async with self._lock:
            event = await self.log.append(kind, data, turn_id)
            self._publish(event)
        return event

    async def emit_many(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId | None
    ) -> list[Event]:
        """Append several events in one commit, then fan each out."""
        async with self._lock:
            events = await self.log.append_many(items, turn_id)
            for event in events:
                self._publish(event)
        return events

    def _publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            subscriber.deliver(event)

    # -- turns ---------------------------------------------------------------------------

    async def submit(self, client_msg_id: str, text: str) -> bool:
        """Queue a user message; false when ``client_msg_id`` was already applied."""
        async with self._lock:
            added = await self.log.add_user_turn(client_msg_id, text)
            if added is None:
                return False
            self._publish(added[1])
        self.start()
        self._wake.set()
        return True

    async def interrupt(self) -> bool:
        """Interrupt the running turn; false when there is none."""
        if self._running_turn is None or self._runtime is None:
            return False
        with contextlib.suppress(SandboxGone):
            await self._runtime.interrupt()
        return True

    def start(self) -> None:
        """Start the turn runner if it is not running (also recovers open turns)."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=f"session-{self.id}")

    async def _run(self) -> None:
        while not self._closing:
            turns = await self.log.open_turns()
            if not turns:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.env.idle_timeout_s)
                except TimeoutError:
                    if self._sandbox is not None:
                        await self._stop_sandbox(reason="idle")
                    elif (
                        not self._subscribers and not self._handshaking and self.on_idle is not None
                    ):
                        self._closing = True  # from now on clients must get a fresh load
                        self.on_idle(self)
                        return
                continue
            try:
                await self._run_turn(turns[0])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not leave the turn running forever
                log.exception("session %s: turn %s failed", self.id, turns[0].turn_id)
                if self.lost is not None:
                    return  # another host owns the session now; it recovers the turn
                try:
                    await self.emit(
                        "error",
                        {"code": "turn_failed", "message": f"The host failed on this turn: {exc}"},
                        turns[0].turn_id,
                    )
                    await self.log.set_turn_state(turns[0].turn_id, TurnState.FAILED)
                except Exception:
                    log.exception(
                        "session %s: the event log fails; the runner stops (the next start "
                        "recovers the open turns)",
                        self.id,
                    )
                    return

    async def _run_turn(self, turn: Turn) -> None:
        recover = turn.state is not TurnState.QUEUED
        self._running_turn = turn.turn_id
        try:
            # Attempts are counted in the log, so a turn that keeps killing its sandboxes
            # (or its host) is given up after MAX_SANDBOX_ATTEMPTS however often the host
            # restarts.
            for attempt in range(turn.attempts, MAX_SANDBOX_ATTEMPTS):
                if attempt:
                    await asyncio.sleep(RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)])
                await self.log.set_turn_state(turn.turn_id, TurnState.RUNNING, attempt=True)
                try:
                    runtime = await self._ensure_sandbox(turn.turn_id)
                except SandboxError:
                    continue  # _start_sandbox recorded a "failed" sandbox event
                before, started = await self._usage(), time.monotonic()  # for the advisor
                outcome = await self._stream(runtime, turn, recover)
                if outcome is not None:
                    await self.log.set_turn_state(turn.turn_id, outcome)
                    await self._advise_after_turn(before, time.monotonic() - started)
                    return
                # The sandbox went away mid-turn: the next one resumes the transcript.
                await self.log.set_turn_state(turn.turn_id, TurnState.INTERRUPTED)
                await self._sandbox_gone()
                recover = True
            await self.emit(
                "error",
                {
                    "code": "turn_failed",
                    "message": f"The turn was given up after {MAX_SANDBOX_ATTEMPTS} sandboxes "
                    "failed; send it again as a new message (a new client_msg_id) to retry.",
                },
                turn.turn_id,
            )
            await self.log.set_turn_state(turn.turn_id, TurnState.FAILED)
        finally:
            self._running_turn = None

    async def _stream(self, runtime: RuntimeClient, turn: Turn, recover: bool) -> TurnState | None:
        """Run the turn on ``runtime``; its final state, or None if the sandbox went away."""
        request = TurnRequest(turn_id=turn.turn_id, text=turn.text, recover=recover)
        try:
            async for batch in runtime.stream_turn(request):
                # Anything after a turn's end is not part of it (and never arrives in practice).
                end = next((i for i, ev in enumerate(batch) if _ends_turn(ev.kind, ev.data)), None)
                kept = batch if end is None else batch[: end + 1]
                await self.emit_many([(ev.kind, ev.data) for ev in kept], turn.turn_id)
                if end is not None:
                    return TurnState.COMPLETED if kept[-1].kind == "result" else TurnState.FAILED
        except SandboxError as exc:
            log.info("session %s: turn %s lost its sandbox: %s", self.id, turn.turn_id, exc)
        return None

    async def _usage(self) -> Usage | None:
        """The sandbox's usage for the tier advisor (None: no advisor, no sandbox or no
        figures); a few cgroup files and a walk of the workspace."""
        sandbox = self._sandbox
        if sandbox is None or self.env.advise is None:
            return None
        try:  # the advisor must never break a turn
            return await sandbox.usage()
        except Exception:
            log.exception("session %s: reading the sandbox's usage failed", self.id)
            return None

    async def _advise_after_turn(self, before: Usage | None, wall_s: float) -> None:
        used, advise = await self._usage(), self.env.advise
        if used is None or advise is None:
            return
        try:
            for line in self.advisor.after_turn(before, used, wall_s):
                advise(self.id, line)
        except Exception:
            log.exception("session %s: the tier advisor failed", self.id)

    # -- sandbox -------------------------------------------------------------------------

    def prewarm(self) -> None:
        """Start a sandbox now (a client is here) so the first message finds it running."""
        if self._closing or self._alive() is not None:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(
                self._start_sandbox(None), name=f"prewarm-{self.id}"
            )
            self._starting.add_done_callback(_log_prewarm_failure)
        self.start()  # the runner also owns the idle timer

    def _alive(self) -> RuntimeClient | None:
        if self._sandbox is not None and self._watcher is not None and not self._watcher.done():
            return self._runtime
        return None

    async def _ensure_sandbox(self, turn_id: TurnId | None) -> RuntimeClient:
        runtime = self._alive()
        if runtime is not None:
            return runtime
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(SandboxError):
                await asyncio.shield(self._starting)
            runtime = self._alive()
            if runtime is not None:
                return runtime
        self._starting = asyncio.create_task(self._start_sandbox(turn_id))
        return await self._starting

    async def _start_sandbox(self, turn_id: TurnId | None) -> RuntimeClient:
        env = self.env
        await self.emit("sandbox", {"state": "starting", "tier": env.tier}, turn_id)
        model_token = env.issue_model_token(self.id)
        egress = None
        if env.issue_egress_token is not None and env.egress_unix_socket:
            egress = EgressAccess(env.egress_unix_socket, env.issue_egress_token(self.id))
        runtime_token = secrets.token_urlsafe(24)
        spec = SandboxSpec(
            session_id=self.id,
            tier=env.tier,
            bundle_dir=env.bundle_dir,
            store_url=env.store_url(self.id),
            model=ModelAccess(env.model_base_url, env.model_unix_socket, model_token),
            runtime_token=runtime_token,
            idle_timeout_s=env.idle_timeout_s,
            writable=env.writable(self.id),
            egress=egress,
        )
        try:
            sandbox = await env.provider.start(spec)
        except BaseException as exc:
            env.revoke_model_token(model_token)
            self._revoke_egress(egress.token if egress else None)
            if not isinstance(exc, Exception):
                raise
            error = (
                exc
                if isinstance(exc, SandboxError)
                else SandboxError(f"Starting a sandbox failed: {exc}")
            )
            if not self._closing:
                await self.emit(
                    "sandbox", {"state": "failed", "tier": env.tier, "message": str(error)}, turn_id
                )
            if error is exc:
                raise
            raise error from exc
        self._sandbox, self._model_token = sandbox, model_token
        self._egress_token = egress.token if egress else None
        runtime = self._runtime = RuntimeClient(sandbox.endpoint, runtime_token)
        self._watcher = asyncio.create_task(self._watch(sandbox), name=f"watch-{sandbox.id}")
        await self.emit(
            "sandbox",
            {
                "state": "running",
                "sandbox_id": sandbox.id,
                "tier": env.tier,
                "resumed": sandbox.resumed,
            },
            turn_id,
        )
        return runtime

    def _revoke_egress(self, token: str | None) -> None:
        if token and self.env.revoke_egress_token is not None:
            self.env.revoke_egress_token(token)

    async def _watch(self, sandbox: Sandbox) -> None:
        info = await sandbox.wait()
        state = "stopped" if info.reason in ("stopped", "idle", "exited") else "died"
        if self._model_token:
            self.env.revoke_model_token(self._model_token)
        self._revoke_egress(self._egress_token)
        runtime, self._runtime, self._sandbox, self._model_token = self._runtime, None, None, None
        self._egress_token = None
        if info.reason == "oom" and self.env.advise is not None:
            try:
                for line in self.advisor.after_oom():
                    self.env.advise(self.id, line)
            except Exception:
                log.exception("session %s: the tier advisor failed", self.id)
        if runtime is not None:
            await runtime.aclose()
        if not self._closing:
            await self.emit(
                "sandbox",
                {
                    "state": state,
                    "sandbox_id": sandbox.id,
                    "reason": info.reason,
                    "exit_code": info.exit_code,
                },
                self._running_turn,
            )

    async def _sandbox_gone(self) -> None:
        """After a broken turn stream: make sure the sandbox is dead and its exit recorded."""
        sandbox, watcher = self._sandbox, self._watcher
        if watcher is None:
            return
        if sandbox is not None:
            try:
                await asyncio.wait_for(asyncio.shield(watcher), EXIT_WAIT_S)
                return
            except TimeoutError:
                await sandbox.kill(reason="unresponsive")
        await watcher

    async def _stop_sandbox(self, reason: str) -> None:
        sandbox, watcher = self._sandbox, self._watcher
        if sandbox is None:
            return
        await sandbox.kill(15, reason=reason)
        try:
            await asyncio.wait_for(sandbox.wait(), EXIT_WAIT_S)
        except TimeoutError:
            await sandbox.kill(reason=reason)
        if watcher is not None:
            await watcher

    @property
    def closed(self) -> bool:
        """Whether the session is shutting down (a client must ask the host again)."""
        return self._closing

    @property
    def sandbox(self) -> Sandbox | None:
        """The running sandbox, if any."""
        return self._sandbox

    async def close(self) -> None:
        """Stop the runner and the sandbox; open turns stay open for the next start."""
        self._closing = True
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(BaseException):
                await self._starting
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        sandbox = self._sandbox
        if sandbox is not None:
            await sandbox.stop()
            if self._watcher is not None:
                with contextlib.suppress(Exception):
                    await self._watcher
        self._subscribers.clear()
        await self.log.close()

    def _log_lost(self, reason: str) -> None:
        """The log's lease was taken over: stop everything here, send the clients away."""
        if self.lost is not None:
            return
        self.lost = reason
        log.warning("session %s: %s; handing it over", self.id, reason)
        if self.on_gone is not None:
            self.on_gone(self)  # the next hello for it loads it afresh (or finds its new owner)
        for subscriber in list(self._subscribers | self._handshaking):
            subscriber.evict(reason)
        task = asyncio.get_running_loop().create_task(self._shut_down_lost())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _shut_down_lost(self) -> None:
        try:
            await self.close()
        except Exception:
            log.exception("session %s: shutting down after losing its lease", self.id)


_background: set[asyncio.Task[None]] = set()


def _log_prewarm_failure(task: asyncio.Task[RuntimeClient]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("prewarming a sandbox failed (the next turn retries): %s", task.exception())


def _ends_turn(kind: str, data: dict[str, Any]) -> bool:
    return kind == "result" or (kind == "error" and data.get("code") == "turn_failed")
