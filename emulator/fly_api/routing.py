"""Which machine the emulated Fly proxy sends a request to (reference/fly.md §9, §10).

A machine takes proxied traffic when its config has a service (``services[].internal_port``)
and it is ``started``; it listens on ``<private_ip>:<internal_port>``. Among those the
:class:`Router` picks **round-robin** (in creation order). When none is started, a stopped or
suspended machine whose service says ``autostart: true`` is started through the backend, as
Fly's proxy does, and the request waits for it (bounded by :data:`AUTOSTART_LIMIT_S`).
Autostart never creates machines. A refusal is :class:`Unroutable`, carrying the status and
``fly-replay-failed`` reason the proxy answers with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emulator.fly_api.backend import FlyBackend
from emulator.fly_api.errors import ApiError, FlyEmulatorError
from emulator.fly_api.models import Machine, State

AUTOSTART_LIMIT_S = 10.0
"""How long a request waits for a machine the proxy started (or found starting)."""
NO_CANDIDATE = "no_candidate"
RETRIES_EXHAUSTED = "retries_exhausted"
STARTABLE = frozenset({State.CREATED, State.STOPPED, State.SUSPENDED, State.STARTING})


class Unroutable(FlyEmulatorError):
    """No machine can take the request: the proxy answers ``status`` with this message."""

    def __init__(self, message: str, *, status: int = 503, reason: str = NO_CANDIDATE) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """A machine to send a request to, and where its service listens."""

    machine: Machine
    host: str
    port: int


def service(m: Machine) -> dict[str, Any] | None:
    """The machine's first service with an ``internal_port`` (the one the proxy routes
    HTTP to), or None."""
    for entry in m.config.get("services") or []:
        if isinstance(entry, dict) and entry.get("internal_port"):
            return entry
    return None


def _autostarts(m: Machine) -> bool:
    found = service(m)
    return found is not None and found.get("autostart") is True


class Router:
    """Picks machines of an app for the proxy; one per served app (it keeps the
    round-robin position)."""

    def __init__(
        self, backend: FlyBackend, app: str, *, autostart_limit_s: float = AUTOSTART_LIMIT_S
    ) -> None:
        self.backend = backend
        self.app = app
        self.autostart_limit_s = autostart_limit_s
        self._turn = 0

    def _machines(self, app: str | None) -> list[Machine]:
        name = app or self.app
        try:
            found = self.backend.apps.get(name)
        except ApiError as exc:
            raise Unroutable(f"app {name!r} does not exist: create it, or fix the name.") from exc
        live = [m for m in found.machines.values() if service(m) is not None]
        return sorted(live, key=lambda m: (m.created_at, m.id))

    async def pick(
        self, *, app: str | None = None, region: str | None = None, exclude: str | None = None
    ) -> Target:
        """A started machine, round-robin; else one autostarted; else :class:`Unroutable`."""
        pool = [
            m
            for m in self._machines(app)
            if m.id != exclude and (region is None or m.region == region)
        ]
        started = [m for m in pool if m.state == State.STARTED]
        if started:
            chosen = started[self._turn % len(started)]
            self._turn += 1
            return _target(chosen)
        for m in pool:
            if m.state in STARTABLE and _autostarts(m):
                return await self._start(m)
        where = f" in region {region}" if region else ""
        raise Unroutable(
            f"fly-proxy: no started machine of app {app or self.app!r}{where} has a service, "
            "and none can be autostarted: start a machine (fly machine start) or set "
            "services[].autostart = true in its config."
        )

    async def instance(self, machine_id: str, *, app: str | None = None) -> Target:
        """That machine: started, or autostarted; else :class:`Unroutable`."""
        found = next((m for m in self._machines(app) if m.id == machine_id), None)
        if found is None or found.state == State.DESTROYED:
            raise Unroutable(
                f"fly-proxy: machine {machine_id} of app {app or self.app!r} does not exist "
                "or has no service: check the instance id."
            )
        if found.state == State.STARTED:
            return _target(found)
        if found.state in STARTABLE and _autostarts(found):
            return await self._start(found)
        raise Unroutable(
            f"fly-proxy: machine {machine_id} is {found.state}: it takes requests when "
            "started, or when stopped or suspended with services[].autostart = true."
        )

    async def _start(self, m: Machine) -> Target:
        if m.state in (State.CREATED, State.STOPPED):
            m.restarts = 0
            self.backend.launch(m)
        elif m.state == State.SUSPENDED:
            self.backend.resume(m)
        states = {"started", "failed", "destroyed"}
        waited = await self.backend.wait(m, states, self.autostart_limit_s, None)
        if waited is None or m.state != State.STARTED:
            raise Unroutable(
                f"fly-proxy: machine {m.id} was autostarted but is {m.state}, not "
                f"started, after up to {self.autostart_limit_s:.0f} s: its events say why.",
                reason="timeout",
            )
        return _target(m)


def _target(m: Machine) -> Target:
    found = service(m)
    assert found is not None  # only machines with a service are routed
    return Target(m, m.private_ip, int(found["internal_port"]))
