"""The local sandbox provider: ``python -m kit.runtime`` as a process group on this machine.

Each session gets a folder ``<root>/<session_id>/`` with ``workspace/`` (the agent's cwd,
kept across sandboxes so the SDK's resume finds the same project key), ``home/``,
``tmp/`` and ``run/`` (the runtime's socket and, until it has read it, its config file, in
a short folder under the temp dir). When kit runs as root the runtime runs as an
unprivileged user (``nobody`` unless told otherwise) that owns only that folder.

Only their owner may enter these folders (0700, :mod:`emulator.sandbox.folders`); ``<root>``
and the logs (``fork-server.log``, each session's ``.logs/<session_id>.log``: 0600) are this
user's alone. A confined sandbox gets its folders, bundle and sockets bound in by root
(:mod:`emulator.sandbox.isolation`); only an unconfined one run as another user walks to
them itself, so then ``<root>`` is 0710 to its group (:attr:`LocalSandboxProvider.
traverse_gid`): to pass through, not to list. The socket folder is 0710 to the sandbox
user's group whenever that is another user (bubblewrap finds its staging folder there).

Runtimes are forked by the fork server (:mod:`emulator.sandbox.forking`), or spawned fresh
(under bubblewrap, or when the fork server cannot run). Each runs under its tier's limits
(:mod:`emulator.sandbox.cgroups`, docs/tiers.md): its processes join their cgroups before
the provider tells the runtime go (``KIT_RUNTIME_GATE``), so no agent code runs outside
them. The sandbox itself, its exits and its disk and lifetime limits, is
:class:`~emulator.sandbox.process.LocalSandbox`. Idle stops are the host's (SIGTERM,
``idle``, 143).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import os
import pwd
import resource
import shutil
import signal
import sys
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import kit
from emulator.sandbox.cgroups import (
    Cgroups,
    Limits,
    SandboxCgroup,
    rlimits_for,
)
from emulator.sandbox.folders import (
    LOGS,
    EntrySync,
    first_shut,
    own_folders,
    short_run_dir,
    write_owned,
)
from emulator.sandbox.forking import ForkServer
from emulator.sandbox.guard import MAX_LIFETIME_S, refuse_if_full
from emulator.sandbox.isolation import (
    cannot_confine,
    choose,
    sandbox_view,
    stage_command,
    staged,
)
from emulator.sandbox.machine import MachineProvider
from emulator.sandbox.process import LocalSandbox
from kit import hoptrace
from kit.host.errors import SandboxError
from kit.host.runtime_client import RuntimeClient, wait_ready
from kit.host.sandbox import (
    SandboxSpec,
    SandboxView,
    runtime_config,
    store_folder,
)
from kit.ids import SandboxId, SessionId
from kit.private import DIR_MODE, open_private, private_folder, tighten
from kit.protocol.runtime_config import CONFIG_ENV, GATE_ENV, STORE_DEADLINE_S, STORE_RETRY_S
from kit.runtime.jail import Jail
from kit.tiers import get_tier

log = logging.getLogger("emulator.sandbox")

DEFAULT_USER = "nobody"
START_TIMEOUT_S = 90.0
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
CLOSE_WAIT_S = 5.0
CONFIG_FILE = "config.json"
"""The runtime's config file in its run folder (it deletes it once read)."""


class LocalSandboxProvider(MachineProvider):
    """Starts :class:`LocalSandbox` processes under ``root``."""

    kind = "local"

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
        self._forks: ForkServer | None = None
        self._forks_lock = asyncio.Lock()
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
            raise SandboxError(
                f"Sandbox isolation must be auto, bwrap or off (KIT_SANDBOX_ISOLATION), not "
                f"{isolation!r}."
            )
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

    def runtime_code(self) -> tuple[Path, ...]:
        """The folders the runtime imports its code from (kit and the Agent SDK), where the
        sandbox runs this interpreter; the sandbox user must reach them when nothing binds
        them in (an unconfined sandbox imports them in place)."""
        if Path(self.python).absolute() != Path(sys.executable).absolute():
            return ()
        found = [Path(kit.__file__).parent]
        sdk = importlib.util.find_spec("claude_agent_sdk")
        if sdk is not None and sdk.submodule_search_locations:
            found.append(Path(next(iter(sdk.submodule_search_locations))))
        return tuple(found)

    def unreachable(self, path: Path) -> Path | None:
        """The first folder on ``path`` the sandbox user cannot enter, if any."""
        return first_shut(path, self.uid, self.gid)

    async def start(self, spec: SandboxSpec) -> LocalSandbox:
        # The first cgroup move after a quiet spell waits ~15 ms for the kernel: that wait
        # runs beside the preparations and the fork below (Cgroups.prime).
        priming = (
            asyncio.create_task(asyncio.to_thread(self.cgroups.prime)) if self.cgroups else None
        )
        try:
            return await self._start(spec)
        finally:
            if priming is not None:
                await priming

    async def _start(self, spec: SandboxSpec) -> LocalSandbox:
        try:
            limits = dataclasses.replace(Limits.for_tier(get_tier(spec.tier)), **self.overrides)
        except KeyError:
            raise SandboxError(f"Unknown sandbox tier {spec.tier!r}; see docs/tiers.md.") from None
        workspace = self.workspace(spec.session_id)
        refuse_if_full(spec.session_id, [workspace], limits.disk_bytes)
        bundle_dir = self.bundle_dir(spec.bundle_digest)
        for needed in (
            (bundle_dir, self.root, *self.runtime_code()) if not self._bound_by_root() else ()
        ):
            blocked = self.unreachable(needed)
            if blocked is not None:
                raise SandboxError(
                    f"The sandbox user {self.user!r} cannot enter {blocked} "
                    f"(mode {blocked.stat().st_mode & 0o777:o}), so it cannot reach {needed}. "
                    "Keep the project, its state folder (KIT_STATE_DIR) and kit's virtualenv where "
                    "other users can enter (not under /root), let sandboxes be confined "
                    "(KIT_SANDBOX_ISOLATION=auto), or set KIT_SANDBOX_USER= (empty) to run "
                    "sandboxes as yourself."
                )
        base = self.root / spec.session_id
        dirs = {name: base / name for name in ("workspace", "home", "tmp")}
        dirs["run"] = self.run_root / spec.session_id[:13]
        # A new sandbox starts from a clean disk, as in the cloud: only the workspace carries
        # over (a local convenience). A home left by a killed sandbox would hold the CLI's
        # own copy of the session and make it refuse the session id as "already in use".
        for fresh in ("home", "tmp", "run"):
            shutil.rmtree(dirs[fresh], ignore_errors=True)
        # Root walks into folders the sandbox user owns only by descriptor, from a folder of
        # the host's: that user (any sandbox's, unconfined) may swap one for a link meanwhile.
        for names in ((), ("workspace",), ("home",), ("home", ".claude"), ("tmp",)):
            own_folders(self.uid, self.gid, self.root, spec.session_id, *names)
        own_folders(self.uid, self.gid, self.run_root, dirs["run"].name)
        store = store_folder(spec.store_url)
        if store is not None and store.name != spec.session_id:
            store = None  # a shared store's folder is the host's, never the sandbox user's
        entry = None
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            own_folders(self.uid, self.gid, store.parent, store.name)
            entry = EntrySync(store, spec.store_url)
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
        try:
            write_owned(config_path, config.to_json(), self.uid, self.gid)
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
                **_hop_trace(),
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
            except BaseException as exc:
                if cgroup is not None:
                    await cgroup.remove()
                if isinstance(exc, OSError):
                    raise SandboxError(self._cannot_run(str(exc.strerror or exc))) from exc
                raise
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
                raise SandboxError(
                    f"Could not apply the tier's limits to the sandbox: {exc}."
                ) from exc
            self.running[spec.session_id] = sandbox
            sandbox.on_exit(lambda: self._forget(sandbox))
            with contextlib.suppress(OSError):  # it died already: the wait says how
                open_gate()
            client = RuntimeClient(sandbox.endpoint, spec.runtime_token)
            try:
                ready = await wait_ready(
                    client, sandbox.alive, self.start_timeout_s, session_id=spec.session_id
                )
            except BaseException as exc:  # no answer in time, a bad one, or the start cancelled
                await sandbox.kill()
                await sandbox.wait()
                if isinstance(exc, TimeoutError):
                    raise SandboxError(
                        f"The sandbox for session {spec.session_id} did not get ready in "
                        f"{self.start_timeout_s:.0f} s; see {log_path}."
                    ) from None
                raise
            if ready is None:
                info = await sandbox.wait()
                last = _tail(log_path, 1)
                if info.exit_code in (126, 127) or last.startswith("bwrap: execvp"):
                    raise SandboxError(self._cannot_run(last))  # the interpreter could not run
                raise SandboxError(
                    f"The sandbox for session {spec.session_id} exited with code {info.exit_code} "
                    f"before it was ready: {_tail(log_path)} (full log: {log_path})."
                )
            if entry is not None:
                try:
                    await entry.synced()
                except BaseException:  # failed, or the start was cancelled: nobody holds it
                    await asyncio.shield(_put_down(sandbox))
                    raise
            sandbox.resumed = bool(ready.get("resumed"))
            if cgroup is not None and not self.throttle_start:
                cgroup.throttle(limits)
            sandbox.guard()
            return sandbox
        finally:
            # The runtime deletes it once read; this covers a start that failed first.
            config_path.unlink(missing_ok=True)

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
        forks = await self._ensure_fork_server(env) if self.fork_server else None
        if forks is not None:
            child = await forks.spawn(
                cwd,
                {**env, "KIT_DIE_WITH_PARENT": str(forks.proc.pid if forks.proc else 0)},
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
                    f"{self.root / 'fork-server.log'}, or set KIT_SANDBOX_ISOLATION=off to run "
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

    async def _ensure_fork_server(self, env: dict[str, str]) -> ForkServer | None:
        async with self._forks_lock:
            if self._forks is not None and self._forks.alive:
                return self._forks
            if self._closed:
                return None
            folder = self.root / ".fork-server"
            own_folders(self.uid, self.gid, self.root, folder.name)
            forks = ForkServer()
            generic = {
                **env,
                "HOME": str(folder),
                "TMPDIR": str(folder),
                "KIT_DIE_WITH_PARENT": str(os.getpid()),  # no orphans if this host is killed
            }
            try:
                # Confining forks need root: the fork server then drops to the sandbox user in
                # each child, after the namespaces and mounts (kit.runtime.jail).
                drop = self._drop_privileges() if self.isolation != "native" else []
                await forks.start(
                    [*drop, self.python, "-m", "kit.runtime.forkserver"],
                    generic,
                    folder,
                    self.root / "fork-server.log",
                    self.start_timeout_s,
                )
            except (OSError, SandboxError):
                log.warning(
                    "the runtime fork server did not start; spawning each sandbox fresh",
                    exc_info=True,
                )
                self.fork_server = False
                return None
            self._forks = forks
            return forks

    async def settled(self) -> None:
        """Return once the fork server is up (benchmarks start from a quiet machine)."""
        if self.fork_server:
            await self._ensure_fork_server({"PATH": _SAFE_PATH, "LANG": "C.UTF-8"})

    async def close(self) -> None:
        """Stop the fork server; remove this provider's cgroup folders once sandboxes are gone."""
        self._closed = True
        async with self._forks_lock:
            if self._forks is not None:
                await self._forks.stop()
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


def _tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return " | ".join(line.rstrip() for line in deque(f, maxlen=lines))
    except OSError:
        return "(no log)"


def _hop_trace() -> dict[str, str]:
    """``KIT_HOP_TRACE`` when this host traces a turn's hops (:mod:`kit.hoptrace`): the
    runtime marks its own. A folder name, no secret."""
    folder = os.environ.get(hoptrace.ENV)
    return {hoptrace.ENV: folder} if folder else {}


async def _put_down(sandbox: LocalSandbox) -> None:
    """Kill a sandbox whose start did not go on, and wait for its exit."""
    await sandbox.kill()
    await sandbox.wait()
