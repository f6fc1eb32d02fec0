"""Sandboxes as local processes: ``python -m kit.runtime`` in its own process group.

Each session gets a folder ``<root>/<session_id>/`` with ``workspace/`` (the agent's cwd,
kept across sandboxes so the SDK's resume finds the same project key), ``home/``,
``tmp/`` and ``run/`` (the runtime's socket). When kit runs as root the runtime runs as an
unprivileged user (``nobody`` unless told otherwise) that owns only that folder.

Tier limits (memory, CPU, disk, pids, idle) and filesystem/network isolation are the
emulator's next layer (docs/tiers.md); this module is the process lifecycle they build on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import pwd
import shutil
import signal
import stat
import sys
import tempfile
import uuid
from collections import deque
from pathlib import Path

from kit.host.errors import SandboxError
from kit.host.sandbox import (
    ExitInfo,
    Sandbox,
    SandboxProvider,
    SandboxSpec,
    SandboxState,
    exit_code_of,
    reason_of,
)
from kit.ids import SandboxId
from kit.runtime.config import RuntimeConfig

log = logging.getLogger("emulator.sandbox")

DEFAULT_USER = "nobody"
START_TIMEOUT_S = 90.0
GROUP_EXIT_POLLS = 500
GROUP_EXIT_POLL_S = 0.01
"""After SIGKILL the kernel ends a group within milliseconds; give it up to 5 s."""
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class LocalSandbox(Sandbox):
    """A runtime process group on this machine."""

    def __init__(
        self, spec: SandboxSpec, proc: asyncio.subprocess.Process, endpoint: str, log_path: Path
    ) -> None:
        self.id = SandboxId(f"sbx-{uuid.uuid4().hex[:12]}")
        self.session_id = spec.session_id
        self.spec = spec
        self.endpoint = endpoint
        self.resumed = False
        self.log_path = log_path
        self.pid = proc.pid
        self._proc = proc
        self._reason: str | None = None
        self._exit: ExitInfo | None = None
        self._waiter = asyncio.create_task(self._reap(), name=f"reap-{self.id}")

    @property
    def state(self) -> SandboxState:
        return SandboxState.EXITED if self._exit else SandboxState.RUNNING

    async def _reap(self) -> ExitInfo:
        code = exit_code_of(await self._proc.wait())
        # The runtime is gone; take everything left in its group with it (its CLI, a Bash
        # tool) and report the exit only once none of it runs: a replacement sandbox must
        # never overlap the old one on the same transcript.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for _ in range(GROUP_EXIT_POLLS):
            if not live_group_members(self.pid):
                break
            await asyncio.sleep(GROUP_EXIT_POLL_S)
        else:
            log.warning("sandbox %s: processes of group %d outlived SIGKILL", self.id, self.pid)
        self._exit = ExitInfo(code, self._reason or reason_of(code))
        return self._exit

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._waiter)

    async def kill(self, sig: int = signal.SIGKILL, reason: str | None = None) -> None:
        if self._exit is not None:
            return
        if reason is not None and self._reason is None:
            self._reason = reason
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class LocalSandboxProvider(SandboxProvider):
    """Starts :class:`LocalSandbox` processes under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        python: str = sys.executable,
        run_root: Path | None = None,
        user: str | None = DEFAULT_USER,
        start_timeout_s: float = START_TIMEOUT_S,
        warm_spares: int = 1,
    ) -> None:
        self.root = root
        # Unix socket paths are limited to 107 bytes: keep sockets in a short folder.
        self.run_root = run_root or short_run_dir(root)
        self.python = python
        self.start_timeout_s = start_timeout_s
        self.user = user
        self._setpriv = shutil.which("setpriv")
        self.uid: int | None = None
        self.gid: int | None = None
        if os.geteuid() == 0 and user:
            entry = pwd.getpwnam(user)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        root.mkdir(parents=True, exist_ok=True)
        # Warm spares: runtimes that have paid Python's imports (~0.6 s, mostly the Agent
        # SDK) and wait on stdin for a session. Only the import is shared; the session's
        # config, folders and CLI come with the hand-off.
        self.warm_spares = warm_spares
        self._spares: list[tuple[asyncio.subprocess.Process, Path]] = []
        self._refill_task: asyncio.Task[None] | None = None
        self._closed = False

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
        for needed in (spec.bundle_dir, self.root):
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
        shutil.rmtree(dirs["tmp"], ignore_errors=True)
        for path in (base, *dirs.values(), *spec.writable):
            path.mkdir(parents=True, exist_ok=True)
            self._own(path)
        (dirs["home"] / ".claude").mkdir(exist_ok=True)
        self._own(dirs["home"] / ".claude")
        sock = dirs["run"] / "runtime.sock"
        config = RuntimeConfig(
            session_id=spec.session_id,
            bundle_dir=spec.bundle_dir,
            workspace=dirs["workspace"],
            home=dirs["home"],
            tmp_dir=dirs["tmp"],
            store_url=spec.store_url,
            listen=f"unix:{sock}",
            model_base_url=spec.model.base_url,
            model_unix_socket=spec.model.unix_socket,
            model_token=spec.model.token,
            runtime_token=spec.runtime_token,
        )
        env = {
            "PATH": _SAFE_PATH,
            "HOME": str(dirs["home"]),
            "TMPDIR": str(dirs["tmp"]),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        try:
            proc, log_path = await self._take_spare(env)
        except OSError as exc:
            who = f"user {self.user!r}" if self.uid is not None else "this user"
            raise SandboxError(
                f"Cannot start the sandbox runtime ({self.python}) as {who}: {exc.strerror or exc}. "
                "Sandboxes run as an unprivileged user: keep the project, its .kit folder and its "
                "virtualenv where that user can read them (not under /root; ./scripts/setup builds "
                "the virtualenv from a system Python), or set KIT_SANDBOX_USER= (empty) to run "
                "sandboxes as yourself, without that isolation."
            ) from exc
        sandbox = LocalSandbox(spec, proc, f"unix:{sock}", log_path)
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(config.to_json().encode() + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), self.start_timeout_s)
        except TimeoutError:
            await sandbox.kill()
            await sandbox.wait()
            raise SandboxError(
                f"The sandbox for session {spec.session_id} did not get ready in "
                f"{self.start_timeout_s:.0f} s; see {log_path}."
            ) from None
        if not line:
            info = await sandbox.wait()
            raise SandboxError(
                f"The sandbox for session {spec.session_id} exited with code {info.exit_code} "
                f"before it was ready: {_tail(log_path)} (full log: {log_path})."
            )
        ready = json.loads(line)
        sandbox.resumed = bool(ready.get("resumed"))
        # Refill only now: importing a spare costs ~0.6 s of CPU, which would otherwise
        # compete with this sandbox's CLI boot.
        self._schedule_refill(env)
        return sandbox

    async def _take_spare(self, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, Path]:
        """A warm runtime if one is alive, else a fresh one; then refill the pool."""
        proc, log_path = None, None
        while self._spares:
            candidate, candidate_log = self._spares.pop(0)
            if candidate.returncode is None:
                proc, log_path = candidate, candidate_log
                break
        if proc is None or log_path is None:
            proc, log_path = await self._spawn_generic(env)
        else:
            _foreground(proc.pid)  # a spare waits in the background; a session runs normally
        return proc, log_path

    async def _spawn_generic(
        self, env: dict[str, str], *, background: bool = False
    ) -> tuple[asyncio.subprocess.Process, Path]:
        spare_dir = self.root / ".spares" / uuid.uuid4().hex[:12]
        spare_dir.mkdir(parents=True)
        self._own(spare_dir.parent)
        self._own(spare_dir)
        generic = {
            **env,
            "HOME": str(spare_dir),
            "TMPDIR": str(spare_dir),
            "KIT_DIE_WITH_PARENT": str(os.getpid()),  # no orphans if this host is killed
        }
        log_path = spare_dir / "runtime.log"
        proc = await self._spawn(spare_dir, generic, log_path)
        if background:
            _background(proc.pid)
        assert proc.stdout is not None
        # The runtime says {"imported": true} once its imports are done, before it reads
        # a config; a spare is warm from that line on.
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), self.start_timeout_s)
        except TimeoutError:
            line = b""
        if not line.startswith(b'{"imported"'):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise OSError(f"the runtime did not start: {_tail(log_path)} (log: {log_path})")
        return proc, log_path

    def _schedule_refill(self, env: dict[str, str]) -> None:
        if self._closed or (self._refill_task and not self._refill_task.done()):
            return
        self._refill_task = asyncio.create_task(self._refill(env), name="spare-refill")

    async def _refill(self, env: dict[str, str]) -> None:
        while not self._closed and len(self._spares) < self.warm_spares:
            try:
                self._spares.append(await self._spawn_generic(env, background=True))
            except OSError:
                log.exception("could not start a warm spare runtime")
                return

    async def settled(self) -> None:
        """Return once the warm-spare pool is refilled (benchmarks start from a quiet machine)."""
        if self._refill_task is not None:
            await asyncio.shield(self._refill_task)

    async def close(self) -> None:
        """Stop the warm spares."""
        self._closed = True
        if self._refill_task is not None:
            with contextlib.suppress(BaseException):
                await self._refill_task
        for proc, _ in self._spares:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        self._spares.clear()

    async def _spawn(
        self, cwd: Path, env: dict[str, str], log_path: Path
    ) -> asyncio.subprocess.Process:
        argv = [self.python, "-m", "kit.runtime"]
        drop: dict[str, object] = {}
        if self.uid is not None and self.gid is not None:
            if self._setpriv:
                # setpriv drops to the sandbox user in the child, so CPython can vfork: ~0.4 ms
                # instead of a ~30 ms fork() of the whole host on the event loop.
                argv = [
                    self._setpriv,
                    f"--reuid={self.uid}",
                    f"--regid={self.gid}",
                    "--clear-groups",
                    "--no-new-privs",
                    *argv,
                ]
            else:
                drop = {"user": self.uid, "group": self.gid, "extra_groups": []}
        with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - a local file, opened once
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                cwd=cwd,
                env=env,
                start_new_session=True,
                **drop,  # type: ignore[arg-type]
            )

    def _own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)
            path.chmod(0o700)


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


def _background(pid: int) -> None:
    """Let a spare import only on CPU nobody else wants (SCHED_IDLE, else nice 19)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


def _foreground(pid: int) -> None:
    """Back to normal scheduling when a spare becomes a session's sandbox."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, 0)


def short_run_dir(root: Path) -> Path:
    """A short per-root folder under the temp dir for Unix sockets."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"kit-{os.geteuid()}-{digest}"
    path.mkdir(mode=0o755, exist_ok=True)
    path.chmod(0o755)
    return path


def _tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return " | ".join(line.rstrip() for line in deque(f, maxlen=lines))
    except OSError:
        return "(no log)"
