"""Sandboxes as local processes: ``python -m kit.runtime`` in its own process group.

Each session gets a folder ``<root>/<session_id>/`` with ``workspace/`` (the agent's cwd,
kept across sandboxes so the SDK's resume finds the same project key), ``home/``,
``tmp/`` and ``run/`` (the runtime's socket, in a short folder under the temp dir). When
kit runs as root the runtime runs as an unprivileged user (``nobody`` unless told otherwise)
that owns only that folder.

Only their owner may enter these folders (0700); ``<root>`` and the logs (``zygote.log``,
each session's ``.logs/<session_id>.log``: 0600) are this user's alone. A confined sandbox gets its folders,
bundle and sockets bound in by root; only an unconfined one run as another user walks to
them itself, so then ``<root>`` is 0710 to its group (:attr:`LocalSandboxProvider.
traverse_gid`): to pass through, not to list. The socket folder is 0710 to the sandbox
user's group whenever that is another user (bubblewrap finds its staging folder there).

Each sandbox runs under its tier's limits (:mod:`emulator.sandbox.limits`, docs/tiers.md):
its processes join their cgroups before the runtime is handed its session, so no agent code
runs outside them. An OOM kill anywhere in the group ends the whole sandbox (``oom``, 137);
a workspace past its tier's disk ends it too (``disk``, 137); so does its maximum lifetime
(``lifetime``: SIGTERM, 143). Idle stops are the host's (SIGTERM, ``idle``, 143).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import pwd
import resource
import shutil
import signal
import stat
import sys
import tempfile
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from emulator.sandbox.isolation import (
    cannot_confine,
    choose,
    sandbox_view,
    stage_command,
    staged,
)
from emulator.sandbox.limits import (
    Cgroups,
    Limits,
    SandboxCgroup,
    SandboxUsage,
    rlimits_for,
    tree_bytes,
)
from emulator.sandbox.rehearsal import Rehearsable
from emulator.sandbox.zygote import Zygote
from kit.bundle.build import MANIFEST
from kit.host.errors import SandboxError
from kit.host.runtime_client import RuntimeClient, wait_ready
from kit.host.sandbox import (
    ExitInfo,
    Sandbox,
    SandboxProvider,
    SandboxSpec,
    SandboxState,
    SandboxView,
    Usage,
    exit_code_of,
    reason_of,
    runtime_config,
    store_folder,
)
from kit.ids import SandboxId, SessionId, is_session_id
from kit.private import DIR_MODE, open_private, private_folder, tighten
from kit.protocol.runtime_config import CONFIG_ENV, GATE_ENV, STORE_DEADLINE_S, STORE_RETRY_S
from kit.runtime.jail import Jail
from kit.tiers import get_tier

log = logging.getLogger("emulator.sandbox")

DEFAULT_USER = "nobody"
START_TIMEOUT_S = 90.0
GROUP_EXIT_POLLS = 500
GROUP_EXIT_POLL_S = 0.01
"""After SIGKILL the kernel ends a group within milliseconds; give it up to 5 s."""
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_LIFETIME_S = 24 * 3600.0
"""kit's own cap on one sandbox's life (neither platform documents one); then SIGTERM."""
LIFETIME_GRACE_S = 5.0
CLOSE_WAIT_S = 5.0
DISK_CHECK_S = 2.0
"""How often a running sandbox's workspace is measured against its tier's disk."""
CONFIG_FILE = "config.json"
"""The runtime's config file in its run folder (it deletes it once read)."""
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
        lifetime = self.max_lifetime_s
        deadline = asyncio.get_running_loop().time() + lifetime if lifetime else None
        checks = int((lifetime or MAX_LIFETIME_S) / DISK_CHECK_S) + 1
        for _ in range(checks):
            if self.over_disk_quota():
                log.warning("sandbox %s: workspace over its disk quota; killing it", self.id)
                await self.kill(signal.SIGKILL, reason="disk")
                return
            now = asyncio.get_running_loop().time()
            if deadline is not None and now >= deadline:
                break
            wait = DISK_CHECK_S if deadline is None else min(DISK_CHECK_S, deadline - now)
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), wait)
                return
            except TimeoutError:
                continue
        log.info("sandbox %s reached its maximum lifetime; stopping it", self.id)
        await self.kill(signal.SIGTERM, reason="lifetime")
        try:
            await asyncio.wait_for(asyncio.shield(self._waiter), LIFETIME_GRACE_S)
        except TimeoutError:
            await self.kill(signal.SIGKILL, reason="lifetime")

    def over_disk_quota(self) -> bool:
        """Whether the workspace holds more than the tier's disk."""
        if self.limits is None or self.workspace is None:
            return False
        return tree_bytes(self.workspace) > self.limits.disk_bytes

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

    @property
    def state(self) -> SandboxState:
        return SandboxState.EXITED if self._exit else SandboxState.RUNNING

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

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._waiter)

    async def kill(self, sig: int = signal.SIGKILL, reason: str | None = None) -> None:
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


class LocalSandboxProvider(SandboxProvider):
    """Starts :class:`LocalSandbox` processes under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        bundles: Path | None = None,
        python: str = sys.executable,
        run_root: Path | None = None,
        user: str | None = DEFAULT_USER,
        start_timeout_s: float = START_TIMEOUT_S,
        fork_server: bool = True,
        env: Mapping[str, str] | None = None,
        store_retry_s: float = STORE_RETRY_S,
        store_deadline_s: float = STORE_DEADLINE_S,
        limits: bool = True,
        overrides: Mapping[str, int] | None = None,
        max_lifetime_s: float | None = MAX_LIFETIME_S,
        throttle_start: bool = False,
        isolation: str = "auto",
    ) -> None:
        self.root = root
        self.bundles = bundles or root.parent / "bundles"
        """The bundle store: each bundle in a folder named by its digest (kit.bundle);
        by default beside ``root``, where ``kit dev`` builds them."""
        # Passed to every runtime: e.g. the credentials of an s3:// transcript store.
        self.env = dict(env or {})
        self.store_retry_s = store_retry_s
        self.store_deadline_s = store_deadline_s
        self.python = python
        self.start_timeout_s = start_timeout_s
        self.user = user
        self._setpriv = shutil.which("setpriv")
        self._unshare = shutil.which("unshare")
        self._mount = shutil.which("mount")
        self.uid: int | None = None
        self.gid: int | None = None
        if os.geteuid() == 0 and user:
            entry = pwd.getpwnam(user)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        # Unix socket paths are limited to 107 bytes: keep sockets in a short folder. The
        # sandbox user's group may pass through it (bubblewrap reaches its staging folder
        # there; unconfined sandboxes connect to the sockets by path), never list it.
        self.run_root = run_root or short_run_dir(root, self.gid)
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # The fork server pays the runtime's imports (~0.6 s of CPU, mostly the Agent SDK)
        # once; each sandbox is then a fork (milliseconds) sharing that memory. Without it
        # (fork_server=False, or if it cannot start) each sandbox is a fresh interpreter.
        self.fork_server = fork_server
        self._zygote: Zygote | None = None
        self._zygote_lock = asyncio.Lock()
        self._closed = False
        self.overrides = dict(overrides or {})
        """Replacements for the tier's :class:`Limits` fields (tests: a tiny disk or pids.max)."""
        # Start-up (the runtime's CLI boot, ~0.35 CPU-seconds) runs at full speed unless
        # throttle_start: under `lite` it would take ~10 s. Turns run at the tier's share.
        self.throttle_start = throttle_start
        self.max_lifetime_s = max_lifetime_s
        self.running: dict[SessionId, LocalSandbox] = {}
        """The live sandbox of each session."""
        self.cgroups: Cgroups | None = None
        self.unenforced = ""
        """Empty when tier limits are enforced; otherwise the one-line reason why not."""
        if limits:
            self.cgroups, why = Cgroups.probe()
            if self.cgroups is None:
                self.unenforced = (
                    f"Sandbox memory, CPU and pids limits are NOT enforced on this machine: {why}. "
                    "Sandboxes run with only the disk quota and per-file size limit "
                    "(run kit dev as root on a machine with cgroup v1 mounted for the tier limits)."
                )
                _warn_once(self.unenforced)
        self.isolation = ""
        """How sandboxes are confined to their view (:mod:`emulator.sandbox.isolation`):
        ``native`` (fork server children, as root), ``bwrap`` (bubblewrap) or empty."""
        self.unisolated = ""
        """Empty when sandboxes are isolated; otherwise why not."""
        if isolation not in ("auto", "bwrap", "off"):
            raise ValueError(f"isolation must be auto, bwrap or off, not {isolation!r}")
        if isolation == "off":
            self.unisolated = "KIT_SANDBOX_ISOLATION=off"
            _warn_once(cannot_confine("it is turned off (KIT_SANDBOX_ISOLATION=off)"))
        else:
            self.isolation, self.unisolated = choose(
                fork_server=fork_server and isolation == "auto", drop=self._drop_privileges()
            )
            if self.unisolated:
                _warn_once(self.unisolated)
            elif self.isolation == "bwrap" and fork_server:
                self.fork_server = False
                _warn_once(
                    "Sandboxes start as fresh interpreters under bubblewrap (~0.4 s more per "
                    "start; the fork server confines sandboxes itself only when kit runs as "
                    "root and KIT_SANDBOX_ISOLATION=auto)."
                )
        try:
            tighten(root, depth=2)  # the logs of an older kit (0644): this kit's are 0600
            private_folder(root, self.traverse_gid)
        except OSError as exc:
            raise SandboxError(
                f"Cannot make {exc.filename or root} private: {exc.strerror or exc} (made by "
                "another user? remove it, or run kit as that user)."
            ) from None

    @property
    def traverse_gid(self) -> int | None:
        """The group that must pass through the host's folders (0710) on the way to a
        sandbox's own: the sandbox user's, when sandboxes run as that user and reach their
        bundle, workspace and transcript folder by themselves (no isolation, as root). None
        when root binds their whole view in (``native``; ``bwrap`` with staging), or they run
        as this user: then the state dir stays 0700."""
        if self.uid is None or self._bound_by_root():
            return None
        return self.gid

    @property
    def stage(self) -> Path | None:
        """Where bubblewrap's sources behind folders the sandbox user cannot enter are bound
        (by root, in the sandbox's own mount namespace; :func:`isolation.staged`); None when
        bubblewrap runs as yourself, or setpriv, unshare or mount is missing."""
        if self.uid is None or not (self._setpriv and self._unshare and self._mount):
            return None
        return self.run_root / ".stage"

    def _bound_by_root(self) -> bool:
        """Whether the sandbox's view is bound by root, so the sandbox user needs no way of its
        own to the project, the state folder or the interpreter."""
        return self.isolation == "native" or (self.isolation == "bwrap" and self.stage is not None)

    def _hidden(self, source: str) -> bool:
        """Whether the sandbox user cannot reach ``source`` (a folder on its way is shut)."""
        try:
            return self.unreachable(Path(source).parent) is not None
        except OSError:
            return False  # gone: bubblewrap says so, naming it

    def log_path(self, session_id: str) -> Path:
        """The session's runtime log (its sandboxes' stderr): in a folder of the host's, out
        of reach of the sandbox user (who could plant a FIFO or a link in a folder of its)."""
        logs = self.root / LOGS
        logs.mkdir(mode=DIR_MODE, exist_ok=True)
        private_folder(logs)
        return logs / f"{session_id}.log"

    def workspace(self, session_id: str) -> Path:
        """The session's workspace folder (the agent's cwd)."""
        return self.root / session_id / "workspace"

    def unreachable(self, path: Path) -> Path | None:
        """The first folder on ``path`` the sandbox user cannot enter, if any."""
        if self.uid is None or self.gid is None:
            return None
        for folder in [*reversed(path.resolve().parents), path.resolve()]:
            st = folder.stat()
            if st.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif st.st_gid == self.gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not st.st_mode & bit:
                return folder
        return None

    async def start(self, spec: SandboxSpec) -> LocalSandbox:
        try:
            limits = dataclasses.replace(Limits.for_tier(get_tier(spec.tier)), **self.overrides)
        except KeyError:
            raise SandboxError(f"Unknown sandbox tier {spec.tier!r}; see docs/tiers.md.") from None
        workspace = self.workspace(spec.session_id)
        if workspace.is_dir() and tree_bytes(workspace) > limits.disk_bytes:
            raise SandboxError(
                f"The workspace of session {spec.session_id} ({workspace}) holds more than its "
                f"tier's {limits.disk_bytes / 1e9:g} GB of disk; delete files from it or pick a "
                "larger tier (kit.toml [sandbox] tier)."
            )
        bundle_dir = self.bundle_dir(spec.bundle_digest)
        for needed in (bundle_dir, self.root) if not self._bound_by_root() else ():
            blocked = self.unreachable(needed)
            if blocked is not None:
                raise SandboxError(
                    f"The sandbox user {self.user!r} cannot enter {blocked} "
                    f"(mode {blocked.stat().st_mode & 0o777:o}), so it cannot reach {needed}. "
                    "Keep the project and its state folder (KIT_STATE_DIR) where other users can "
                    "enter, or set KIT_SANDBOX_USER= (empty) to run sandboxes as yourself."
                )
        base = self.root / spec.session_id
        dirs = {name: base / name for name in ("workspace", "home", "tmp")}
        dirs["run"] = self.run_root / spec.session_id[:13]
        # A new sandbox starts from a clean disk, as in the cloud: only the workspace carries
        # over (a local convenience). A home left by a killed sandbox would hold the CLI's
        # own copy of the session and make it refuse the session id as "already in use".
        for fresh in ("home", "tmp"):
            shutil.rmtree(dirs[fresh], ignore_errors=True)
        # Root walks into folders the sandbox user owns only by descriptor, from a folder of
        # the host's: that user (any sandbox's, unconfined) may swap one for a link meanwhile.
        for names in ((), ("workspace",), ("home",), ("home", ".claude"), ("tmp",)):
            self._own(self.root, spec.session_id, *names)
        self._own(self.run_root, dirs["run"].name)
        store = store_folder(spec.store_url)
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            self._own(store.parent, store.name)
        sock = dirs["run"] / "runtime.sock"
        # The local provider's sandboxes see the host's paths (bound at the same places).
        view = SandboxView(
            bundle_dir=str(bundle_dir),
            workspace=str(dirs["workspace"]),
            home=str(dirs["home"]),
            tmp_dir=str(dirs["tmp"]),
            listen=f"unix:{sock}",
        )
        config = runtime_config(
            spec, view, store_retry_s=self.store_retry_s, store_deadline_s=self.store_deadline_s
        )
        config_path = dirs["run"] / CONFIG_FILE
        self._write_config(config_path, config.to_json())
        env = {
            **self.env,
            "PATH": _SAFE_PATH,
            "HOME": str(dirs["home"]),
            "TMPDIR": str(dirs["tmp"]),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            CONFIG_ENV: str(config_path),
            GATE_ENV: "stdin",
        }
        log_path = self.log_path(spec.session_id)
        jail = None
        if self.isolation:
            sockets = [e.unix_path for e in (spec.model, spec.egress) if e and e.unix_path]
            jail = sandbox_view(
                python=self.python,
                readable=[bundle_dir, *sockets],
                writable=[*dirs.values(), *([store] if store is not None else [])],
                uid=self.uid,
                gid=self.gid,
            )
        sandbox_id = SandboxId(f"sbx-{uuid.uuid4().hex[:12]}")
        cgroup = (
            self.cgroups.create(sandbox_id, limits, throttle=self.throttle_start)
            if self.cgroups is not None
            else None
        )
        try:
            pid, wait, open_gate = await self._launch(
                dirs["workspace"], env, log_path, jail, cgroup
            )
        except OSError as exc:
            if cgroup is not None:
                await cgroup.remove()
            config_path.unlink(missing_ok=True)
            raise SandboxError(self._cannot_run(str(exc.strerror or exc))) from exc
        sandbox = LocalSandbox(
            spec,
            pid,
            wait,
            f"unix:{sock}",
            log_path,
            sandbox_id=sandbox_id,
            limits=limits,
            cgroup=cgroup,
            workspace=dirs["workspace"],
            max_lifetime_s=self.max_lifetime_s,
        )
        # The runtime waits for the go before it runs anything of the agent's: confine it
        # first, so the SDK's CLI and every tool start inside the tier's limits.
        try:
            if cgroup is not None:
                cgroup.add(pid)
            else:
                for which, value in rlimits_for(limits).items():
                    try:
                        resource.prlimit(pid, which, value)
                    except PermissionError:  # best effort: the fallback is per process anyway
                        log.debug("could not set rlimit %d on %d", which, pid)
        except ProcessLookupError:
            pass  # it died already: the readiness wait below reports how
        except OSError as exc:
            await sandbox.kill()
            await sandbox.wait()
            config_path.unlink(missing_ok=True)
            raise SandboxError(f"Could not apply the tier's limits to the sandbox: {exc}.") from exc
        self.running[spec.session_id] = sandbox
        sandbox.on_exit(lambda: self._forget(sandbox))
        open_gate()
        client = RuntimeClient(sandbox.endpoint, spec.runtime_token)
        try:
            ready = await wait_ready(client, sandbox.alive, self.start_timeout_s)
        except TimeoutError:
            await sandbox.kill()
            await sandbox.wait()
            raise SandboxError(
                f"The sandbox for session {spec.session_id} did not get ready in "
                f"{self.start_timeout_s:.0f} s; see {log_path}."
            ) from None
        finally:
            config_path.unlink(missing_ok=True)  # read and deleted by the runtime, normally
        if ready is None:
            info = await sandbox.wait()
            last = _tail(log_path, 1)
            if info.exit_code in (126, 127) or last.startswith("bwrap: execvp"):
                raise SandboxError(self._cannot_run(last))  # the interpreter could not run
            raise SandboxError(
                f"The sandbox for session {spec.session_id} exited with code {info.exit_code} "
                f"before it was ready: {_tail(log_path)} (full log: {log_path})."
            )
        sandbox.resumed = bool(ready.get("resumed"))
        if cgroup is not None and not self.throttle_start:
            cgroup.throttle(limits)
        sandbox.guard()
        return sandbox

    def _write_config(self, path: Path, text: str) -> None:
        """The runtime's config file: 0600, the sandbox user's (who reads and deletes it)."""
        path.unlink(missing_ok=True)
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            os.write(fd, text.encode())
            if self.uid is not None and self.gid is not None:
                os.fchown(fd, self.uid, self.gid)
        finally:
            os.close(fd)

    def bundle_dir(self, digest: str) -> Path:
        """Where the bundle ``digest`` is on this machine (SandboxError if it is not)."""
        path = self.bundles / digest[:32]
        if not (path / MANIFEST).is_file():
            raise SandboxError(
                f"Bundle {digest[:12]}… is not in {self.bundles}; build it first (kit dev "
                "builds the project's bundle at start and on every save)."
            )
        return path

    async def find(self, session_id: SessionId) -> LocalSandbox | None:
        """The session's running sandbox. A killed host's sandboxes die with it (their
        fork server and unforked runtimes watch their parent), so only this host's run."""
        sandbox = self.running.get(session_id)
        return sandbox if sandbox is not None and sandbox.alive() else None

    async def reap(self, keep: Callable[[SessionId], bool]) -> list[SandboxId]:
        """Kill the running sandboxes whose session ``keep`` rejects."""
        reaped = []
        for session_id, sandbox in list(self.running.items()):
            if not keep(session_id):
                await sandbox.kill(signal.SIGKILL, reason="orphan")
                await sandbox.wait()
                reaped.append(sandbox.id)
        return reaped

    def _forget(self, sandbox: LocalSandbox) -> None:
        if self.running.get(sandbox.session_id) is sandbox:
            del self.running[sandbox.session_id]

    async def kill(
        self, session_id: str, sig: int = signal.SIGKILL, reason: str | None = None
    ) -> bool:
        """Send ``sig`` to the session's sandbox (``reason``: what it reports); False if none."""
        sandbox = self.running.get(SessionId(session_id))
        if sandbox is None:
            return False
        await sandbox.kill(sig, reason)
        return True

    def sandbox(self, session_id: str) -> LocalSandbox | None:
        """The session's running sandbox, if any."""
        return self.running.get(SessionId(session_id))

    async def discard(self, session_id: str) -> None:
        if not is_session_id(session_id):  # never a path of our choosing
            raise SandboxError(f"not a session id: {session_id!r}")
        if SessionId(session_id) in self.running:
            raise SandboxError(f"session {session_id} still has a sandbox running")
        for folder in (self.root / session_id, self.run_root / session_id[:13]):
            await asyncio.to_thread(shutil.rmtree, folder, True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / LOGS / f"{session_id}.log").unlink()

    def _cannot_run(self, why: str) -> str:
        who = f"user {self.user!r}" if self.uid is not None else "this user"
        return (
            f"Cannot start the sandbox runtime ({self.python}) as {who}: {why}. "
            "Sandboxes run as an unprivileged user: keep the project, its .kit folder and its "
            "virtualenv where that user can read them (not under /root; ./scripts/setup builds "
            "the virtualenv from a system Python), or set KIT_SANDBOX_USER= (empty) to run "
            "sandboxes as yourself, without that isolation."
        )

    async def _launch(
        self,
        cwd: Path,
        env: dict[str, str],
        log_path: Path,
        jail: Jail | None,
        cgroup: SandboxCgroup | None,
    ) -> tuple[int, Callable[[], Awaitable[int]], Callable[[], None]]:
        """A runtime process (forked by the fork server when it runs, else spawned fresh),
        how to wait for it, and how to tell it go (``KIT_RUNTIME_GATE``)."""
        zygote = await self._ensure_zygote(env) if self.fork_server else None
        if zygote is not None:
            child = await zygote.spawn(
                cwd,
                {**env, "KIT_DIE_WITH_PARENT": str(zygote.proc.pid if zygote.proc else 0)},
                log_path,
                jail.to_json() if jail is not None and self.isolation == "native" else None,
            )
            return child.pid, child.wait, child.open_gate
        if jail is not None and self.isolation == "native":
            # The fork server failed to start: bubblewrap, if it works here. Never fall back
            # to no isolation once it was chosen: that is only ever the user's own choice.
            mode, why = choose(fork_server=False, drop=self._drop_privileges())
            if mode != "bwrap":
                raise SandboxError(
                    "The runtime fork server is down and bubblewrap cannot confine sandboxes "
                    f"here ({why}); refusing to start an unisolated sandbox. See "
                    f"{self.root / 'zygote.log'}, or set KIT_SANDBOX_ISOLATION=off to run "
                    "sandboxes without isolation."
                )
            self.isolation = mode
        if jail is not None:
            # bubblewrap forks the runtime at once: join the cgroups before exec, not after.
            proc = await self._spawn(cwd, env, log_path, prefix=self._confined(cwd, jail, cgroup))
        else:
            proc = await self._spawn(
                cwd, {**env, "KIT_DIE_WITH_PARENT": str(os.getpid())}, log_path
            )
        assert proc.stdin is not None
        stdin = proc.stdin

        def open_gate() -> None:
            stdin.write(b"go\n")
            stdin.close()

        return proc.pid, proc.wait, open_gate

    async def _ensure_zygote(self, env: dict[str, str]) -> Zygote | None:
        async with self._zygote_lock:
            if self._zygote is not None and self._zygote.alive:
                return self._zygote
            if self._closed:
                return None
            folder = self.root / ".zygote"
            self._own(self.root, folder.name)
            zygote = Zygote()
            generic = {
                **env,
                "HOME": str(folder),
                "TMPDIR": str(folder),
                "KIT_DIE_WITH_PARENT": str(os.getpid()),  # no orphans if this host is killed
            }
            try:
                # Confining forks need root: the zygote then drops to the sandbox user in
                # each child, after the namespaces and mounts (kit.runtime.jail).
                drop = self._drop_privileges() if self.isolation != "native" else []
                await zygote.start(
                    [*drop, self.python, "-m", "kit.runtime.zygote"],
                    generic,
                    folder,
                    self.root / "zygote.log",
                    self.start_timeout_s,
                )
            except (OSError, SandboxError):
                log.warning(
                    "the runtime fork server did not start; spawning each sandbox fresh",
                    exc_info=True,
                )
                self.fork_server = False
                return None
            self._zygote = zygote
            return zygote

    async def settled(self) -> None:
        """Return once the fork server is up (benchmarks start from a quiet machine)."""
        if self.fork_server:
            await self._ensure_zygote({"PATH": _SAFE_PATH, "LANG": "C.UTF-8"})

    async def close(self) -> None:
        """Stop the fork server; remove this provider's cgroup folders once sandboxes are gone."""
        self._closed = True
        async with self._zygote_lock:
            if self._zygote is not None:
                await self._zygote.stop()
        for sandbox in list(self.running.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sandbox.wait(), CLOSE_WAIT_S)
        if self.cgroups is not None:
            self.cgroups.remove()

    def _drop_privileges(self) -> list[str]:
        if self.uid is None or self.gid is None or not self._setpriv:
            return []
        # setpriv drops to the sandbox user in the child, so CPython can vfork: ~0.4 ms
        # instead of a ~30 ms fork() of the whole host on the event loop.
        return [
            self._setpriv,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--no-new-privs",
        ]

    def _confined(self, cwd: Path, jail: Jail, cgroup: SandboxCgroup | None) -> list[str]:
        """The command prefix that runs a fresh runtime in ``jail`` under bubblewrap."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxError("bubblewrap (bwrap) is no longer installed; reinstall it.")
        join: list[str] = []
        if cgroup is not None:
            procs = [str(cgroup.paths[c] / "cgroup.procs") for c in sorted(cgroup.paths)]
            join = ["/bin/sh", "-c", _JOIN_AND_EXEC, "sh", *procs, "--"]
        # bubblewrap runs as the sandbox user: what that user cannot reach (a project under
        # /root) root binds first, into a staging folder of the sandbox's own mount namespace.
        stage: list[str] = []
        if self.stage is not None and self._unshare and self._mount:
            jail, hidden = staged(jail, self._hidden, self.stage)
            if hidden:
                self.stage.mkdir(exist_ok=True)
                self.stage.chmod(0o755)  # not the umask's: the sandbox user must enter it
                stage = stage_command(self._unshare, self._mount, self.stage, hidden)
        return [*join, *stage, *self._drop_privileges(), *jail.bwrap_args(bwrap, str(cwd))]

    async def _spawn(
        self, cwd: Path, env: dict[str, str], log_path: Path, *, prefix: list[str] | None = None
    ) -> asyncio.subprocess.Process:
        drop: dict[str, object] = {}
        if self.uid is not None and self.gid is not None and not self._setpriv:
            drop = {"user": self.uid, "group": self.gid, "extra_groups": []}
        with os.fdopen(open_private(log_path), "ab") as log_file:
            return await asyncio.create_subprocess_exec(
                *(prefix if prefix is not None else self._drop_privileges()),
                self.python,
                "-m",
                "kit.runtime",
                stdin=asyncio.subprocess.PIPE,
                stdout=log_file,
                stderr=log_file,
                cwd=cwd,
                env=env,
                start_new_session=True,
                **drop,  # type: ignore[arg-type]
            )

    def _own(self, anchor: Path, *names: str) -> None:
        """Make folder ``anchor/names...`` (each one missing made) and give every folder
        after ``anchor`` to the sandbox user, 0700. ``anchor`` is the host's; below it the
        walk goes by descriptor and never follows a link: the sandbox user may have put one
        there, or swap a folder for one meanwhile (root would chown, chmod or bind whatever
        it points at)."""
        fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in names:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                try:
                    child = os.open(name, _NOFOLLOW_DIR, dir_fd=fd)
                except OSError:
                    raise SandboxError(
                        f"{anchor.joinpath(*names)} is not a plain folder (a symlink?); remove "
                        "it and retry."
                    ) from None
                os.close(fd)
                fd = child
                if self.uid is not None and self.gid is not None:
                    os.fchown(fd, self.uid, self.gid)
                os.fchmod(fd, DIR_MODE)
        finally:
            os.close(fd)


_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LOGS = ".logs"
"""The host's folder of runtime logs under the provider's root (0700)."""

_JOIN_AND_EXEC = (
    'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
)
"""``sh -c`` script: write this shell's pid into each cgroup.procs file named before ``--``,
then exec the rest (so the sandbox's first process is confined before it forks)."""

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


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


def short_run_dir(root: Path, passage_for: int | None = None) -> Path:
    """A short per-root folder under the temp dir for Unix sockets, owned by this user:
    0700, or 0710 to group ``passage_for`` (the sandbox user's, when it is another user).

    Its name is predictable, so one made by someone else (who could swap the sockets in
    it) is refused rather than used."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"kit-{os.geteuid()}-{digest}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxError(
            f"{path} (the sandboxes' socket folder) is not a folder of this user's that only "
            "it can write; someone else may have made it. Remove it and start again."
        )
    private_folder(path, passage_for)
    return path


def _tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return " | ".join(line.rstrip() for line in deque(f, maxlen=lines))
    except OSError:
        return "(no log)"
