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
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from emulator.sandbox.zygote import Zygote
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
from kit.runtime.config import STORE_DEADLINE_S, STORE_RETRY_S, RuntimeConfig

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
        self,
        spec: SandboxSpec,
        pid: int,
        wait: Callable[[], Awaitable[int]],
        endpoint: str,
        log_path: Path,
    ) -> None:
        self.id = SandboxId(f"sbx-{uuid.uuid4().hex[:12]}")
        self.session_id = spec.session_id
        self.spec = spec
        self.endpoint = endpoint
        self.resumed = False
        self.log_path = log_path
        self.pid = pid  # also its process group: runtimes start their own session
        self._wait_returncode = wait
        self._reason: str | None = None
        self._exit: ExitInfo | None = None
        self._waiter = asyncio.create_task(self._reap(), name=f"reap-{self.id}")

    @property
    def state(self) -> SandboxState:
        return SandboxState.EXITED if self._exit else SandboxState.RUNNING

    async def _reap(self) -> ExitInfo:
        code = exit_code_of(await self._wait_returncode())
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
        fork_server: bool = True,
        env: Mapping[str, str] | None = None,
        store_retry_s: float = STORE_RETRY_S,
        store_deadline_s: float = STORE_DEADLINE_S,
    ) -> None:
        self.root = root
        # Passed to every runtime: e.g. the credentials of an s3:// transcript store.
        self.env = dict(env or {})
        self.store_retry_s = store_retry_s
        self.store_deadline_s = store_deadline_s
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
        # The fork server pays the runtime's imports (~0.6 s of CPU, mostly the Agent SDK)
        # once; each sandbox is then a fork (milliseconds) sharing that memory. Without it
        # (fork_server=False, or if it cannot start) each sandbox is a fresh interpreter.
        self.fork_server = fork_server
        self._zygote: Zygote | None = None
        self._zygote_lock = asyncio.Lock()
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
        # A new sandbox starts from a clean disk, as in the cloud: only the workspace carries
        # over (a local convenience). A home left by a killed sandbox would hold the CLI's
        # own copy of the session and make it refuse the session id as "already in use".
        for fresh in ("home", "tmp"):
            shutil.rmtree(dirs[fresh], ignore_errors=True)
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
            store_retry_s=self.store_retry_s,
            store_deadline_s=self.store_deadline_s,
        )
        env = {
            **self.env,
            "PATH": _SAFE_PATH,
            "HOME": str(dirs["home"]),
            "TMPDIR": str(dirs["tmp"]),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        log_path = base / "runtime.log"
        try:
            pid, wait, stdout, write_stdin = await self._launch(dirs["workspace"], env, log_path)
        except OSError as exc:
            raise SandboxError(self._cannot_run(str(exc.strerror or exc))) from exc
        sandbox = LocalSandbox(spec, pid, wait, f"unix:{sock}", log_path)
        write_stdin(config.to_json().encode() + b"\n")
        try:
            ready = await asyncio.wait_for(_ready_line(stdout), self.start_timeout_s)
        except TimeoutError:
            await sandbox.kill()
            await sandbox.wait()
            raise SandboxError(
                f"The sandbox for session {spec.session_id} did not get ready in "
                f"{self.start_timeout_s:.0f} s; see {log_path}."
            ) from None
        if ready is None:
            info = await sandbox.wait()
            if info.exit_code in (126, 127):  # the interpreter could not be executed
                raise SandboxError(self._cannot_run(_tail(log_path, 1)))
            raise SandboxError(
                f"The sandbox for session {spec.session_id} exited with code {info.exit_code} "
                f"before it was ready: {_tail(log_path)} (full log: {log_path})."
            )
        sandbox.resumed = bool(ready.get("resumed"))
        return sandbox

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
        self, cwd: Path, env: dict[str, str], log_path: Path
    ) -> tuple[int, Callable[[], Awaitable[int]], asyncio.StreamReader, Callable[[bytes], None]]:
        """A runtime process: forked by the fork server when it runs, else spawned fresh."""
        zygote = await self._ensure_zygote(env) if self.fork_server else None
        if zygote is not None:
            child = await zygote.spawn(
                cwd,
                {**env, "KIT_DIE_WITH_PARENT": str(zygote.proc.pid if zygote.proc else 0)},
                log_path,
            )
            return child.pid, child.wait, child.stdout, child.write_stdin
        proc = await self._spawn(cwd, {**env, "KIT_DIE_WITH_PARENT": str(os.getpid())}, log_path)
        assert proc.stdin is not None
        assert proc.stdout is not None
        stdin = proc.stdin

        def write(data: bytes) -> None:
            stdin.write(data)
            stdin.close()

        return proc.pid, proc.wait, proc.stdout, write

    async def _ensure_zygote(self, env: dict[str, str]) -> Zygote | None:
        async with self._zygote_lock:
            if self._zygote is not None and self._zygote.alive:
                return self._zygote
            if self._closed:
                return None
            folder = self.root / ".zygote"
            folder.mkdir(parents=True, exist_ok=True)
            self._own(folder)
            zygote = Zygote()
            generic = {
                **env,
                "HOME": str(folder),
                "TMPDIR": str(folder),
                "KIT_DIE_WITH_PARENT": str(os.getpid()),  # no orphans if this host is killed
            }
            try:
                await zygote.start(
                    [*self._drop_privileges(), self.python, "-m", "kit.runtime.zygote"],
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
        """Stop the fork server."""
        self._closed = True
        async with self._zygote_lock:
            if self._zygote is not None:
                await self._zygote.stop()

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

    async def _spawn(
        self, cwd: Path, env: dict[str, str], log_path: Path
    ) -> asyncio.subprocess.Process:
        drop: dict[str, object] = {}
        if self.uid is not None and self.gid is not None and not self._setpriv:
            drop = {"user": self.uid, "group": self.gid, "extra_groups": []}
        with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - a local file, opened once
            return await asyncio.create_subprocess_exec(
                *self._drop_privileges(),
                self.python,
                "-m",
                "kit.runtime",
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


async def _ready_line(stdout: asyncio.StreamReader) -> dict[str, object] | None:
    """The runtime's ``{"ready": true, ...}`` line (after its ``imported`` line); None at EOF."""
    for _ in range(4):
        line = await stdout.readline()
        if not line:
            return None
        message: dict[str, object] = json.loads(line)
        if message.get("ready"):
            return message
    return None


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
