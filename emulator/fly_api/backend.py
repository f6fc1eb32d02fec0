"""The Machines API's semantics: states and transitions, versions, leases, waits, events.

:class:`FlyBackend` is the model the wire layer (``emulator.fly_api.app``) calls. A request
that changes a machine's lifecycle validates against the current state, moves the machine to
the transient state at once (``starting``, ``stopping``, …) and answers; the runner's work
happens in a background task that moves it on to ``started``, ``stopped``, … as Fly does,
so clients see the transient states and use ``/wait``. Every refusal is an
:class:`~emulator.fly_api.errors.ApiError` with Fly's status and message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal as signals
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import anyio

from emulator.fly_api.clock import Clock, SystemClock
from emulator.fly_api.errors import RunnerError, bad_request, not_found
from emulator.fly_api.models import Machine, State, ulid
from emulator.fly_api.resources import AppRegistry, held_error
from emulator.fly_api.runner import LaunchSpec, Runner

DEFAULT_STOP_TIMEOUT_S = 5.0
"""fly.toml's ``kill_timeout`` default."""
MAX_STOP_TIMEOUT_S = 300.0
DEFAULT_RESTART_RETRIES = 10

SIGNALS = {s.name: int(s) for s in signals.Signals if s.name.startswith("SIG")}


class FlyBackend:
    """Apps and machines, run by ``runner``; an async context manager owning the background
    work (leaving it kills every machine still running)."""

    def __init__(self, runner: Runner, *, clock: Clock | None = None) -> None:
        self.runner = runner
        self.clock: Clock = clock or SystemClock()
        self.apps = AppRegistry(self)
        self.machines: dict[str, Machine] = {}
        """Every machine ever created, those of deleted apps included (to kill on exit)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = False

    async def __aenter__(self) -> FlyBackend:
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for m in self.machines.values():
            with contextlib.suppress(RunnerError):
                await self.runner.kill(m.id)  # a destroyed machine's kill is a no-op

    def now(self) -> float:
        """Unix seconds on the backend's clock."""
        return self.clock.time()

    def spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` in the background."""
        if not self._open:
            raise RuntimeError("FlyBackend is not entered: use `async with FlyBackend(...)`.")
        # Plain asyncio tasks, not a task group: the backend is entered in one task and left
        # in another when a pytest fixture or a server's lifespan holds it.
        task = asyncio.get_running_loop().create_task(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- leases ----------------------------------------------------------------------------

    def guard(self, m: Machine, nonce: str | None) -> None:
        """Refuse a mutation of a leased machine without the lease's nonce."""
        if m.lease is None:
            return
        if not m.lease.live(self.now()):
            m.lease = None
            return
        if nonce != m.lease.nonce:
            raise held_error(m)

    # -- lifecycle -------------------------------------------------------------------------

    def _op(self, m: Machine, state: State) -> int:
        m.op += 1
        m.set_state(state, self.now())
        return m.op

    def launch(self, m: Machine) -> None:
        """``created``/``stopped`` → ``starting`` → ``started`` with a fresh run."""
        op = self._op(m, State.STARTING)
        self.spawn(lambda: self._launch(m, op))

    async def _launch(self, m: Machine, op: int) -> None:
        async with m.lock:
            if m.op != op:
                return
            app = self.apps.get(m.app)
            secrets = tuple(sorted((name, v[0]) for name, v in app.secrets.items()))
            spec = LaunchSpec(m.app, m.id, m.version, m.region, m.config, m.private_ip, secrets)
            m.run += 1
            run = m.run
            try:
                await self.runner.launch(spec)
            except RunnerError as exc:
                m.add_event("launch", "failed", self.now(), request={"error": str(exc)})
                if m.op == op:
                    m.set_state(State.FAILED, self.now())
                return
            m.alive = True
            self.spawn(lambda: self._watch(m, run))
            m.add_event("start", "started", self.now())
            if m.op == op:
                m.set_state(State.STARTED, self.now())

    async def _watch(self, m: Machine, run: int) -> None:
        """Wait for this run's exit; record it; settle the state or restart per policy."""
        exit = await self.runner.wait(m.id)
        current = m.run == run
        if current:
            m.alive = False
        requested = m.state in (State.STOPPING, State.DESTROYING, State.UPDATING)
        policy = (m.config.get("restart") or {}).get("policy") or "on-failure"
        retries = int((m.config.get("restart") or {}).get("max_retries") or DEFAULT_RESTART_RETRIES)
        restarting = (
            current
            and m.state == State.STARTED
            and (policy == "always" or (policy == "on-failure" and exit.exit_code != 0))
            and m.restarts < retries
        )
        now = self.now()
        m.add_event(
            "exit",
            "stopped",
            now,
            request={
                "exit_event": {
                    "exit_code": exit.exit_code,
                    "guest_exit_code": exit.exit_code,
                    "guest_signal": exit.signal or -1,
                    "signal": exit.signal or -1,
                    "oom_killed": exit.oom_killed,
                    "guest_oom_killed": exit.oom_killed,
                    "requested_stop": requested,
                    "restarting": restarting,
                    "exited_at": rfc3339_ms(now),
                },
                "restart_count": m.restarts,
            },
        )
        if restarting:
            m.restarts += 1
            self.launch(m)
        elif current and m.state in (State.STARTED, State.STOPPING, State.SUSPENDING):
            m.set_state(State.STOPPED, now)

    def stop(self, m: Machine, signal: int, timeout_s: float) -> None:
        """``started``/``suspended`` → ``stopping`` → ``stopped``."""
        op = self._op(m, State.STOPPING)

        async def work() -> None:
            async with m.lock:
                if m.op != op:
                    return
                if not m.alive:  # stopped before its launch ran: nothing to signal
                    m.set_state(State.STOPPED, self.now())
                    return
                try:
                    await self.runner.stop(m.id, signal, timeout_s)
                except RunnerError as exc:
                    m.add_event("stop", "failed", self.now(), request={"error": str(exc)})
                    if m.op == op:
                        m.set_state(State.STOPPED, self.now())

        self.spawn(work)

    def suspend(self, m: Machine) -> None:
        """``started`` → ``suspending`` → ``suspended``."""
        op = self._op(m, State.SUSPENDING)

        async def work() -> None:
            async with m.lock:
                if m.op != op:
                    return
                try:
                    await self.runner.suspend(m.id)
                except RunnerError as exc:
                    m.add_event("suspend", "failed", self.now(), request={"error": str(exc)})
                    if m.op == op:
                        m.set_state(State.STARTED, self.now())
                    return
                m.add_event("suspend", "suspended", self.now())
                if m.op == op:
                    m.set_state(State.SUSPENDED, self.now())

        self.spawn(work)

    def resume(self, m: Machine) -> None:
        """``suspended`` → ``starting`` → ``started`` with the same run (cold boot if the
        runner cannot resume it)."""
        op = self._op(m, State.STARTING)

        async def work() -> None:
            async with m.lock:
                if m.op != op:
                    return
                try:
                    await self.runner.resume(m.id)
                except RunnerError:
                    with contextlib.suppress(RunnerError):
                        await self.runner.kill(m.id)
                    self.spawn(lambda: self._launch(m, op))
                    return
                m.add_event("start", "started", self.now(), request={"resumed": True})
                if m.op == op:
                    m.set_state(State.STARTED, self.now())

        self.spawn(work)

    def replace(self, m: Machine, launch: bool, signal: int, timeout_s: float) -> None:
        """An update: stop the old run if there is one, then launch the new config."""
        running = m.state in (State.STARTED, State.STARTING, State.SUSPENDED, State.SUSPENDING)
        previous = m.state
        op = self._op(m, State.UPDATING)

        async def work() -> None:
            async with m.lock:
                if m.op != op:
                    return
                if running and m.alive:
                    with contextlib.suppress(RunnerError):
                        await self.runner.stop(m.id, signal, timeout_s)
                m.add_event("update", "replaced", self.now(), source="user")
            if m.op != op:
                return
            if launch and running:
                self.launch(m)
            else:
                m.set_state(State.STOPPED if running else previous, self.now())

        self.spawn(work)

    def destroy(self, m: Machine) -> None:
        """Any state → ``destroying`` → ``destroyed``; the run is killed."""
        op = self._op(m, State.DESTROYING)
        m.lease = None

        async def work() -> None:
            async with m.lock:
                with contextlib.suppress(RunnerError):
                    await self.runner.kill(m.id)
                m.alive = False
                m.add_event("destroy", "destroyed", self.now(), source="user")
                if m.op == op:
                    m.set_state(State.DESTROYED, self.now())

        self.spawn(work)

    async def wait(
        self, m: Machine, states: set[str], timeout_s: float, version: str | None
    ) -> dict[str, Any] | None:
        """Until ``m`` is in one of ``states`` (``settled`` = any persistent state), or None
        after ``timeout_s``."""
        if version is not None and version not in {v for v, _ in m.versions}:
            raise bad_request(f"machine {m.id} has no version {version!r}")

        def matches() -> bool:
            if "settled" in states and m.state in _SETTLED:
                return True
            return str(m.state) in states

        m.waiters += 1
        try:
            with anyio.move_on_after(timeout_s):
                for _ in range(1_000_000):
                    if matches():
                        return {
                            "ok": True,
                            "state": str(m.state),
                            "version": m.version,
                            "event_id": m.events[-1].id if m.events else ulid(self.now()),
                        }
                    await m.changed.wait()

        finally:
            m.waiters -= 1
        return None


_SETTLED = frozenset(
    {State.CREATED, State.STARTED, State.STOPPED, State.SUSPENDED, State.FAILED, State.DESTROYED}
)


def rfc3339_ms(unix: float) -> str:
    """Unix seconds as an RFC 3339 timestamp with milliseconds."""
    return (
        datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def parse_signal(value: Any, default: int) -> int:
    """``"SIGTERM"`` (or ``"TERM"``, or a number) as a signal number; 400 when unknown."""
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    name = str(value).upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in SIGNALS:
        raise bad_request(f"invalid signal {value!r}: use a name such as SIGTERM or SIGINT")
    return SIGNALS[name]


def parse_duration(value: Any, default: float) -> float:
    """A Go duration (``"10s"``, ``"1m30s"``, ``"500ms"``) or seconds, as seconds; 400 when
    malformed."""
    if value is None or value == "":
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text, total, units = str(value).strip(), 0.0, {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise bad_request(f"invalid duration {value!r}: write it like 10s, 1m30s or 500ms")
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def stop_settings(m: Machine, body: dict[str, Any]) -> tuple[int, float]:
    """The stop signal and timeout: the request's, else ``config.stop_config``'s, else
    SIGINT and 5 s."""
    stop_config = m.config.get("stop_config") or {}
    default_signal = parse_signal(stop_config.get("signal"), int(signals.SIGINT))
    default_timeout = parse_duration(stop_config.get("timeout"), DEFAULT_STOP_TIMEOUT_S)
    signal = parse_signal(body.get("signal"), default_signal)
    timeout = min(parse_duration(body.get("timeout"), default_timeout), MAX_STOP_TIMEOUT_S)
    return signal, timeout


def find_machine(backend: FlyBackend, app: str, machine_id: str) -> Machine:
    """The machine, destroyed ones included; 404 otherwise."""
    found = backend.apps.get(app).machines.get(machine_id)
    if found is None:
        raise not_found("machine not found")
    return found
