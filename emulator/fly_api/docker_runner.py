"""Machines as Docker containers: :class:`DockerRunner`, one container per run.

A launch makes a new container from ``config.image`` (so the root filesystem is fresh every
start after a stop, as on Fly), with ``config.guest`` as limits (``memory_mb`` → memory with
no swap on top, ``cpus`` → CPU quota, capped at this host's CPUs), ``config.env`` plus
Fly's ``FLY_*`` variables, ``config.files`` (``raw_value``) copied in before it starts, and
``config.init``: ``exec`` replaces entrypoint and command, else ``entrypoint``/``cmd``
override the image's. Networking is ``none`` by default or ``host`` (ARCHITECTURE §9; never
the default bridge). Suspend is ``docker pause`` (the processes and memory stay), resume
``docker unpause``. An OOM kill reaches the API as exit 137 with ``oom_killed``.

Containers carry the labels ``kit.fly.runner`` (this runner) and ``kit.fly.machine``;
:meth:`DockerRunner.close` removes every container of the runner.
"""

from __future__ import annotations

import io
import os
import secrets
import tarfile
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from emulator.fly_api.errors import RunnerError
from emulator.fly_api.runner import KILL, ExecResult, Exit, LaunchSpec
from emulator.sandbox.dockerapi import (
    DEFAULT_SOCKET,
    ContainerSpec,
    DockerClient,
    Network,
)
from kit.host.errors import SandboxError

LABEL_RUNNER = "kit.fly.runner"
LABEL_MACHINE = "kit.fly.machine"
DEFAULT_MEMORY_MB = 256
"""shared-cpu-1x's memory, Fly's default guest."""
PIDS_LIMIT = 4096
MIB = 1024 * 1024


class _MachineDocker(DockerClient):
    """The Docker calls machines need beyond container sandboxes': files, pause, exec."""

    async def put_archive(self, container: str, archive: bytes) -> None:
        """Unpack a tar archive at the container's root (before it starts)."""
        try:
            response = await self._http.put(
                f"/containers/{container}/archive",
                params={"path": "/"},
                content=archive,
                headers={"Content-Type": "application/x-tar"},
            )
        except httpx.HTTPError as exc:
            raise SandboxError(f"Docker API PUT archive failed: {exc!r}.") from exc
        if response.status_code != 200:
            raise SandboxError(f"Docker refused the machine's files: {response.text.strip()}")

    async def pause(self, container: str) -> None:
        """Freeze every process of the container."""
        await self._call("POST", f"/containers/{container}/pause")

    async def unpause(self, container: str) -> None:
        """Thaw the container."""
        await self._call("POST", f"/containers/{container}/unpause")

    async def exec_run(self, container: str, command: list[str]) -> tuple[int, bytes, bytes]:
        """Run ``command`` in the container; its exit code, stdout and stderr."""
        made = await self._call(
            "POST",
            f"/containers/{container}/exec",
            # As root, as Fly's exec runs a command (through its init), whatever the
            # image's USER: kit's OOM rehearsal marks a non-dumpable runtime through it.
            body={
                "Cmd": command,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": False,
                "User": "0",
            },
        )
        exec_id = str(made["Id"])
        try:
            response = await self._http.post(
                f"/exec/{exec_id}/start",
                json={"Detach": False, "Tty": False},
                timeout=httpx.Timeout(None),
            )
        except httpx.HTTPError as exc:
            raise SandboxError(f"Docker exec in {container} failed: {exc!r}.") from exc
        if response.status_code != 200:
            raise SandboxError(f"Docker refused exec in {container}: {response.text.strip()}")
        stdout, stderr = _split(response.content)
        done = await self._call("GET", f"/exec/{exec_id}/json")
        return int(done.get("ExitCode") or 0), stdout, stderr


class DockerRunner:
    """Runs each machine as a container on the local Docker daemon (see the module doc)."""

    def __init__(
        self,
        *,
        socket_path: str = DEFAULT_SOCKET,
        network: Network | Callable[[LaunchSpec], Network] = "none",
        runner_id: str | None = None,
    ) -> None:
        """``network`` is every machine's (``none`` or ``host``), or a function choosing
        per launch (say ``host`` for a gateway app's machines, ``none`` for sandboxes)."""
        self.runner_id = runner_id or secrets.token_hex(6)
        self.network = network
        self._docker = _MachineDocker(socket_path)
        self._containers: dict[str, str] = {}

    async def __aenter__(self) -> DockerRunner:
        await self.sweep()
        return self

    async def sweep(self) -> int:
        """Remove containers of this runner id left behind by a runner that was killed
        before it could close (a runner given a stable id, say one per state dir, finds
        its predecessor's); how many. No daemon: nothing to sweep."""
        return await self._docker.remove_labelled({LABEL_RUNNER: self.runner_id})

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def container(self, machine_id: str) -> str:
        """The id of the machine's current container."""
        try:
            return self._containers[machine_id]
        except KeyError:
            raise RunnerError(f"Machine {machine_id} has no container: start it first.") from None

    async def close(self) -> None:
        """Remove every container this runner made, then close the connection."""
        try:
            # no daemon left to clean: nothing of ours can be running on it
            await self._docker.remove_labelled({LABEL_RUNNER: self.runner_id})
        finally:
            self._containers.clear()
            await self._docker.close()

    async def launch(self, spec: LaunchSpec) -> None:
        """A new container for the machine (the old one removed), its files copied in."""
        old = self._containers.pop(spec.machine_id, None)
        try:
            if old is not None:
                await self._docker.remove(old)
            cid = await self._docker.create(self._container_spec(spec))
            self._containers[spec.machine_id] = cid
            files = spec.files()
            if files:
                await self._docker.put_archive(cid, _tar(files))
            await self._docker.start(cid)
        except SandboxError as exc:
            raise RunnerError(f"Cannot launch machine {spec.machine_id}: {exc}") from exc

    def _container_spec(self, spec: LaunchSpec) -> ContainerSpec:
        config, init = spec.config, spec.config.get("init") or {}
        guest = config.get("guest") or {}
        entrypoint: list[str] | None = None
        cmd: list[str] | None = None
        if init.get("exec"):
            entrypoint, cmd = [str(a) for a in init["exec"]], []
        else:
            if init.get("entrypoint"):
                entrypoint = [str(a) for a in init["entrypoint"]]
            if init.get("cmd"):
                cmd = [str(a) for a in init["cmd"]]
        cpus = min(int(guest.get("cpus") or 1), os.cpu_count() or 1)
        memory_mb = int(guest.get("memory_mb") or DEFAULT_MEMORY_MB)
        return ContainerSpec(
            image=str(config["image"]),
            name=f"kit-fly-{spec.machine_id}-{secrets.token_hex(3)}",
            user="",
            labels={LABEL_RUNNER: self.runner_id, LABEL_MACHINE: spec.machine_id},
            env=spec.env,
            entrypoint=entrypoint,
            cmd=cmd,
            memory_bytes=memory_mb * MIB,
            nano_cpus=cpus * 1_000_000_000,
            pids_limit=PIDS_LIMIT,
            read_only_root=False,
            network=self.network(spec) if callable(self.network) else self.network,
        )

    async def wait(self, machine_id: str) -> Exit:
        """Until the current container exits; its code and whether it was OOM-killed."""
        cid = self.container(machine_id)
        try:
            code = await self._docker.wait(cid)
            state = (await self._docker.inspect(cid)).get("State") or {}
        except SandboxError:
            return Exit(128 + KILL, signal=KILL)  # removed under us: destroyed
        return Exit(code, oom_killed=bool(state.get("OOMKilled")))

    async def stop(self, machine_id: str, signal: int, timeout_s: float) -> None:
        """``signal``, then SIGKILL after ``timeout_s``; a paused container is thawed first."""
        cid = self.container(machine_id)
        try:
            if await self._paused(cid):
                await self._docker.unpause(cid)
            if not await self._docker.kill(cid, signal):
                return
            with anyio.move_on_after(timeout_s):
                await self._docker.wait(cid)
                return
            await self._docker.kill(cid, KILL)
            await self._docker.wait(cid)
        except SandboxError as exc:
            raise RunnerError(f"Cannot stop machine {machine_id}: {exc}") from exc

    async def suspend(self, machine_id: str) -> None:
        """``docker pause``."""
        try:
            await self._docker.pause(self.container(machine_id))
        except SandboxError as exc:
            raise RunnerError(f"Cannot suspend machine {machine_id}: {exc}") from exc

    async def resume(self, machine_id: str) -> None:
        """``docker unpause``."""
        try:
            await self._docker.unpause(self.container(machine_id))
        except SandboxError as exc:
            raise RunnerError(f"Cannot resume machine {machine_id}: {exc}") from exc

    async def signal(self, machine_id: str, signal: int) -> None:
        """``docker kill --signal``."""
        try:
            await self._docker.kill(self.container(machine_id), signal)
        except SandboxError as exc:
            raise RunnerError(f"Cannot signal machine {machine_id}: {exc}") from exc

    async def exec(
        self, machine_id: str, command: list[str], timeout_s: float, stdin: str | None
    ) -> ExecResult:
        """``docker exec`` (no stdin: refused when given). The caller bounds it in time."""
        if stdin:
            raise RunnerError("exec with stdin is not emulated under Docker: pass no stdin.")
        try:
            code, out, err = await self._docker.exec_run(self.container(machine_id), command)
        except SandboxError as exc:
            raise RunnerError(f"Cannot exec in machine {machine_id}: {exc}") from exc
        return ExecResult(code, out.decode(errors="replace"), err.decode(errors="replace"))

    async def kill(self, machine_id: str) -> None:
        """Remove the container (killing it)."""
        cid = self._containers.pop(machine_id, None)
        if cid is not None:
            try:
                await self._docker.remove(cid)
            except SandboxError as exc:
                raise RunnerError(f"Cannot remove machine {machine_id}: {exc}") from exc

    async def _paused(self, cid: str) -> bool:
        state: dict[str, Any] = (await self._docker.inspect(cid)).get("State") or {}
        return bool(state.get("Paused"))


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A tar of ``files`` (absolute guest paths). No folder entries: Docker makes missing
    parents (0755) and an entry for an existing folder would change its mode (``/tmp``)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """Docker's multiplexed stream as (stdout, stderr)."""
    out, err, at = bytearray(), bytearray(), 0
    for _ in range(len(raw) // 8 + 1):
        if at + 8 > len(raw):
            break
        kind, size = raw[at], int.from_bytes(raw[at + 4 : at + 8], "big")
        (err if kind == 2 else out).extend(raw[at + 8 : at + 8 + size])
        at += 8 + size
    return bytes(out), bytes(err)
