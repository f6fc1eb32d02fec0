"""Tier limits on a local sandbox's process tree: cgroup v1 where writable, rlimits otherwise.

One :class:`Cgroups` per provider finds the memory, cpu, cpuacct and pids hierarchies
(``/proc/self/mountinfo``) and makes a folder ``kit-<host pid>`` under the host's own cgroup
in each, so sandboxes stay inside whatever the host itself is confined to. Each sandbox gets
a :class:`SandboxCgroup` below that:

================  ===============================================  =========================
limit             cgroup v1 file                                   from the tier
================  ===============================================  =========================
memory            ``memory.limit_in_bytes`` (+ ``memsw`` = no swap)  ``memory_mib``
OOM               ``memory.oom_control`` (kernel killer off,      the group at its limit
                  watched with an eventfd)                         is killed whole:
                                                                   reason ``oom``, exit 137
CPU share         ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``     ``vcpu`` x 100 ms per 100 ms,
                                                                   from the runtime's ready line
                                                                   (start-up runs unthrottled)
pids              ``pids.max``                                     :data:`PIDS_MAX`
================  ===============================================  =========================

Usage (peak and current memory, CPU seconds, time spent throttled at the CPU quota) comes
from ``memory.max_usage_in_bytes``, ``memory.usage_in_bytes``, ``cpuacct.usage`` and the cpu
controller's ``cpu.stat`` (``nr_periods``, ``nr_throttled``, ``throttled_time``). Where no writable cgroup v1 hierarchy exists
(not root, cgroup v2 only, a read-only ``/sys/fs/cgroup``) :func:`rlimits_for` gives the
per-process fallback and the provider says once what it cannot enforce.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kit.tiers import Tier

log = logging.getLogger("emulator.sandbox")

CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000
PIDS_MAX = 512
"""Processes and threads per sandbox (neither platform documents one; a fork bomb stops here)."""
RMDIR_TRIES = 100
RMDIR_WAIT_S = 0.01


@dataclass(frozen=True)
class Limits:
    """What a sandbox may use, derived from its tier."""

    memory_bytes: int
    cpu_quota_us: int
    cpu_period_us: int
    pids_max: int
    disk_bytes: int

    @classmethod
    def for_tier(cls, tier: Tier, *, pids_max: int = PIDS_MAX) -> Limits:
        """The limits of ``tier``: its memory, its vCPU share as a CFS quota, its disk."""
        quota = max(MIN_CFS_QUOTA_US, round(tier.vcpu * CFS_PERIOD_US))
        return cls(tier.memory_mib * 2**20, quota, CFS_PERIOD_US, pids_max, tier.disk_mb * 10**6)


@dataclass(frozen=True)
class SandboxUsage:
    """Resources one sandbox has used; ``None`` where this machine cannot measure it."""

    peak_memory_bytes: int | None
    memory_bytes: int | None
    cpu_s: float | None
    workspace_bytes: int
    oom_kills: int = 0
    throttled_s: float | None = None
    """Time the group sat throttled at its CPU quota (``cpu.stat`` ``throttled_time``: summed
    over the CPUs it was throttled on, so a multi-threaded burst can count more than wall
    time)."""
    throttled_periods: int | None = None
    """Quota periods (100 ms) in which the group was throttled (``nr_throttled``)."""


class Cgroups:
    """This host's cgroup v1 folders, one per controller; :meth:`probe` finds or refuses them."""

    def __init__(self, bases: dict[str, Path]) -> None:
        self.bases = bases

    @classmethod
    def probe(cls) -> tuple[Cgroups | None, str]:
        """Cgroups ready for sandboxes, or None and the reason they cannot be used."""
        mounts = _v1_mounts()
        missing = [c for c in CONTROLLERS if c not in mounts]
        if missing:
            return None, f"no cgroup v1 hierarchy for {', '.join(missing)} is mounted"
        own = _own_cgroups()
        bases: dict[str, Path] = {}
        for controller in CONTROLLERS:
            base = mounts[controller] / own.get(controller, "/").lstrip("/") / f"kit-{os.getpid()}"
            try:
                base.mkdir(exist_ok=True)
                if controller == "memory":
                    (base / "memory.use_hierarchy").write_text("1")
            except OSError as exc:
                for made in bases.values():
                    with contextlib.suppress(OSError):
                        made.rmdir()
                return None, f"cannot create {base} ({exc.strerror or exc})"
            bases[controller] = base
            _sweep_stale(base.parent)
        return cls(bases), ""

    @classmethod
    def available(cls) -> bool:
        """Whether this process could confine sandboxes (probes, then tidies up)."""
        cgroups, _ = cls.probe()
        if cgroups is not None:
            cgroups.remove()
        return cgroups is not None

    def create(self, name: str, limits: Limits, *, throttle: bool = True) -> SandboxCgroup:
        """A cgroup per controller named ``name`` with ``limits`` written (the CPU quota only
        with ``throttle``; else later, by :meth:`SandboxCgroup.throttle`)."""
        paths = {c: base / name for c, base in self.bases.items()}
        for path in paths.values():
            path.mkdir(exist_ok=True)
        group = SandboxCgroup(paths)
        try:
            group.write("memory", "memory.limit_in_bytes", limits.memory_bytes)
            # No swap: memory+swap gets the same ceiling (absent when swap accounting is off).
            if (paths["memory"] / "memory.memsw.limit_in_bytes").exists():
                group.write("memory", "memory.memsw.limit_in_bytes", limits.memory_bytes)
            # At the limit the kernel pauses the group instead of killing one process (which
            # could be the CLI, whose death the runtime would report first): the OOM eventfd
            # fires and the provider kills the whole sandbox, as a container dies.
            group.write("memory", "memory.oom_control", 1)
            if throttle:
                group.throttle(limits)
            group.write("pids", "pids.max", limits.pids_max)
        except OSError:
            group.remove_now()
            raise
        return group

    def prime(self) -> None:
        """Write this process into the cgroup it is in already (a no-op move), so that the
        next move of a sandbox into its cgroup is fast. Blocks for up to an RCU grace period
        (~15 ms): call it in a thread, a little before :meth:`SandboxCgroup.add`.

        The kernel's first cgroup move after a quiet spell waits for a grace period before it
        may take the lock every move takes (``cgroup_threadgroup_rwsem``, a per-CPU rwsem),
        and the lock stays cheap for a grace period after; ``add`` then costs ~0.5 ms, not
        ~15. Best effort: a failure here only leaves ``add`` as slow as it was."""
        with contextlib.suppress(OSError):
            (self.bases["pids"].parent / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        """Remove this host's folders (they must be empty: every sandbox removed first)."""
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                base.rmdir()


class SandboxCgroup:
    """One sandbox's cgroups: join, watch for OOM, read usage, remove."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self._eventfd: int | None = None

    def write(self, controller: str, name: str, value: int | str) -> None:
        """Write one control file."""
        (self.paths[controller] / name).write_text(str(value))

    def read(self, controller: str, name: str) -> str:
        """Read one control file."""
        return (self.paths[controller] / name).read_text()

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into every controller's group."""
        for controller in CONTROLLERS:
            self.write(controller, "cgroup.procs", pid)

    def throttle(self, limits: Limits) -> None:
        """Hold the group to its tier's CPU share from now on."""
        self.write("cpu", "cpu.cfs_period_us", limits.cpu_period_us)
        self.write("cpu", "cpu.cfs_quota_us", limits.cpu_quota_us)

    def members(self) -> set[int]:
        """PIDs in the sandbox's pids group."""
        return {int(p) for p in self.read("pids", "cgroup.procs").split()}

    def watch_oom(self, on_oom: Callable[[], None]) -> None:
        """Call ``on_oom`` (on the running loop) when the kernel OOM-kills inside the group."""
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        control = os.open(self.paths["memory"] / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.write("memory", "cgroup.event_control", f"{efd} {control}")
        except OSError:
            os.close(efd)
            raise
        finally:
            os.close(control)
        self._eventfd = efd

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(efd)
            on_oom()

        asyncio.get_running_loop().add_reader(efd, readable)

    def oom_kills(self) -> int:
        """How often the group has been out of memory: processes the kernel killed, plus one
        while it is paused at the limit."""
        state = {}
        for line in self.read("memory", "memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            state[key] = int(value)
        return state.get("oom_kill", 0) + state.get("under_oom", 0)

    def squeeze(self) -> int:
        """Lower the memory limit to the current usage, so the next allocation OOMs; the limit."""
        usage = int(self.read("memory", "memory.usage_in_bytes"))
        target = max(usage, 2**20)
        if (self.paths["memory"] / "memory.memsw.limit_in_bytes").exists():
            # memsw must stay >= the memory limit: lower the memory limit first.
            self.write("memory", "memory.limit_in_bytes", target)
            self.write("memory", "memory.memsw.limit_in_bytes", target)
        else:
            self.write("memory", "memory.limit_in_bytes", target)
        return target

    def cpu_stat(self) -> dict[str, int]:
        """The cpu controller's ``cpu.stat``: ``nr_periods``, ``nr_throttled``,
        ``throttled_time`` (ns) and, on newer kernels, ``nr_bursts`` and ``burst_time``."""
        stat = {}
        for line in self.read("cpu", "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                stat[key] = int(value)
        return stat

    def usage(self, workspace_bytes: int) -> SandboxUsage:
        """Peak and current memory, CPU seconds, CPU throttling, and ``workspace_bytes``."""
        stat = self.cpu_stat()
        throttled_ns, throttled = stat.get("throttled_time"), stat.get("nr_throttled")
        return SandboxUsage(
            peak_memory_bytes=int(self.read("memory", "memory.max_usage_in_bytes")),
            memory_bytes=int(self.read("memory", "memory.usage_in_bytes")),
            cpu_s=int(self.read("cpuacct", "cpuacct.usage")) / 1e9,
            workspace_bytes=workspace_bytes,
            oom_kills=self.oom_kills(),
            throttled_s=None if throttled_ns is None else throttled_ns / 1e9,
            throttled_periods=throttled,
        )

    def stop_watching(self) -> None:
        """Forget the OOM eventfd."""
        if self._eventfd is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._eventfd)
            os.close(self._eventfd)
            self._eventfd = None

    async def remove(self) -> None:
        """Remove the groups once their last process is gone (bounded wait)."""
        self.stop_watching()
        for _ in range(RMDIR_TRIES):
            if self.remove_now():
                return
            await asyncio.sleep(RMDIR_WAIT_S)
        log.warning("cgroups %s still busy; left in place", self.paths["memory"])

    def remove_now(self) -> bool:
        """Try once to remove every group; True when none is left."""
        done = True
        for path in self.paths.values():
            try:
                path.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                done = False
        return done


def rlimits_for(limits: Limits) -> dict[int, tuple[int, int]]:
    """The per-process fallback without cgroups: no file larger than the disk quota, no cores.

    Memory, CPU share and pids have no per-sandbox rlimit: ``RLIMIT_AS`` breaks the CLI (V8
    reserves gigabytes of address space it never touches), ``RLIMIT_NPROC`` counts every
    process of the sandbox user (all sandboxes at once) and ``RLIMIT_CPU`` caps total seconds,
    not a share.
    """
    return {
        resource.RLIMIT_FSIZE: (limits.disk_bytes, limits.disk_bytes),
        resource.RLIMIT_CORE: (0, 0),
    }


def _v1_mounts() -> dict[str, Path]:
    found: dict[str, Path] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, super_opts = [*right.split(), "", "", ""][:3]
            if fstype != "cgroup":
                continue
            mount_point = Path(left.split()[4])
            for option in super_opts.split(","):
                if option in CONTROLLERS and option not in found:
                    found[option] = mount_point
    return found


def _own_cgroups() -> dict[str, str]:
    own: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            for name in names.split(","):
                own[name] = path
    return own


def _sweep_stale(parent: Path) -> None:
    """Remove the empty folders of kit hosts that are gone (killed before they cleaned up)."""
    for entry in parent.glob("kit-*"):
        pid = entry.name.removeprefix("kit-")
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for child in entry.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            entry.rmdir()


MAX_TREE_ENTRIES = 200_000


def tree_bytes(root: Path, max_entries: int = MAX_TREE_ENTRIES) -> int:
    """Disk blocks used under ``root`` (as ``du`` counts them), looking at most at
    ``max_entries`` entries; symlinks are not followed."""
    return tree_usage(root, max_entries)[0]


def tree_usage(root: Path, max_entries: int = MAX_TREE_ENTRIES) -> tuple[int, int]:
    """Disk blocks used under ``root`` and the entries looked at (at most ``max_entries``:
    then the total is a floor)."""
    total = 0
    stack = [root]
    seen = 0
    while stack and seen < max_entries:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return total, seen
