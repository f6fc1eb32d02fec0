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
- labels ``kit.session``, ``kit.host``, ``kit.sandbox`` and ``kit.disk``, so a new host with
  the same host id finds a dead host's container (:meth:`DockerSandboxProvider.find`) and
  reaps orphans (:meth:`DockerSandboxProvider.reap`) from Docker's own records; another
  host id's containers are never touched;
- the workspace and home held to the tier's disk, and the container to kit's maximum
  lifetime, by :mod:`emulator.sandbox.guard` (Docker puts no quota on a bind mount).

An OOM kill of any process ends the whole container (Docker's ``oom`` events), and an exit
with ``State.OOMKilled`` reads exit 137, reason ``oom``. A start that fails, times out or is
cancelled removes its container and deletes its config (the session's tokens).
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
from emulator.sandbox.folders import EntrySync, own_folders, short_run_dir, write_owned
from emulator.sandbox.guard import (
    MAX_LIFETIME_S,
    hold_to_limits,
    over_quota,
    refuse_if_full,
    used_bytes,
)
from emulator.sandbox.machine import MachineProvider
from emulator.sandbox.rehearsal import Rehearsable
from kit.host.errors import SandboxError
from kit.host.runtime_client import RuntimeClient, wait_ready
from kit.host.sandbox import (
    ExitInfo,
    Sandbox,
    SandboxSpec,
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
LABEL_DISK = "kit.disk"
"""The bytes the container's folders may hold: a successor host holds it to them too."""


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
        *,
        folders: tuple[Path, ...] = (),
        disk_bytes: int | None = None,
        max_lifetime_s: float | None = MAX_LIFETIME_S,
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
        self.folders = folders
        """The container's writable host folders (workspace, home, run folder), held to
        ``disk_bytes`` (None: not held)."""
        self.disk_bytes = disk_bytes
        self.max_lifetime_s = max_lifetime_s
        self._lost = asyncio.Event()
        """Set once :meth:`Sandbox.wait` gave up on Docker's report of the exit."""
        self._waiter = asyncio.create_task(self._reap(), name=f"reap-{sandbox_id}")
        self._guard: asyncio.Task[None] | None = None

    def guard(self) -> None:
        """Hold the container to its disk and lifetime (once the runtime is up): Docker
        puts no quota on a bind mount, so its folders are measured as a local sandbox's."""
        if self._guard is None and self.alive():
            self._guard = asyncio.create_task(
                hold_to_limits(
                    self.id,
                    self._waiter,
                    self.over_disk_quota,
                    lambda sig, reason: self.kill(sig, reason=reason),
                    self.max_lifetime_s,
                ),
                name=f"guard-{self.id}",
            )

    def over_disk_quota(self) -> bool:
        """Whether the container's writable folders hold more than the tier's disk."""
        return self.disk_bytes is not None and over_quota(self.folders, self.disk_bytes)

    def _has_exited(self) -> bool:
        return self._waiter.done()

    def alive(self) -> bool:
        """Whether the container has not been seen to exit (nor its exit given up on)."""
        return not self._waiter.done() and not self._lost.is_set()

    async def _reap(self) -> ExitInfo:
        code = await self._exit_code()
        oom = False
        with contextlib.suppress(SandboxError):
            oom = bool((await self._client.inspect(self.container))["State"]["OOMKilled"])
        self.last_logs = await self._client.logs(self.container)
        with contextlib.suppress(SandboxError):
            await self._client.remove(self.container)
        if oom or self._reason == "oom":  # as a local sandbox: an OOM kill ends it all
            return ExitInfo(128 + signal.SIGKILL, "oom")
        return ExitInfo(code, self._reason or reason_of(code))

    async def _exit_code(self) -> int:
        """The container's exit code, as Docker's wait reports it; or 137 once
        :meth:`Sandbox.wait` has given up on that report (a containerd shim that died can
        lose a killed container's exit): then :meth:`_reap` removes the container by force."""
        waiting = asyncio.ensure_future(self._client.wait(self.container))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait([waiting, lost], return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                return waiting.result()
        finally:
            waiting.cancel()
            lost.cancel()
        status = "nothing"
        with contextlib.suppress(SandboxError):
            status = (await self._client.inspect(self.container))["State"].get("Status")
        log.warning(
            "container %s: exit lost (Docker says: %s); removing it", self.container, status
        )
        return 128 + signal.SIGKILL

    async def _exit_lost(self, info: ExitInfo) -> None:
        self._lost.set()
        await asyncio.shield(self._waiter)  # the reaper: inspect, logs, forced remove

    async def _reported_exit(self) -> ExitInfo:
        return await asyncio.shield(self._waiter)

    async def _send_signal(self, sig: int, reason: str | None) -> None:
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
        if not stats:  # Docker answers null for a container that has just exited
            return None
        memory: dict[str, Any] = stats.get("memory_stats") or {}
        peak = memory.get("max_usage") or memory.get("usage") or 0
        cpu = (stats.get("cpu_stats") or {}).get("cpu_usage", {}).get("total_usage", 0)
        disk = await asyncio.to_thread(used_bytes, self.folders)
        return Usage(peak_memory_mib=peak / 2**20, cpu_s=cpu / 1e9, disk_mb=disk / 1e6)


def _forget_config(made: asyncio.Future[Any], config: Path) -> None:
    """Delete the config a start that did not go on made (its error is the start's)."""
    config.unlink(missing_ok=True)
    if not made.cancelled():
        made.exception()


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
        host_id: str,
        client: DockerClient | None = None,
        start_timeout_s: float = 120.0,
        store_retry_s: float = STORE_RETRY_S,
        store_deadline_s: float = STORE_DEADLINE_S,
        disk_bytes: int | None = None,
        max_lifetime_s: float | None = MAX_LIFETIME_S,
    ) -> None:
        self.root = root
        self.bundles = bundles
        self.image = image
        self.host_id = host_id
        self.client = client or DockerClient()
        self.start_timeout_s = start_timeout_s
        self.store_retry_s = store_retry_s
        self.store_deadline_s = store_deadline_s
        self.disk_bytes = disk_bytes
        """Every sandbox's disk instead of its tier's (tests: a tiny one)."""
        self.max_lifetime_s = max_lifetime_s
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
        failures = 0  # in a row: an event in between starts the count again
        while failures < OOM_WATCH_ATTEMPTS:
            try:
                async for container in self.client.oom_events({LABEL_HOST: self.host_id}):
                    failures = 0
                    self._watching.set()
                    for sandbox in list(self.running.values()):
                        if sandbox.container == container:
                            await sandbox.kill(signal.SIGKILL, reason="oom")
            except SandboxError as exc:
                log.warning("docker OOM watch (%d): %s", failures + 1, exc)
            failures += 1
            await asyncio.sleep(1.0)
        log.warning("docker OOM watch given up; OOM kills are read when a container exits")

    def inside(self, host_path: Path) -> str:
        """Where a container sees ``host_path``: the bundle store's files under
        ``/bundles``; other host paths are not there (returned unchanged)."""
        if host_path.is_relative_to(self.bundles):
            return "/".join((BUNDLES, *host_path.relative_to(self.bundles).parts))
        return str(host_path)

    def _spec(self, spec: SandboxSpec, sandbox_id: SandboxId) -> ContainerSpec:
        """The container for ``spec`` (folders made, config written in the run folder)."""
        try:
            tier = get_tier(spec.tier)
        except KeyError:
            raise SandboxError(f"Unknown sandbox tier {spec.tier!r}; see docs/tiers.md.") from None
        sid = spec.session_id
        refuse_if_full(sid, [self.workspace(sid)], self._disk_bytes(tier.disk_mb))
        bundle = self.bundle_dir(spec.bundle_digest)
        bundle_inside = f"{BUNDLES}/{bundle.name}"  # the runtime checks the folder's name
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
            labels={
                LABEL_SESSION: sid,
                LABEL_HOST: self.host_id,
                LABEL_SANDBOX: sandbox_id,
                LABEL_DISK: str(self._disk_bytes(tier.disk_mb)),
            },
            env={CONFIG_ENV: f"{RUN}/config.json", "HOME": HOME, "TMPDIR": "/tmp"},
            binds=tuple(binds),
            tmpfs={"/tmp": TMPFS},
            memory_bytes=tier.memory_mib * 2**20,
            nano_cpus=round(tier.vcpu * 1e9),
            pids_limit=PIDS_LIMIT,
            working_dir=WORKSPACE,
        )
        return container

    async def start(self, spec: SandboxSpec) -> DockerSandbox:
        if self._oom_watch is None:
            self._oom_watch = asyncio.create_task(self._watch_oom(), name="docker-oom-watch")
            with contextlib.suppress(TimeoutError):  # else OOM kills are read at exit
                await asyncio.wait_for(self._watching.wait(), OOM_WATCH_START_S)
        sandbox_id = SandboxId(f"sbx-{uuid.uuid4().hex[:12]}")
        config = self.run_root / spec.session_id[:13] / "config.json"
        # The folders and the config are made in a thread, which a cancelled start cannot
        # stop: the config it writes is deleted once it is done.
        making = asyncio.ensure_future(asyncio.to_thread(self._spec, spec, sandbox_id))
        try:
            container = await asyncio.shield(making)
        except BaseException:
            making.add_done_callback(lambda done: _forget_config(done, config))
            raise
        store = store_folder(spec.store_url)
        entry = EntrySync(store, spec.store_url) if store is not None else None
        cid: str | None = None
        sandbox: DockerSandbox | None = None
        try:
            cid = await self.client.create(container)
            await self.client.start(cid)
            sandbox = self._sandbox(cid, spec.session_id, sandbox_id, container.labels)
            await self._until_ready(sandbox, spec)
            if entry is not None:
                await entry.synced()
        except BaseException:
            # Whatever stopped the start (an error, a timeout, a cancelled task), the
            # container goes with it: never a sandbox nobody holds.
            # A create cut short may still have made it: then it goes by its name.
            await asyncio.shield(self._abandon(cid or container.name, sandbox))
            raise
        finally:
            # The config holds the session's tokens: it never outlives the start (the
            # runtime deletes it once read; this covers a runtime that never read it).
            config.unlink(missing_ok=True)
        self._hold(sandbox)
        return sandbox

    def _disk_bytes(self, tier_disk_mb: int) -> int:
        return self.disk_bytes if self.disk_bytes is not None else tier_disk_mb * 10**6

    def _sandbox(
        self, cid: str, session_id: SessionId, sandbox_id: SandboxId, labels: dict[str, str]
    ) -> DockerSandbox:
        """The handle of container ``cid`` (its disk read from its labels)."""
        disk = labels.get(LABEL_DISK, "")
        return DockerSandbox(
            self.client,
            cid,
            session_id,
            sandbox_id,
            f"unix:{self.run_root / session_id[:13]}/runtime.sock",
            folders=(
                self.workspace(session_id),
                self.root / session_id / "home",
                self.run_root / session_id[:13],
            ),
            disk_bytes=int(disk) if disk.isdigit() else None,
            max_lifetime_s=self.max_lifetime_s,
        )

    async def _until_ready(self, sandbox: DockerSandbox, spec: SandboxSpec) -> None:
        client = RuntimeClient(sandbox.endpoint, spec.runtime_token)
        try:
            ready = await wait_ready(
                client, sandbox.alive, self.start_timeout_s, session_id=spec.session_id
            )
        except TimeoutError:
            raise SandboxError(
                f"The container sandbox for session {spec.session_id} did not get ready in "
                f"{self.start_timeout_s:.0f} s."
            ) from None
        if ready is None:
            info = await sandbox.wait()
            raise SandboxError(
                f"The container sandbox for session {spec.session_id} exited with code "
                f"{info.exit_code} before it was ready: {sandbox.last_logs or 'no output'}"
            )
        sandbox.resumed = bool(ready.get("resumed"))

    async def _abandon(self, cid: str, sandbox: DockerSandbox | None) -> None:
        """Kill and remove a container whose start failed (its reaper removes it; if the
        kill fails, it is removed by force)."""
        if sandbox is not None:
            try:
                await sandbox.kill(signal.SIGKILL, reason="failed")
                await sandbox.wait()  # bounded after a SIGKILL (Sandbox.wait)
                return
            except SandboxError as exc:
                log.warning("container %s did not end after its start failed: %s", cid, exc)
        try:
            await self.client.remove(cid)
        except SandboxError as exc:
            log.warning("could not remove container %s after its start failed: %s", cid, exc)

    def _hold(self, sandbox: DockerSandbox) -> None:
        """Count ``sandbox`` as the session's running one until it exits; hold it to its
        limits."""
        self.running[sandbox.session_id] = sandbox
        sandbox.guard()
        sandbox._waiter.add_done_callback(lambda _: self._forget(sandbox))

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
                labels = found.get("Labels") or {}
                sandbox_id = SandboxId(labels.get(LABEL_SANDBOX, "sbx-unknown"))
                adopted = self._sandbox(found["Id"], session_id, sandbox_id, labels)
                self._hold(adopted)
                return adopted
        return None

    async def reap(self, keep: Callable[[SessionId], bool]) -> list[SandboxId]:
        """Kill and remove this host's containers whose session ``keep`` rejects (one
        without a session label is nobody's: it goes too). A container Docker fails to
        remove is logged and left for the next reap; the others still go."""
        reaped = []
        for found in await self.client.list({LABEL_HOST: self.host_id}):
            labels = found.get("Labels") or {}
            session = SessionId(labels.get(LABEL_SESSION, ""))
            if session and keep(session):
                continue
            try:
                mine = self.running.get(session)
                if mine is not None and mine.container == found["Id"]:
                    await mine.kill(signal.SIGKILL, reason="orphan")
                    await mine.wait()
                else:
                    await self.client.remove(found["Id"])
            except SandboxError as exc:
                log.warning("could not reap container %s: %s", found["Id"][:12], exc)
                continue
            reaped.append(SandboxId(labels.get(LABEL_SANDBOX, found["Id"][:12])))
        return reaped

    async def close(self) -> None:
        if self._oom_watch is not None:
            self._oom_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._oom_watch
        await self.client.close()
