"""Sandboxes as containers of kit's runtime image (``kit image build``) under Docker.

One container per sandbox, started through the Docker Engine API
(:mod:`emulator.sandbox.dockerapi`):

- ``--network none``: the runtime reaches the host only through the proxies' unix sockets,
  mounted read-only; the host reaches the runtime through its socket in the run folder;
- the tier's memory (no swap on top), CPU share and a pids limit;
- a read-only root; writable: the session's workspace and home, its run folder (the
  runtime's socket, its config file, which the runtime deletes), a local transcript store's
  folder, and a tmpfs ``/tmp``; uid/gid 10001, no capabilities, ``no-new-privileges``;
- the bundle, named by digest, mounted read-only at ``/bundles/<digest>``: the runtime verifies it;
- labels ``kit.session``, ``kit.host`` and ``kit.sandbox``, so a new host finds a dead
  host's container (:meth:`DockerSandboxProvider.find`) and reaps orphans
  (:meth:`DockerSandboxProvider.reap`) from Docker's own records.

An OOM kill is read from ``State.OOMKilled``: exit 137, reason ``oom``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulator.sandbox.dockerapi import Bind, ContainerSpec, DockerClient
from emulator.sandbox.folders import own_folders, short_run_dir, write_owned
from emulator.sandbox.machine import MachineProvider
from emulator.sandbox.rehearsal import Rehearsable
from kit.host.errors import SandboxError
from kit.host.runtime_client import RuntimeClient, wait_ready
from kit.host.sandbox import (
    ExitInfo,
    Sandbox,
    SandboxSpec,
    SandboxState,
    SandboxView,
    Usage,
    reason_of,
    runtime_config,
    store_folder,
)
from kit.ids import SandboxId, SessionId
from kit.protocol.runtime_config import CONFIG_ENV, STORE_DEADLINE_S, STORE_RETRY_S
from kit.tiers import get_tier

__all__ = ["DockerSandbox", "DockerSandboxProvider"]

log = logging.getLogger("emulator.sandbox.docker")

UID = 10001
"""The image's unprivileged user (kit/deploy/templates/Dockerfile)."""
PIDS_LIMIT = 512
TMPFS = "rw,nosuid,nodev,size=256m"
RUN, BUNDLES, WORKSPACE, HOME, STORE, PROXIES = (
    "/run/kit",
    "/bundles",
    "/workspace",
    "/home/kit",
    "/store",
    "/run/kit-host",
)
LABEL_SESSION, LABEL_HOST, LABEL_SANDBOX = "kit.session", "kit.host", "kit.sandbox"


OOM_WATCH_ATTEMPTS = 10
"""How many times in a row the provider re-opens Docker's event stream after it breaks."""
OOM_WATCH_START_S = 5.0
"""How long the first start waits for Docker's event stream to open."""
OOM_NOW_WAIT_S = 3.0
"""How long :meth:`DockerSandbox.oom` lets the kernel act before it kills the container."""


class DockerSandbox(Sandbox, Rehearsable):
    """One runtime container."""

    def __init__(
        self,
        client: DockerClient,
        container: str,
        session_id: SessionId,
        sandbox_id: SandboxId,
        endpoint: str,
    ) -> None:
        self.id = sandbox_id
        self.session_id = session_id
        self.endpoint = endpoint
        self.resumed = False
        self.container = container
        self._client = client
        self._reason: str | None = None
        self.last_logs = ""
        """The runtime's last lines of output, read as the container exited."""
        self._waiter = asyncio.create_task(self._reap(), name=f"reap-{sandbox_id}")

    @property
    def state(self) -> SandboxState:
        return SandboxState.EXITED if self._waiter.done() else SandboxState.RUNNING

    def alive(self) -> bool:
        """Whether the container has not been seen to exit."""
        return not self._waiter.done()

    async def _reap(self) -> ExitInfo:
        code = await self._client.wait(self.container)
        oom = False
        with contextlib.suppress(SandboxError):
            oom = bool((await self._client.inspect(self.container))["State"]["OOMKilled"])
        self.last_logs = await self._client.logs(self.container)
        with contextlib.suppress(SandboxError):
            await self._client.remove(self.container)
        if oom or self._reason == "oom":  # as a local sandbox: an OOM kill ends it all
            return ExitInfo(128 + signal.SIGKILL, "oom")
        return ExitInfo(code, self._reason or reason_of(code))

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._waiter)

    async def kill(self, sig: int = signal.SIGKILL, reason: str | None = None) -> None:
        if reason is not None and self._reason is None:
            self._reason = reason
        if self.alive():
            await self._client.kill(self.container, int(sig))

    async def oom(self) -> None:
        """Run the container out of memory now (``kit sandbox oom``): its limit is lowered to
        what it uses, so its next allocation is OOM-killed; an idle runtime allocates
        nothing (or the kernel refuses the lower limit), so after :data:`OOM_NOW_WAIT_S` it
        is killed directly, with the same report (exit 137, reason ``oom``)."""
        if not self.alive():
            return
        with contextlib.suppress(SandboxError):
            memory = (await self._client.stats(self.container)).get("memory_stats") or {}
            await self._client.update_memory(self.container, int(memory.get("usage", 0)) + 2**20)
        try:
            await asyncio.wait_for(self.wait(), OOM_NOW_WAIT_S)
        except TimeoutError:
            await self.kill(signal.SIGKILL, reason="oom")
            await self.wait()

    async def host_pid(self) -> int:
        """The host PID of the container's first process (its init)."""
        return int((await self._client.inspect(self.container))["State"]["Pid"])

    async def usage(self) -> Usage | None:
        try:
            stats = await self._client.stats(self.container)
        except SandboxError:
            return None
        memory: dict[str, Any] = stats.get("memory_stats") or {}
        peak = memory.get("max_usage") or memory.get("usage") or 0
        cpu = (stats.get("cpu_stats") or {}).get("cpu_usage", {}).get("total_usage", 0)
        return Usage(peak_memory_mib=peak / 2**20, cpu_s=cpu / 1e9, disk_mb=0.0)


class DockerSandboxProvider(MachineProvider):
    """Starts each sandbox as a container of ``image`` (see the module docstring).

    ``root`` holds the sessions' folders, ``bundles`` the built bundles (named by the first 32
    digits of their digest); ``host_id`` names this host's containers among others on the
    same daemon (``kit.host`` label)."""

    kind = "docker"

    def __init__(
        self,
        root: Path,
        bundles: Path,
        image: str,
        *,
        host_id: str = "local",
        client: DockerClient | None = None,
        start_timeout_s: float = 120.0,
        store_retry_s: float = STORE_RETRY_S,
        store_deadline_s: float = STORE_DEADLINE_S,
    ) -> None:
        self.root = root
        self.bundles = bundles
        self.image = image
        self.host_id = host_id
        self.client = client or DockerClient()
        self.start_timeout_s = start_timeout_s
        self.store_retry_s = store_retry_s
        self.store_deadline_s = store_deadline_s
        self.running: dict[SessionId, DockerSandbox] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.run_root = short_run_dir(root)
        self.uid = self.gid = UID
        self.isolation = "container"
        self._oom_watch: asyncio.Task[None] | None = None
        self._watching = asyncio.Event()

    async def _watch_oom(self) -> None:
        """Kill a container the moment the kernel OOM-kills any process of it: as with a
        local sandbox, an OOM kill anywhere ends the whole sandbox (``oom``, 137), rather
        than leave a runtime whose harness or tool just vanished."""
        for attempt in range(OOM_WATCH_ATTEMPTS):
            try:
                async for container in self.client.oom_events({LABEL_HOST: self.host_id}):
                    attempt = 0
                    self._watching.set()
                    for sandbox in list(self.running.values()):
                        if sandbox.container == container:
                            await sandbox.kill(signal.SIGKILL, reason="oom")
            except SandboxError as exc:
                log.warning("docker OOM watch (%d): %s", attempt + 1, exc)
            await asyncio.sleep(1.0)
        log.warning("docker OOM watch given up; OOM kills are read when a container exits")

    def inside(self, host_path: Path) -> str:
        """Where a container sees ``host_path``: the bundle store's files under
        ``/bundles``; other host paths are not there (returned unchanged)."""
        if host_path.is_relative_to(self.bundles):
            return "/".join((BUNDLES, *host_path.relative_to(self.bundles).parts))
        return str(host_path)

    def _spec(self, spec: SandboxSpec, sandbox_id: SandboxId) -> tuple[ContainerSpec, Path]:
        """The container for ``spec`` (folders made, config written); the host's run folder."""
        try:
            tier = get_tier(spec.tier)
        except KeyError:
            raise SandboxError(f"Unknown sandbox tier {spec.tier!r}; see docs/tiers.md.") from None
        bundle = self.bundle_dir(spec.bundle_digest)
        bundle_inside = f"{BUNDLES}/{bundle.name}"  # the runtime checks the folder's name
        sid = spec.session_id
        home = self.root / sid / "home"
        shutil.rmtree(home, ignore_errors=True)  # a new sandbox starts from a clean home
        for names in ((), ("workspace",), ("home",)):
            own_folders(UID, UID, self.root, sid, *names)
        run = self.run_root / sid[:13]
        shutil.rmtree(run, ignore_errors=True)
        own_folders(UID, UID, self.run_root, run.name)
        binds = [
            Bind(str(bundle), bundle_inside, read_only=True),
            Bind(str(self.root / sid / "workspace"), WORKSPACE),
            Bind(str(home), HOME),
            Bind(str(run), RUN),
        ]
        mounts: dict[str, str] = {}
        for n, endpoint in enumerate(e for e in (spec.model, spec.egress) if e is not None):
            if endpoint.unix_path:
                inside = f"{PROXIES}/{n}.sock"
                binds.append(Bind(endpoint.unix_path, inside, read_only=True))
                mounts[endpoint.unix_path] = inside
        store = store_folder(spec.store_url)
        if spec.store_url.startswith("s3:"):
            raise SandboxError(
                f"A container sandbox reaches no network, so not the transcript store "
                f"{spec.store_url.split('?')[0]!r}: use a local store (KIT_STORE_URL unset) "
                "with --sandbox docker, or --sandbox local for an s3:// store."
            )
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            own_folders(UID, UID, store.parent, store.name)
            binds.append(Bind(str(store), STORE))
            mounts[str(store)] = STORE
        view = SandboxView(
            bundle_dir=bundle_inside,
            workspace=WORKSPACE,
            home=HOME,
            tmp_dir="/tmp",
            listen=f"unix:{RUN}/runtime.sock",
            mounts=mounts,
        )
        config = runtime_config(
            spec, view, store_retry_s=self.store_retry_s, store_deadline_s=self.store_deadline_s
        )
        write_owned(run / "config.json", config.to_json(), UID, UID)
        container = ContainerSpec(
            image=self.image,
            name=f"kit-{sid[:13]}-{sandbox_id.removeprefix('sbx-')}",
            user=f"{UID}:{UID}",
            labels={LABEL_SESSION: sid, LABEL_HOST: self.host_id, LABEL_SANDBOX: sandbox_id},
            env={CONFIG_ENV: f"{RUN}/config.json", "HOME": HOME, "TMPDIR": "/tmp"},
            binds=tuple(binds),
            tmpfs={"/tmp": TMPFS},
            memory_bytes=tier.memory_mib * 2**20,
            nano_cpus=round(tier.vcpu * 1e9),
            pids_limit=PIDS_LIMIT,
            working_dir=WORKSPACE,
        )
        return container, run

    async def start(self, spec: SandboxSpec) -> DockerSandbox:
        if self._oom_watch is None:
            self._oom_watch = asyncio.create_task(self._watch_oom(), name="docker-oom-watch")
            with contextlib.suppress(TimeoutError):  # else OOM kills are read at exit
                await asyncio.wait_for(self._watching.wait(), OOM_WATCH_START_S)
        sandbox_id = SandboxId(f"sbx-{uuid.uuid4().hex[:12]}")
        container, run = await asyncio.to_thread(self._spec, spec, sandbox_id)
        cid = await self.client.create(container)
        try:
            await self.client.start(cid)
        except SandboxError:
            await self.client.remove(cid)
            raise
        sandbox = DockerSandbox(
            self.client, cid, spec.session_id, sandbox_id, f"unix:{run}/runtime.sock"
        )
        client = RuntimeClient(sandbox.endpoint, spec.runtime_token)
        try:
            ready = await wait_ready(
                client, sandbox.alive, self.start_timeout_s, session_id=spec.session_id
            )
        except TimeoutError:
            await sandbox.kill()
            await sandbox.wait()
            raise SandboxError(
                f"The container sandbox for session {spec.session_id} did not get ready in "
                f"{self.start_timeout_s:.0f} s."
            ) from None
        finally:
            (run / "config.json").unlink(missing_ok=True)
        if ready is None:
            info = await sandbox.wait()
            logs = sandbox.last_logs
            raise SandboxError(
                f"The container sandbox for session {spec.session_id} exited with code "
                f"{info.exit_code} before it was ready: {logs or 'no output'}"
            )
        sandbox.resumed = bool(ready.get("resumed"))
        self.running[spec.session_id] = sandbox
        sandbox._waiter.add_done_callback(lambda _: self._forget(sandbox))
        return sandbox

    def _forget(self, sandbox: DockerSandbox) -> None:
        if self.running.get(sandbox.session_id) is sandbox:
            del self.running[sandbox.session_id]

    async def find(self, session_id: SessionId) -> DockerSandbox | None:
        """The session's running container: this provider's, or one a host with the same
        ``host_id`` left behind (adopted from its labels)."""
        mine = self.running.get(session_id)
        if mine is not None and mine.alive():
            return mine
        for found in await self.client.list({LABEL_SESSION: session_id, LABEL_HOST: self.host_id}):
            if found.get("State") == "running":
                run = self.run_root / session_id[:13]
                labels = found.get("Labels") or {}
                sandbox_id = SandboxId(labels.get(LABEL_SANDBOX, "sbx-unknown"))
                adopted = DockerSandbox(
                    self.client, found["Id"], session_id, sandbox_id, f"unix:{run}/runtime.sock"
                )
                self.running[session_id] = adopted
                return adopted
        return None

    async def reap(self, keep: Callable[[SessionId], bool]) -> list[SandboxId]:
        """Kill and remove this host's containers whose session ``keep`` rejects."""
        reaped = []
        for found in await self.client.list({LABEL_HOST: self.host_id}):
            labels = found.get("Labels") or {}
            session = SessionId(labels.get(LABEL_SESSION, ""))
            if keep(session):
                continue
            mine = self.running.get(session)
            if mine is not None and mine.container == found["Id"]:
                await mine.kill(signal.SIGKILL, reason="orphan")
                await mine.wait()
            else:
                await self.client.remove(found["Id"])
            reaped.append(SandboxId(labels.get(LABEL_SANDBOX, found["Id"][:12])))
        return reaped

    async def close(self) -> None:
        if self._oom_watch is not None:
            self._oom_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._oom_watch
        await self.client.close()
