"""What runs a machine: the :class:`Runner` seam, and :class:`InProcessRunner`.

The API layer (``emulator.fly_api.backend``) owns states, versions, leases and events; a
runner only runs processes. A runner is told to :meth:`~Runner.launch` a machine from its
config (a fresh root filesystem every time), and is then awaited with :meth:`~Runner.wait`
for that run's :class:`Exit`. Stop, signal, suspend, resume, exec and kill act on the
current run. Two implementations:

- :class:`InProcessRunner` (here): nothing is executed; a run is a record that lasts until
  it is stopped, signalled or ended by a test (:meth:`InProcessRunner.exit`, which can also
  say ``oom_killed``). For API-semantics tests.
- :class:`emulator.fly_api.docker_runner.DockerRunner`: one container per run.
"""

from __future__ import annotations

import base64
import signal as signals
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from emulator.fly_api.errors import RunnerError

KILL = int(signals.SIGKILL)
GRACEFUL = frozenset({int(signals.SIGINT), int(signals.SIGTERM)})
"""Signals the in-process machine's "process" handles by exiting 0."""


@dataclass(frozen=True)
class LaunchSpec:
    """One run of a machine: who it is and its full ``config`` (Fly's ``MachineConfig``)."""

    app: str
    machine_id: str
    version: str
    region: str
    config: dict[str, Any]
    private_ip: str = ""
    """The machine's loopback address (``FLY_PRIVATE_IP``)."""
    secrets: tuple[tuple[str, str], ...] = ()
    """The app's secrets, which Fly puts in every machine's environment (over ``env``)."""

    @property
    def env(self) -> dict[str, str]:
        """``config.env`` plus the variables Fly sets in every machine and the app's
        secrets."""
        fly = {
            "FLY_APP_NAME": self.app,
            "FLY_MACHINE_ID": self.machine_id,
            "FLY_ALLOC_ID": self.machine_id,
            "FLY_REGION": self.region,
            "FLY_PRIVATE_IP": self.private_ip,
            "FLY_MACHINE_VERSION": self.version,
            "FLY_IMAGE_REF": str(self.config.get("image", "")),
            "FLY_PROCESS_GROUP": str(self.config.get("metadata", {}).get("fly_process_group", "")),
        }
        env = {str(k): str(v) for k, v in (self.config.get("env") or {}).items()}
        return {**fly, **env, **dict(self.secrets)}

    def files(self) -> dict[str, tuple[bytes, int]]:
        """``config.files`` with a ``raw_value``: guest path → (contents, mode)."""
        out: dict[str, tuple[bytes, int]] = {}
        for entry in self.config.get("files") or []:
            raw = entry.get("raw_value")
            if raw is None:
                continue  # secret_name / image_config: not emulated (the module docstring)
            try:
                data = base64.b64decode(raw, validate=True)
            except ValueError as exc:
                raise RunnerError(
                    f"config.files entry {entry.get('guest_path')!r}: raw_value is not base64."
                ) from exc
            out[str(entry["guest_path"])] = (data, int(entry.get("mode") or 0o644))
        return out


@dataclass(frozen=True)
class Exit:
    """How a run ended: its exit code, and whether the kernel's OOM killer ended it."""

    exit_code: int
    oom_killed: bool = False
    signal: int | None = None


@dataclass(frozen=True)
class ExecResult:
    """What ``exec`` answers: Fly's ``flydv1.ExecResponse``."""

    exit_code: int
    stdout: str = ""
    stderr: str = ""
    exit_signal: int = 0


class Runner(Protocol):
    """Runs machines. Every method but :meth:`wait` returns once the action is done."""

    async def launch(self, spec: LaunchSpec) -> None:
        """Start a new run from ``spec`` with a fresh root filesystem (any old run is gone)."""
        ...

    async def wait(self, machine_id: str) -> Exit:
        """Block until the current run ends; how it ended."""
        ...

    async def stop(self, machine_id: str, signal: int, timeout_s: float) -> None:
        """Send ``signal``; SIGKILL after ``timeout_s`` if it has not ended. A suspended run
        is resumed first (its snapshot is discarded)."""
        ...

    async def suspend(self, machine_id: str) -> None:
        """Freeze the run, keeping its processes and memory."""
        ...

    async def resume(self, machine_id: str) -> None:
        """Thaw a suspended run."""
        ...

    async def signal(self, machine_id: str, signal: int) -> None:
        """Send ``signal`` to the run's processes."""
        ...

    async def exec(
        self, machine_id: str, command: list[str], timeout_s: float, stdin: str | None
    ) -> ExecResult:
        """Run ``command`` inside the current run."""
        ...

    async def kill(self, machine_id: str) -> None:
        """End the run at once and forget everything of the machine (destroy)."""
        ...


@dataclass
class _Run:
    spec: LaunchSpec
    number: int
    files: dict[str, bytes]
    ended: anyio.Event = field(default_factory=anyio.Event)
    exit: Exit | None = None
    suspended: bool = False
    signals: list[int] = field(default_factory=list)

    def end(self, exit: Exit) -> None:
        if self.exit is None:
            self.exit = exit
            self.ended.set()


class InProcessRunner:
    """Machines that run nowhere: each run is a record a test can inspect and end.

    The run's "root filesystem" is a dict (``rootfs``), filled from ``config.files`` at
    launch, writable by ``exec`` of ``["write", path, text]`` and read by ``["cat", path]``;
    ``["exit", code]`` answers with that code, ``["echo", …]`` with its arguments; any
    other command echoes itself.
    SIGINT and SIGTERM end a run with 0, SIGKILL with 137; other signals are recorded.
    """

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._gate: anyio.Event | None = None
        self.launches = 0

    def hold(self) -> None:
        """Make launch, stop, suspend and resume wait until :meth:`release`, so a test can
        see the transient states (``starting``, ``stopping``, ``suspending``)."""
        if self._gate is None:
            self._gate = anyio.Event()

    def release(self) -> None:
        """Let held actions go on."""
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def _pass_gate(self) -> None:
        if self._gate is not None:
            await self._gate.wait()

    def run_number(self, machine_id: str) -> int:
        """Which launch the current run is (1, 2, …): a resume keeps it, a start after a
        stop makes a new one."""
        return self._run(machine_id).number

    def has_run(self, machine_id: str) -> bool:
        """Whether the machine has a run (False once killed)."""
        return machine_id in self._runs

    def env(self, machine_id: str) -> dict[str, str]:
        """The environment the current run was given."""
        return self._run(machine_id).spec.env

    def rootfs(self, machine_id: str) -> dict[str, bytes]:
        """The current run's files."""
        return self._run(machine_id).files

    def signals(self, machine_id: str) -> list[int]:
        """Signals the current run received."""
        return list(self._run(machine_id).signals)

    def is_suspended(self, machine_id: str) -> bool:
        """Whether the current run is frozen."""
        return self._run(machine_id).suspended

    def exit(self, machine_id: str, exit_code: int, *, oom_killed: bool = False) -> None:
        """End the current run as if its process exited (or was OOM-killed)."""
        self._run(machine_id).end(Exit(exit_code, oom_killed))

    async def launch(self, spec: LaunchSpec) -> None:
        """Record a new run with the config's files."""
        await self._pass_gate()
        files = {path: data for path, (data, _mode) in spec.files().items()}
        self.launches += 1
        self._runs[spec.machine_id] = _Run(spec, self.launches, files)

    async def wait(self, machine_id: str) -> Exit:
        """Until the current run is ended."""
        run = self._run(machine_id)
        await run.ended.wait()
        assert run.exit is not None
        return run.exit

    async def stop(self, machine_id: str, signal: int, timeout_s: float) -> None:
        """Graceful signals end the run with 0; others are ignored until ``timeout_s``
        passes, then SIGKILL (137)."""
        await self._pass_gate()
        run = self._run(machine_id)
        run.suspended = False
        await self.signal(machine_id, signal)
        with anyio.move_on_after(timeout_s):
            await run.ended.wait()
        run.end(Exit(128 + KILL, signal=KILL))

    async def suspend(self, machine_id: str) -> None:
        """Mark the run frozen."""
        await self._pass_gate()
        self._run(machine_id).suspended = True

    async def resume(self, machine_id: str) -> None:
        """Mark the run thawed."""
        await self._pass_gate()
        self._run(machine_id).suspended = False

    async def signal(self, machine_id: str, signal: int) -> None:
        """Record ``signal``; end the run when it is graceful (0) or SIGKILL (137)."""
        run = self._run(machine_id)
        run.signals.append(signal)
        if signal in GRACEFUL:
            run.end(Exit(0, signal=signal))
        elif signal == KILL:
            run.end(Exit(128 + KILL, signal=KILL))

    async def exec(
        self, machine_id: str, command: list[str], timeout_s: float, stdin: str | None
    ) -> ExecResult:
        """The scripted commands of the class docstring."""
        run = self._run(machine_id)
        if command[:1] == ["exit"] and len(command) == 2:
            return ExecResult(exit_code=int(command[1]), stderr=f"exit {command[1]}\n")
        if command[:1] == ["write"] and len(command) == 3:
            run.files[command[1]] = command[2].encode()
            return ExecResult(exit_code=0)
        if command[:1] == ["cat"] and len(command) == 2:
            if command[1] not in run.files:
                return ExecResult(1, stderr=f"cat: {command[1]}: No such file or directory\n")
            return ExecResult(0, stdout=run.files[command[1]].decode(errors="replace"))
        if command[:1] == ["echo"]:
            return ExecResult(exit_code=0, stdout=" ".join(command[1:]) + "\n")
        return ExecResult(exit_code=0, stdout=" ".join(command) + "\n")

    async def kill(self, machine_id: str) -> None:
        """End the run with 137 and forget the machine."""
        run = self._runs.pop(machine_id, None)
        if run is not None:
            run.end(Exit(128 + KILL, signal=KILL))

    def _run(self, machine_id: str) -> _Run:
        try:
            return self._runs[machine_id]
        except KeyError:
            raise RunnerError(f"Machine {machine_id} has no run: launch it first.") from None
