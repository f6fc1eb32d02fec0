"""One local sandbox: a runtime's process group (and cgroup) on this machine, watched until it
ends, held to its tier's disk and maximum lifetime, killed whole.

An OOM kill anywhere in the group ends the whole sandbox (``oom``, 137); a workspace past its
tier's disk ends it too (``disk``, 137); so does its maximum lifetime (``lifetime``: SIGTERM,
143). The exit is reported only once nothing of the group runs any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from emulator.sandbox.cgroups import Limits, SandboxCgroup, SandboxUsage, tree_bytes
from emulator.sandbox.guard import hold_to_limits, over_quota
from emulator.sandbox.rehearsal import Rehearsable
from kit.host.errors import SandboxError
from kit.host.sandbox import (
    ExitInfo,
    Sandbox,
    SandboxSpec,
    Usage,
    exit_code_of,
    reason_of,
)
from kit.ids import SandboxId

log = logging.getLogger("emulator.sandbox")

GROUP_EXIT_POLLS = 500
GROUP_EXIT_POLL_S = 0.01
"""After SIGKILL the kernel ends a group within milliseconds; give it up to 5 s."""
OOM_NOW_WAIT_S = 2.0
"""After :meth:`LocalSandboxProvider.oom` squeezes the limit: how long the kernel gets to
OOM-kill before the provider kills the sandbox itself (an idle runtime allocates nothing)."""


class LocalSandbox(Sandbox, Rehearsable):
    """A runtime process group on this machine."""

    def __init__(
        self,
        spec: SandboxSpec,
        pid: int,
        wait: Callable[[], Awaitable[int]],
        endpoint: str,
        log_path: Path,
        *,
        sandbox_id: SandboxId | None = None,
        limits: Limits | None = None,
        cgroup: SandboxCgroup | None = None,
        workspace: Path | None = None,
        max_lifetime_s: float | None = None,
    ) -> None:
        self.id = sandbox_id or SandboxId(f"sbx-{uuid.uuid4().hex[:12]}")
        self.session_id = spec.session_id
        self.limits = limits
        self.cgroup = cgroup
        self.workspace = workspace
        self.max_lifetime_s = max_lifetime_s
        self.final_usage: SandboxUsage | None = None
        """What the sandbox used in all, read as it exited (peak memory, CPU, disk)."""
        self.spec = spec
        self.endpoint = endpoint
        self.resumed = False
        self.log_path = log_path
        self.pid = pid  # also its process group: runtimes start their own session
        self._wait_returncode = wait
        self._reason: str | None = None
        self._exit: ExitInfo | None = None
        self._waiter = asyncio.create_task(self._reap(), name=f"reap-{self.id}")
        self._guard: asyncio.Task[None] | None = None
        if cgroup is not None:
            cgroup.watch_oom(self._on_oom)

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the sandbox has exited and been reaped."""
        self._waiter.add_done_callback(lambda _: callback())

    def guard(self) -> None:
        """Start enforcing the disk quota and the maximum lifetime (once the runtime is up)."""
        if self._guard is None and self._exit is None:
            self._guard = asyncio.create_task(self._enforce(), name=f"guard-{self.id}")

    async def _enforce(self) -> None:
        await hold_to_limits(
            self.id,
            self._waiter,
            self.over_disk_quota,
            lambda sig, reason: self.kill(sig, reason=reason),
            self.max_lifetime_s,
        )

    def over_disk_quota(self) -> bool:
        """Whether the workspace holds more than the tier's disk."""
        if self.limits is None or self.workspace is None:
            return False
        return over_quota([self.workspace], self.limits.disk_bytes)

    def _on_oom(self) -> None:
        log.warning("sandbox %s hit its memory limit; killing it (exit 137)", self.id)
        asyncio.get_running_loop().create_task(self.kill(signal.SIGKILL, reason="oom"))

    def measure(self) -> SandboxUsage:
        """Resources used so far (after the exit: in all). ``None`` fields: not measurable here."""
        if self.final_usage is not None:
            return self.final_usage
        workspace = tree_bytes(self.workspace) if self.workspace is not None else 0
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                return self.cgroup.usage(workspace)
        return SandboxUsage(None, None, None, workspace)

    async def usage(self) -> Usage | None:
        """Peak memory, CPU seconds, CPU throttling and workspace disk so far; None without
        cgroups."""
        used = await asyncio.to_thread(self.measure)
        if used.peak_memory_bytes is None or used.cpu_s is None:
            return None
        held = None
        if used.throttled_periods is not None and self.limits is not None:
            # Wall-clock time in quota periods that ran out: nr_throttled counts a period once
            # however many CPUs waited in it (throttled_time adds them up, past wall time).
            held = used.throttled_periods * self.limits.cpu_period_us / 1e6
        return Usage(
            used.peak_memory_bytes / 2**20,
            used.cpu_s,
            used.workspace_bytes / 1e6,
            throttled_s=held,
        )

    async def oom(self) -> None:
        """Run the sandbox out of memory now, as at its tier's limit (``oom``, exit 137).

        Lowers the memory limit to the current usage so the kernel OOM-kills on the next
        allocation; an idle runtime allocates nothing, so after :data:`OOM_NOW_WAIT_S` the
        sandbox is killed directly, with the same report. Without cgroups: SandboxError.
        """
        if self.cgroup is None:
            raise SandboxError(
                f"Sandbox {self.id} has no memory limit on this machine (no writable cgroups)."
            )
        if self._exit is not None:
            return
        with contextlib.suppress(OSError):
            self.cgroup.squeeze()
        try:
            await asyncio.wait_for(self.wait(), OOM_NOW_WAIT_S)
        except TimeoutError:
            await self.kill(signal.SIGKILL, reason="oom")
            await self.wait()

    def _has_exited(self) -> bool:
        return self._exit is not None

    def alive(self) -> bool:
        """Whether the runtime process has not exited yet."""
        return not self._waiter.done()

    async def _reap(self) -> ExitInfo:
        code = exit_code_of(await self._wait_returncode())
        # The runtime is gone; take everything left in its group with it (its CLI, a Bash
        # tool) and report the exit only once none of it runs: a replacement sandbox must
        # never overlap the old one on the same transcript. The CLI starts tools in process
        # groups of their own: the cgroup is what holds all of them.
        for _ in range(GROUP_EXIT_POLLS):
            self._signal_all(signal.SIGKILL)
            if not live_group_members(self.pid) and not self._cgroup_members():
                break
            await asyncio.sleep(GROUP_EXIT_POLL_S)
        else:
            log.warning("sandbox %s: processes of group %d outlived SIGKILL", self.id, self.pid)
        self.final_usage = self.measure()
        if self.cgroup is not None:
            if self.final_usage.oom_kills and self._reason is None:
                self._reason = "oom"  # the kernel killed first; the eventfd was not read yet
            await self.cgroup.remove()
        if self._reason in ("oom", "disk"):
            code = 128 + signal.SIGKILL
        self._exit = ExitInfo(code, self._reason or reason_of(code))
        if self._guard is not None and self._guard is not asyncio.current_task():
            self._guard.cancel()
        return self._exit

    async def _reported_exit(self) -> ExitInfo:
        # The kernel reaps a SIGKILLed group, so this always ends: Sandbox.wait's bound
        # after a SIGKILL never has to stand in for it here.
        return await asyncio.shield(self._waiter)

    async def _send_signal(self, sig: int, reason: str | None) -> None:
        if self._exit is not None:
            return
        if reason is not None and self._reason is None:
            self._reason = reason
        self._signal_all(sig)

    def _cgroup_members(self) -> set[int]:
        if self.cgroup is None:
            return set()
        try:
            return self.cgroup.members()
        except OSError:
            return set()

    def _signal_all(self, sig: int) -> None:
        """``sig`` to the runtime's process group and to every process in its cgroup."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        for pid in self._cgroup_members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` that are not zombies."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state, ppid, pgrp, ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry.name))
    return members
