"""The containers' state and semantics: one container per Durable Object id.

A container is :attr:`State.RUNNING` from a successful start until its run ends, then
:attr:`State.EXITED` with its :class:`~emulator.containers.runner.Exit` (kept, so a late
``monitor`` still learns how it ended, as the DO does from ``monitor()``'s rejection). A
start while it runs is refused (409 ``running``); a start after an exit is a new run with a
fresh root filesystem. ``destroy`` kills and removes the run and is idempotent. ``oom``
is a rehearsal hook Cloudflare does not have (``kit sandbox oom``): the run is SIGKILLed and
its exit reported as the kernel's OOM kill at the instance's memory limit (137, ``oom``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from emulator.containers.egress import EgressRelay, Interception
from emulator.containers.errors import ApiError, RunnerError
from emulator.containers.runner import KILLED, Exit, LaunchSpec, Runner
from kit.tiers import LEGACY_NAMES, TIERS, Tier

MONITOR_LIMIT_S = 60.0
"""The longest one ``monitor`` long-poll waits before answering 204 (ask again)."""
DESTROY_LIMIT_S = 30.0
"""How long ``destroy`` (and ``oom``) waits for the run to be seen exiting."""
CLOUDFLARE_INSTANCES = tuple(name for name, tier in TIERS.items() if tier.platform == "cloudflare")


class State(enum.StrEnum):
    """A container's lifecycle."""

    RUNNING = "running"
    EXITED = "exited"


@dataclass
class Container:
    """One DO's container: its state, its current run's watcher, how the run ended."""

    id: str
    state: State
    exit: Exit | None = None
    watcher: asyncio.Task[None] | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    transport: httpx.AsyncBaseTransport | None = None
    oom_forced: bool = False
    """``oom`` killed the run: its SIGKILL is reported as an OOM kill."""

    def status(self) -> dict[str, Any]:
        """``{"running", "exit_code", "oom"}`` as ``GET /containers/{id}`` answers."""
        return {
            "running": self.state is State.RUNNING,
            "exit_code": self.exit.exit_code if self.exit else None,
            "oom": bool(self.exit and self.exit.oom),
        }


def instance_type(name: object) -> Tier:
    """The Cloudflare instance type called ``name`` (legacy names accepted); 422 naming
    the valid ones otherwise."""
    tier = TIERS.get(LEGACY_NAMES.get(name, name)) if isinstance(name, str) else None
    if tier is None or tier.platform != "cloudflare":
        raise ApiError(
            422,
            "bad_instance",
            f"Unknown instance type {name!r}: use one of {', '.join(CLOUDFLARE_INSTANCES)} "
            "(the tier in kit.toml).",
        )
    return tier


class ContainersBackend:
    """Every container of the emulator, run by ``runner``; ``image`` is the default image
    (kit's runtime image) for a start that names none."""

    def __init__(
        self, runner: Runner, *, image: str | None = None, relay: EgressRelay | None = None
    ) -> None:
        """``relay`` delivers intercepted requests (none: ``intercept`` is refused)."""
        self.runner = runner
        self.image = image
        self.relay = relay
        self.containers: dict[str, Container] = {}
        self.interceptions: dict[str, Interception] = {}
        self._starting: set[str] = set()

    def intercept(self, container_id: str, url: str, token: str) -> None:
        """Deliver the container's HTTP to ``url`` with ``token`` from its next start on (at
        once, where a run already has a route); 501 where runs cannot be intercepted."""
        if self.relay is None or not getattr(self.runner, "intercepts", False):
            raise ApiError(
                501,
                "not_supported",
                "This emulator cannot intercept a container's outbound HTTP (it needs Docker): "
                "run kit dev --target cloudflare where Docker runs (scripts/docker-up).",
            )
        found = self.interceptions.get(container_id)
        if found is None:
            self.interceptions[container_id] = Interception(url, token)
        else:
            found.url, found.token = url, token

    def get(self, container_id: str) -> Container | None:
        """The container of ``container_id``, if it was ever started."""
        return self.containers.get(container_id)

    async def start(
        self,
        container_id: str,
        *,
        env: Mapping[str, str],
        instance: object,
        image: str | None = None,
        entrypoint: list[str] | None = None,
    ) -> Container:
        """Start the container (409 while it runs or starts; 422 for a bad instance)."""
        tier = instance_type(instance)
        found = self.containers.get(container_id)
        if container_id in self._starting or (found and found.state is State.RUNNING):
            raise ApiError(
                409, "running", f"Container {container_id} already runs: destroy it first."
            )
        chosen = image or self.image
        if not chosen:
            raise ApiError(
                400, "no_image", 'No image to start: pass "image" or serve with a default image.'
            )
        self._starting.add(container_id)
        try:
            if found is not None:
                await self._settle(found)
            interception = self.interceptions.get(container_id)
            route = (
                self.relay.route(container_id, interception)
                if self.relay is not None and interception is not None
                else None
            )
            await self.runner.launch(
                LaunchSpec(container_id, chosen, tier, dict(env), entrypoint, egress=route)
            )
        except RunnerError as exc:
            raise ApiError(502, "start_failed", str(exc)) from exc
        finally:
            self._starting.discard(container_id)
        container = Container(container_id, State.RUNNING)
        container.watcher = asyncio.create_task(self._watch(container), name=f"cf-{container_id}")
        self.containers[container_id] = container
        return container

    async def _watch(self, container: Container) -> None:
        try:
            exit = await self.runner.wait(container.id)
        except RunnerError:
            exit = Exit(KILLED)
        if container.oom_forced and exit.exit_code == KILLED:
            exit = Exit(KILLED, oom=True)
        container.exit, container.state = exit, State.EXITED
        container.exited.set()
        if container.transport is not None:
            with contextlib.suppress(Exception):
                await container.transport.aclose()
            container.transport = None

    async def _settle(self, container: Container) -> None:
        if container.watcher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(container.watcher), DESTROY_LIMIT_S)

    async def monitor(self, container_id: str, timeout_s: float = MONITOR_LIMIT_S) -> Exit | None:
        """How the run ended, waiting up to ``timeout_s`` (≤ 60 s) for it; None: it runs."""
        container = self._started(container_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(container.exited.wait(), min(timeout_s, MONITOR_LIMIT_S))
        return container.exit

    async def signal(self, container_id: str, signo: int) -> None:
        """Send ``signo`` to the running container (409 ``not_running`` otherwise)."""
        container = self._started(container_id)
        if container.state is not State.RUNNING:
            raise ApiError(
                409, "not_running", f"Container {container_id} is not running: start it first."
            )
        try:
            await self.runner.signal(container_id, signo)
        except RunnerError as exc:
            raise ApiError(502, "signal_failed", str(exc)) from exc

    async def oom(self, container_id: str) -> Exit | None:
        """Kill the running container as at its memory limit (409 ``not_running``
        otherwise); how it ended, once seen (None if not within DESTROY_LIMIT_S)."""
        container = self._started(container_id)
        if container.state is not State.RUNNING:
            raise ApiError(
                409, "not_running", f"Container {container_id} is not running: start it first."
            )
        container.oom_forced = True
        try:
            await self.runner.signal(container_id, KILLED - 128)
        except RunnerError as exc:
            container.oom_forced = False
            raise ApiError(502, "signal_failed", str(exc)) from exc
        await self._settle(container)
        return container.exit

    async def destroy(self, container_id: str) -> None:
        """Kill and remove the container's run; nothing to do is fine."""
        container = self.containers.get(container_id)
        if container is None:
            return
        try:
            await self.runner.remove(container_id)
        except RunnerError as exc:
            raise ApiError(502, "destroy_failed", str(exc)) from exc
        await self._settle(container)

    async def transport(self, container_id: str) -> httpx.AsyncBaseTransport:
        """The transport to the running container's ports (503 ``not_running``)."""
        container = self.containers.get(container_id)
        if container is None or container.state is not State.RUNNING:
            raise ApiError(
                503, "not_running", f"Container {container_id} is not running: start it first."
            )
        if container.transport is None:
            try:
                container.transport = await self.runner.transport(container_id)
            except RunnerError as exc:
                raise ApiError(503, "not_running", str(exc)) from exc
        return container.transport

    def _started(self, container_id: str) -> Container:
        container = self.containers.get(container_id)
        if container is None:
            raise ApiError(
                404, "not_started", f"Container {container_id} was never started: start it first."
            )
        return container

    async def close(self) -> None:
        """Remove every container (the runner's own close removes its leftovers too)."""
        for container_id in list(self.containers):
            with contextlib.suppress(ApiError):
                await self.destroy(container_id)
        for container in self.containers.values():
            if container.watcher is not None:
                container.watcher.cancel()
