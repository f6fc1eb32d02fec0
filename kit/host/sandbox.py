"""The sandbox provider seam: start a runtime for a session, watch it, kill it.

Implementations: ``emulator.sandbox.LocalSandboxProvider`` (tiered local processes, for
``kit dev``); Fly Machines later. The host only sees :class:`Sandbox` handles.
"""

from __future__ import annotations

import enum
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from kit.ids import SandboxId, SessionId
from kit.protocol.sandbox import HARNESS_EXIT_CODE


class SandboxState(enum.Enum):
    """Lifecycle of one sandbox."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True)
class ModelAccess:
    """How the sandbox reaches the host's model proxy (never the real API)."""

    base_url: str
    unix_socket: str | None
    token: str


@dataclass(frozen=True)
class EgressAccess:
    """How the sandbox reaches the host's egress proxy (its only way out besides the model).

    The proxy admits only the hosts on the agent's allowlist (``kit.toml`` ``[sandbox]
    egress``) and only with ``token``; a provider that isolates the network binds
    ``unix_socket`` into the sandbox and nothing else."""

    unix_socket: str
    token: str


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a provider needs to start one session's runtime."""

    session_id: SessionId
    tier: str
    bundle_dir: Path
    store_url: str
    model: ModelAccess
    runtime_token: str
    idle_timeout_s: int
    writable: tuple[Path, ...] = field(default=())
    """Host paths the sandbox must write besides its workspace (a local transcript store)."""
    egress: EgressAccess | None = None
    """The egress proxy, when the host runs one (None: no way out but the model proxy)."""


@dataclass(frozen=True)
class ExitInfo:
    """How a sandbox ended: ``exit_code`` as a shell reports it (137 = SIGKILL, 143 = SIGTERM)."""

    exit_code: int
    reason: str
    """``exited`` (code 0, on its own), ``harness`` (the agent harness died under the
    runtime: :data:`~kit.protocol.sandbox.HARNESS_EXIT_CODE`), ``crashed`` (other codes),
    ``killed`` (SIGKILL),
    ``stopped`` (SIGTERM from its owner), ``idle`` (stopped after its idle timeout),
    ``unresponsive`` (killed because it stopped answering) or ``oom`` (killed at its memory
    limit, where the provider enforces one)."""


def exit_code_of(returncode: int) -> int:
    """A process return code as a shell shows it: killed by signal N → 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def reason_of(exit_code: int) -> str:
    """The default reason for an exit code."""
    if exit_code == 128 + signal.SIGKILL:
        return "killed"
    if exit_code == 128 + signal.SIGTERM:
        return "stopped"
    if exit_code == HARNESS_EXIT_CODE:
        return "harness"
    return "exited" if exit_code == 0 else "crashed"


@dataclass(frozen=True)
class Usage:
    """Resources a sandbox has used: peaks over its life so far, CPU seconds in total."""

    peak_memory_mib: float
    cpu_s: float
    disk_mb: float
    throttled_s: float | None = None
    """Seconds, in total, its processes waited because the tier's CPU share was used up
    (``None``: the provider cannot tell, and the tier advisor says nothing about CPU)."""


class Sandbox(ABC):
    """A running (or finished) sandbox."""

    id: SandboxId
    session_id: SessionId
    endpoint: str
    """``unix:/path/to.sock`` or ``http://host:port``: where the runtime listens."""
    resumed: bool
    """Whether the runtime found the session's transcript and resumed it."""

    @property
    @abstractmethod
    def state(self) -> SandboxState:
        """Where the sandbox is in its lifecycle."""

    @abstractmethod
    async def wait(self) -> ExitInfo:
        """Wait until the sandbox has exited."""

    @abstractmethod
    async def kill(self, sig: int = signal.SIGKILL, reason: str | None = None) -> None:
        """Send ``sig`` to everything in the sandbox; ``reason`` is what :meth:`wait` reports."""

    async def usage(self) -> Usage | None:
        """What the sandbox has used so far (``None`` where the provider cannot measure)."""
        return None

    async def oom(self) -> None:
        """Push the sandbox past its memory limit now, to rehearse an OOM kill (exit 137).

        Providers that enforce no memory limit cannot; they raise :class:`SandboxError`.
        """
        from kit.host.errors import SandboxError

        raise SandboxError(f"Sandbox {self.id} has no memory limit to push it past.")

    async def stop(self, grace_s: float = 5.0) -> ExitInfo:
        """SIGTERM, then SIGKILL after ``grace_s`` seconds; wait for the exit."""
        import asyncio

        await self.kill(signal.SIGTERM, reason="stopped")
        try:
            return await asyncio.wait_for(self.wait(), grace_s)
        except TimeoutError:
            await self.kill(signal.SIGKILL, reason="stopped")
            return await self.wait()


class SandboxProvider(ABC):
    """Starts sandboxes."""

    @abstractmethod
    async def start(self, spec: SandboxSpec) -> Sandbox:
        """Start a runtime for ``spec`` and return once it is ready for turns."""

    async def discard(self, session_id: str) -> None:  # noqa: B027 - optional hook
        """Delete what was kept for ``session_id`` (its workspace), whose sandbox has
        stopped and which no session ever used (a pooled sandbox no session took)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release provider resources (running sandboxes are stopped by their owner)."""
