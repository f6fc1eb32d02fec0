"""What runs a container: the :class:`Runner` seam and :class:`DockerRunner`.

The backend (:mod:`emulator.containers.backend`) owns each container's lifecycle; a runner
only runs processes. :class:`DockerRunner` makes one Docker container per start:

- the image asked for (kit's runtime image by default), its env, and the instance type's
  memory (no swap on top) and CPU share (capped at this host's CPUs), a pids limit;
- ``--network none``: the emulator reaches the container's ports through its network
  namespace (:mod:`emulator.containers.netns`), so nothing is published on the host and
  every container may use the same port, as on Cloudflare;
- outbound interception when the start has an ``egress`` route: ``kit.internal`` resolves
  to the container's loopback, whose port 80 is relayed to the emulator's egress relay
  (:mod:`emulator.containers.egress`);
- outbound: every loopback URL in the env (``http://127.0.0.1:8787/…``, the shim under
  ``wrangler dev``) is reachable at the same URL inside: the emulator listens on that port
  in the container's namespace and relays to the host's loopback (the stand-in for
  Cloudflare's outbound interception, which sends such calls to the Worker); no other
  address or port is reachable;
- an OOM kill reaches the backend as exit 137 with ``oom`` (Docker's ``State.OOMKilled``);
- labels ``kit.cf.runner`` (this runner) and ``kit.cf.container`` (the DO id): entering the
  runner removes what a killed runner with the same id left (:meth:`DockerRunner.sweep`),
  closing it removes every container it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal as signals
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from emulator.containers.egress import WORKER_HOST, EgressRoute
from emulator.containers.errors import ContainersEmulatorError, RunnerError
from emulator.containers.netns import NetnsTransport, forward_out
from emulator.sandbox.dockerapi import DEFAULT_SOCKET, ContainerSpec, DockerClient
from kit.host.errors import SandboxError
from kit.tiers import Tier

LABEL_RUNNER = "kit.cf.runner"
LABEL_CONTAINER = "kit.cf.container"
PIDS_LIMIT = 4096
LOOPBACK_URL = re.compile(r"://(?:127\.0\.0\.1|localhost):(\d{1,5})\b")
"""A loopback URL in a container's env: its port is forwarded to the host's loopback."""


def loopback_ports(env: dict[str, str]) -> list[int]:
    """The ports of every ``http(s)://127.0.0.1:N`` or ``localhost:N`` URL in ``env``'s
    values (in a JSON value too), in order, once each."""
    found = (int(m) for value in env.values() for m in LOOPBACK_URL.findall(value))
    return list(dict.fromkeys(p for p in found if 0 < p < 65536))


KILLED = 128 + int(signals.SIGKILL)


@dataclass(frozen=True)
class LaunchSpec:
    """One start of a container: its DO id, image, environment, instance type, and the
    ``entrypoint`` that replaces the image's (None: the image's own)."""

    container_id: str
    image: str
    instance: Tier
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    egress: EgressRoute | None = None
    """Outbound interception (:mod:`emulator.containers.egress`): ``kit.internal`` port 80
    relayed to the emulator's egress relay."""


@dataclass(frozen=True)
class Exit:
    """How a run ended: its exit code as a shell shows it, and whether it was OOM-killed."""

    exit_code: int
    oom: bool = False


class Runner(Protocol):
    """Runs containers. Every method but :meth:`wait` returns once the action is done."""

    intercepts: bool
    """Whether a launch can take an ``egress`` route (outbound interception)."""

    async def launch(self, spec: LaunchSpec) -> None:
        """Start a new run of ``spec`` (a fresh root filesystem)."""
        ...

    async def wait(self, container_id: str) -> Exit:
        """Block until the current run ends; how it ended."""
        ...

    async def signal(self, container_id: str, signo: int) -> None:
        """Send ``signo`` to the run's processes."""
        ...

    async def remove(self, container_id: str) -> None:
        """Kill the run (if it runs) and remove it; absent is fine."""
        ...

    async def transport(self, container_id: str) -> httpx.AsyncBaseTransport:
        """An httpx transport to the run's own TCP ports."""
        ...


class DockerRunner:
    """Runs each container on the local Docker daemon (see the module docstring)."""

    intercepts = True

    def __init__(self, *, socket_path: str = DEFAULT_SOCKET, runner_id: str | None = None):
        """``runner_id`` names this runner's containers; give a stable one (say one per
        state folder) so that a new runner sweeps what a killed one left."""
        self.runner_id = runner_id or secrets.token_hex(6)
        self._docker = DockerClient(socket_path)
        self._runs: dict[str, str] = {}
        self._forwards: dict[str, list[asyncio.Server]] = {}

    async def __aenter__(self) -> DockerRunner:
        await self.sweep()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def sweep(self) -> int:
        """Remove every container carrying this runner id (a killed runner's leftovers);
        how many. No daemon: nothing to sweep."""
        return await self._docker.remove_labelled({LABEL_RUNNER: self.runner_id})

    async def close(self) -> None:
        """Remove every container this runner made, then close the connection."""
        try:
            await self.sweep()
        finally:
            for container_id in list(self._forwards):
                await self._unforward(container_id)
            self._runs.clear()
            await self._docker.close()

    def _run(self, container_id: str) -> str:
        try:
            return self._runs[container_id]
        except KeyError:
            raise RunnerError(f"Container {container_id} was never started.") from None

    async def launch(self, spec: LaunchSpec) -> None:
        """A new Docker container for ``spec`` (the previous run's removed)."""
        old = self._runs.pop(spec.container_id, None)
        await self._unforward(spec.container_id)
        cpus = min(spec.instance.vcpu, float(os.cpu_count() or 1))
        try:
            if old is not None:
                await self._docker.remove(old)
            cid = await self._docker.create(
                ContainerSpec(
                    image=spec.image,
                    name=f"kit-cf-{spec.container_id[:16]}-{secrets.token_hex(3)}",
                    user="",
                    labels={LABEL_RUNNER: self.runner_id, LABEL_CONTAINER: spec.container_id},
                    env=spec.env,
                    entrypoint=spec.entrypoint,
                    memory_bytes=spec.instance.memory_mib * 2**20,
                    nano_cpus=round(cpus * 1e9),
                    pids_limit=PIDS_LIMIT,
                    read_only_root=False,
                    network="none",
                    extra_hosts=(f"{WORKER_HOST}:127.0.0.1",) if spec.egress else (),
                )
            )
            self._runs[spec.container_id] = cid
            await self._docker.start(cid)
            pid = int(((await self._docker.inspect(cid)).get("State") or {}).get("Pid") or 0)
        except SandboxError as exc:
            raise RunnerError(f"Cannot start container {spec.container_id}: {exc}") from exc
        servers = self._forwards.setdefault(spec.container_id, [])
        outs: list[tuple[int, int, str | None]] = [(p, p, None) for p in loopback_ports(spec.env)]
        if spec.egress is not None:
            outs.append((80, spec.egress.port, spec.egress.source))
        for port, to_port, source in outs:
            try:
                servers.append(await forward_out(pid, port, to_port=to_port, source=source))
            except (OSError, ContainersEmulatorError) as exc:  # it exited, or holds the port
                await self.remove(spec.container_id)
                raise RunnerError(
                    f"Cannot forward port {port} into container {spec.container_id}: {exc}."
                ) from exc

    async def _unforward(self, container_id: str) -> None:
        for server in self._forwards.pop(container_id, []):
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def wait(self, container_id: str) -> Exit:
        """Until the run exits: its code, and ``oom`` from ``State.OOMKilled``."""
        cid = self._run(container_id)
        try:
            code = await self._docker.wait(cid)
            state = (await self._docker.inspect(cid)).get("State") or {}
        except SandboxError:
            return Exit(KILLED)  # removed under us: destroyed
        finally:
            await self._unforward(container_id)
        return Exit(code, oom=bool(state.get("OOMKilled")))

    async def signal(self, container_id: str, signo: int) -> None:
        """``docker kill --signal`` (to tini, which passes it on)."""
        try:
            await self._docker.kill(self._run(container_id), signo)
        except SandboxError as exc:
            raise RunnerError(f"Cannot signal container {container_id}: {exc}") from exc

    async def remove(self, container_id: str) -> None:
        """Remove the run's Docker container (killing it) and its forwarded ports."""
        await self._unforward(container_id)
        cid = self._runs.pop(container_id, None)
        if cid is not None:
            try:
                await self._docker.remove(cid)
            except SandboxError as exc:
                raise RunnerError(f"Cannot remove container {container_id}: {exc}") from exc

    async def transport(self, container_id: str) -> httpx.AsyncBaseTransport:
        """A transport into the run's network namespace (by its init's host pid)."""
        try:
            state = (await self._docker.inspect(self._run(container_id))).get("State") or {}
        except SandboxError as exc:
            raise RunnerError(f"Cannot inspect container {container_id}: {exc}") from exc
        return NetnsTransport(int(state.get("Pid") or 0))
