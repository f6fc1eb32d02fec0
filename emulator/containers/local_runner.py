"""Containers as local processes where Docker cannot run: :class:`LocalRunner`.

A run is the start's ``entrypoint`` (default: ``python -m kit.runtime``, the runtime
image's own entrypoint, with this interpreter) in its own session and process group, with
the start's env on top of a minimal one (``PATH``, ``LANG``) and a fresh folder as its
working directory. There is no image: ``image`` is ignored (the host's programs are used).

- **memory and OOM**: as root, a cgroup v1 group per run from :mod:`emulator.sandbox.cgroups`
  holds the instance's memory (no swap) and CPU share; at the limit the whole run is killed
  (exit 137, ``oom``), as a container dies. Without cgroups: no limit (said once).
- **network**: as root, each run gets its own network namespace with only loopback up, so
  the port proxy and outbound forwarding work exactly as for Docker containers
  (:mod:`emulator.containers.netns`); without root the run shares the host's network, the
  port proxy connects to the host's ``127.0.0.1:<port>`` and two runs cannot share a port.
- **signal** goes to the process group; **remove** kills the group with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import secrets
import shutil
import signal as signals
import socket
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from emulator.containers.errors import ContainersEmulatorError, RunnerError
from emulator.containers.netns import CLONE_NEWNET, NetnsTransport, forward_out
from emulator.containers.runner import KILLED, Exit, LaunchSpec, loopback_ports
from emulator.sandbox.cgroups import Cgroups, Limits, SandboxCgroup

log = logging.getLogger("emulator.containers.local")

SIOCSIFFLAGS = 0x8914
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
REMOVE_LIMIT_S = 10.0
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def _own_loopback() -> None:
    """In the child, before exec: a new network namespace with ``lo`` up."""
    if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
        os._exit(126)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags))


@dataclass
class _Run:
    process: asyncio.subprocess.Process
    folder: Path
    group: SandboxCgroup | None
    isolated: bool
    oom: bool = False
    forwards: list[asyncio.Server] = field(default_factory=list)


class LocalRunner:
    """Runs each container as a local process tree (see the module docstring)."""

    intercepts = False
    """No outbound interception: a run shares the host's /etc/hosts."""

    def __init__(self, *, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="kit-cf-local-"))
        self.isolated = os.geteuid() == 0
        self._cgroups, why = Cgroups.probe() if self.isolated else (None, "not root")
        if self._cgroups is None:
            log.warning("containers run without memory or CPU limits: %s", why)
        self._runs: dict[str, _Run] = {}

    async def __aenter__(self) -> LocalRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Kill every run and remove its folder and groups."""
        for container_id in list(self._runs):
            await self.remove(container_id)
        if self._cgroups is not None:
            self._cgroups.remove()

    def _run(self, container_id: str) -> _Run:
        try:
            return self._runs[container_id]
        except KeyError:
            raise RunnerError(f"Container {container_id} was never started.") from None

    async def launch(self, spec: LaunchSpec) -> None:
        """Start the entrypoint as a new process group (any previous run removed)."""
        await self.remove(spec.container_id)
        folder = self.root / f"{spec.container_id[:16]}-{secrets.token_hex(3)}"
        folder.mkdir(parents=True)
        group = None
        if self._cgroups is not None:
            group = self._cgroups.create(folder.name, Limits.for_tier(spec.instance))

        def confine() -> None:
            if group is not None:
                group.add(os.getpid())
            if self.isolated:
                _own_loopback()

        command = spec.entrypoint or [sys.executable, "-m", "kit.runtime"]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                env={**BASE_ENV, **spec.env},
                cwd=folder,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=confine,
            )
        except OSError as exc:
            if group is not None:
                group.remove_now()
            raise RunnerError(f"Cannot start container {spec.container_id}: {exc}.") from exc
        run = _Run(process, folder, group, self.isolated)
        self._runs[spec.container_id] = run
        if group is not None:
            group.watch_oom(lambda: self._oom(run))
        if self.isolated:
            for port in loopback_ports(spec.env):
                try:
                    run.forwards.append(await forward_out(process.pid, port))
                except (OSError, ContainersEmulatorError) as exc:  # it exited already
                    await self.remove(spec.container_id)
                    raise RunnerError(
                        f"Cannot forward port {port} into container {spec.container_id}: {exc}."
                    ) from exc

    def _oom(self, run: _Run) -> None:
        run.oom = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.process.pid, signals.SIGKILL)

    async def wait(self, container_id: str) -> Exit:
        """Until the run's process exits: its code as a shell shows it, and ``oom``."""
        run = self._run(container_id)
        code = await run.process.wait()
        for server in run.forwards:
            server.close()
        if run.oom:
            return Exit(KILLED, oom=True)
        return Exit(128 - code if code < 0 else code)

    async def signal(self, container_id: str, signo: int) -> None:
        """Send ``signo`` to the run's process group."""
        with contextlib.suppress(ProcessLookupError):  # just exited: its wait says how
            os.killpg(self._run(container_id).process.pid, signo)

    async def remove(self, container_id: str) -> None:
        """Kill the run's process group, then remove its folder and groups."""
        run = self._runs.pop(container_id, None)
        if run is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.process.pid, signals.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.process.wait(), REMOVE_LIMIT_S)
        if run.group is not None:
            with contextlib.suppress(OSError):
                for pid in run.group.members():
                    os.kill(pid, signals.SIGKILL)
            await run.group.remove()
        await asyncio.to_thread(shutil.rmtree, run.folder, True)

    async def transport(self, container_id: str) -> httpx.AsyncBaseTransport:
        """Into the run's network namespace, or the host's loopback when not isolated."""
        run = self._run(container_id)
        if run.isolated:
            return NetnsTransport(run.process.pid)
        return httpx.AsyncHTTPTransport()
