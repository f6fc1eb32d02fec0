"""Sandboxes as Fly Machines: one machine of the runtime image per active session, in the
deployment's sandbox app, made and watched through the Machines API (:mod:`fly`).

- **start**: a stopped machine of the same size that no session holds is claimed (leased,
  its config replaced, started: faster than a new one), else one is created; the session's
  runtime config and the bundle's files go in as the machine's ``files``, its size is the
  tier's (:func:`kit.tiers.fly_guest`), its
  metadata names the session, the host and the tier. Ready when the runtime's health
  probe answers on ``http://[<private ip>]:8080``.
- **watch**: ``/wait`` for ``stopped``, then the exit event: its code, and ``oom_killed``
  as reason ``oom``.
- **kill**: Fly's ``signal``; **oom** (``kit sandbox oom``): an ``exec``'d program makes the
  runtime the kernel's first choice and allocates past the machine's memory;  **stop**: Fly's ``stop`` with the grace as its timeout. A stopped
  machine is kept for the next claim (Fly resets its root filesystem at the next start).
- **find**: the started machine whose metadata names the session. **reap**: stops started
  machines of sessions the host does not keep; destroys stopped ones past
  :data:`STOPPED_TTL_S` (marked first, destroyed at the next reap). **fleet**: every sandbox
  machine of the app, whichever host made it (``kit sandbox list``).

A machine's workspace is its root filesystem: it does not outlive a stop (the transcript,
in the store, does). The runtime config in ``files`` holds the session's own tokens (never
the model key); anyone with the sandbox app's API token can read it back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal as signals
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fly
from fly import FlyClient, Machine, MachineConfig, MachineFile, MachineGuest
from kit.bundle.build import MANIFEST
from kit.host.errors import SandboxError
from kit.host.runtime_client import RuntimeClient, wait_ready
from kit.host.sandbox import (
    ExitInfo,
    Rehearsable,
    Sandbox,
    SandboxProvider,
    SandboxSpec,
    SandboxView,
    reason_of,
    runtime_config,
)
from kit.ids import SandboxId, SessionId
from kit.protocol.runtime_config import CONFIG_ENV
from kit.tiers import TierError, fly_guest

log = logging.getLogger("kit.host.fly_sandbox")

RUNTIME_PORT = 8080
CONFIG_PATH = "/srv/kit/config.json"
"""Where the runtime config is written (a folder of the image's user: it deletes the file)."""
BUNDLES, WORKSPACE, HOME = "/bundles", "/workspace", "/home/kit"
PYTHON = "/opt/kit/bin/python"
"""The runtime image's interpreter (kit/deploy/templates/Dockerfile)."""
LISTEN = f"tcp:${{FLY_PRIVATE_IP}}:{RUNTIME_PORT}"
"""The runtime binds the machine's private (6PN) address, which Fly puts in its env."""
ROLE, SESSION, HOST, TIER, STOPPED_AT = (
    "kit_role",
    "kit_session",
    "kit_host",
    "kit_tier",
    "kit_stopped_at",
)
START_TIMEOUT_S = 120.0
STOPPED_TTL_S = 24 * 3600.0
"""How long a stopped machine waits to be claimed before the reaper destroys it."""
WAIT_ROUNDS = 24 * 60 + 10
"""A bound on one watch: 60 s waits for a day (kit's maximum sandbox lifetime)."""
STOP_SLACK_S = 10.0
"""How long past a stop's grace (which Fly rounds to whole seconds) Fly gets to show the
exit before the machine is sent a SIGKILL of kit's own, which bounds the wait
(:data:`kit.host.sandbox.LOST_EXIT_S`)."""
OOM_NOW_WAIT_S = 10.0
"""How long ``oom`` lets the kernel act before it kills the machine itself (reason ``oom``)."""
OOM_PROGRAM = """\
import os, sys
marked = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
        if argv[1:3] == [b"-m", b"kit.runtime"]:
            with open(f"/proc/{pid}/oom_score_adj", "w") as f:
                f.write("1000")
            marked += 1
    except OSError:
        pass
if not marked:
    sys.exit(3)
hold = []
for _ in range(4096):
    hold.append(b"\\x01" * (16 << 20))
"""
"""Run by ``oom`` inside the machine: the runtime (``python -m kit.runtime``, matched by its
argv; this program's own text never matches) becomes the OOM killer's first choice, then
16 MiB pages are touched until the kernel acts (a bound of 64 GiB: far past any guest).
The runtime is not dumpable (:func:`kit.runtime.jail.make_undumpable`), so only an exec run
as root can mark it. Exit 3 when no runtime could be marked: ``oom`` then kills the machine
at once (as it does whenever the program ends and the machine is still up). A machine
with swap (``init.swap_size_mb``) may swap rather than OOM: the fallback kill stands in."""


def guest_of(tier_name: str) -> MachineGuest:
    """The Fly guest a tier runs at (:func:`kit.tiers.fly_guest`)."""
    try:
        guest = fly_guest(tier_name)
    except (KeyError, TierError) as exc:
        raise SandboxError(f"Tier {tier_name!r} has no Fly size: {exc}") from None
    return {"cpu_kind": guest.cpu_kind, "cpus": guest.cpus, "memory_mb": guest.memory_mb}


def bundle_files(bundle_dir: Path) -> list[MachineFile]:
    """The bundle's files as machine ``files`` at ``/bundles/<digest[:32]>/``, read-only
    (scripts stay executable)."""
    files: list[MachineFile] = []
    root = f"{BUNDLES}/{bundle_dir.name}"
    for path in sorted(bundle_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(bundle_dir).as_posix()
            raw = base64.b64encode(path.read_bytes()).decode()
            mode = 0o555 if os.access(path, os.X_OK) else 0o444
            files.append({"guest_path": f"{root}/{rel}", "raw_value": raw, "mode": mode})
    return files


LIVE_STATES = ("created", "starting", "started")
"""The states in which a machine is (or is about to be) its session's sandbox."""


@dataclass(frozen=True)
class FleetMachine:
    """One sandbox machine as ``kit sandbox list`` shows it: a stopped one is a spare that
    the next session of its tier may claim (its session is None); any other keeps the
    session its metadata names (stopping, being claimed, failed…)."""

    machine_id: str
    session_id: str | None
    host_id: str | None
    tier: str
    state: str


class FlySandbox(Sandbox, Rehearsable):
    """One session's machine."""

    def __init__(
        self,
        api: FlyClient,
        app: str,
        machine: Machine,
        session_id: SessionId,
        runtime_token: str | None,
    ) -> None:
        self.api, self.app, self.machine = api, app, machine
        self.id = SandboxId(machine.id)
        self.session_id = session_id
        host = machine.private_ip
        self.endpoint = (
            f"http://[{host}]:{RUNTIME_PORT}" if ":" in host else f"http://{host}:{RUNTIME_PORT}"
        )
        self.resumed = False
        self.runtime_token = runtime_token
        self._reason: str | None = None
        self._exit: ExitInfo | None = None
        self._watch: asyncio.Task[ExitInfo] | None = None

    def _has_exited(self) -> bool:
        return self._exit is not None

    def alive(self) -> bool:
        return self._exit is None

    def watch(self) -> asyncio.Future[ExitInfo]:
        """The task watching for the machine's exit (started on first use)."""
        if self._watch is None or (self._watch.done() and self._watch.cancelled()):
            self._watch = asyncio.ensure_future(self._watch_exit())
        return self._watch

    async def _reported_exit(self) -> ExitInfo:
        return await asyncio.shield(self.watch())

    async def _exit_lost(self, info: ExitInfo) -> None:
        # Fly accepted the SIGKILL but its API never showed the exit: stop asking it.
        self._exit = info
        if self._watch is not None:
            self._watch.cancel()

    async def _watch_exit(self) -> ExitInfo:
        """Until this run of the machine has exited: its code (from the newest exit event
        after the run's start) and whether it was OOM-killed. API failures are waited out,
        never taken for an exit."""
        pause = 1.0
        for _ in range(WAIT_ROUNDS):
            try:
                await self.api.wait(
                    self.app, self.id, ("stopped", "destroyed", "failed"), timeout_s=60
                )
                exited = await self._exit_event()
            except fly.WaitTimedOut:
                continue
            except fly.NotFound:  # destroyed: gone with no exit to read
                exited = (128 + signals.SIGKILL, False)
            except fly.FlyError as exc:
                log.warning("machine %s: watching it failed (%s); trying again", self.id, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
                continue
            if exited is not None:
                code, oom = exited
                reason = "oom" if oom else self._reason or reason_of(code)
                self._exit = ExitInfo(code, reason)
                return self._exit
            await asyncio.sleep(1.0)  # stopped, but this run's start is newer: not yet
        raise SandboxError(f"machine {self.id} was watched for a day without exiting")

    async def _exit_event(self) -> tuple[int, bool] | None:
        """The newest exit after the newest start, as (code, oom_killed); None when the
        newest start has no exit yet."""
        for event in await self.api.list_events(self.app, self.id, limit=20):
            if event.type == "exit":
                return (event.exit_code if event.exit_code is not None else 0), event.oom_killed
            if event.type in ("start", "launch"):
                return None
        return 128 + signals.SIGKILL, False

    async def _send_signal(self, sig: int, reason: str | None) -> None:
        if self._exit is not None:
            return
        self._reason = reason or self._reason
        try:
            name = signals.Signals(sig).name
            await self.api.signal_machine(self.app, self.id, name)  # type: ignore[arg-type]
        except fly.NotFound:
            return
        except fly.FlyError as exc:
            state = None
            with contextlib.suppress(fly.FlyError):
                state = (await self.api.get_machine(self.app, self.id)).state
            if state in ("created", "starting"):  # not up to take a signal: stop it instead
                with contextlib.suppress(fly.NotFound):
                    try:
                        await self.api.stop_machine(
                            self.app, self.id, signal="SIGKILL", timeout_s=1
                        )
                    except fly.FlyError as stop_exc:
                        raise SandboxError(
                            f"could not stop machine {self.id}: {stop_exc}"
                        ) from stop_exc
                return
            if state is not None and state != "started":  # it stopped meanwhile
                return
            raise SandboxError(f"could not signal machine {self.id}: {exc}") from exc

    async def oom(self) -> None:
        """Run the machine out of memory now (:data:`OOM_PROGRAM` through Fly's ``exec``): the
        runtime is OOM-killed and Fly's exit event says so. Should the kernel not act within
        :data:`OOM_NOW_WAIT_S`, the machine is killed with the same report (exit 137,
        reason ``oom``)."""
        if not self.alive():
            return
        self._reason = "oom"  # whatever Fly's exit event says of it

        async def run() -> None:
            with contextlib.suppress(fly.FlyError):  # it dies under the exec: no answer
                await self.api.exec(
                    self.app,
                    self.id,
                    [PYTHON, "-c", OOM_PROGRAM],
                    timeout_s=round(OOM_NOW_WAIT_S),
                    check=False,
                )

        hog = asyncio.ensure_future(run())
        try:
            either: list[asyncio.Future[Any]] = [hog, self.watch()]
            done, _ = await asyncio.wait(
                either, timeout=OOM_NOW_WAIT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not done or (hog in done and self.alive()):
                # The kernel has not acted, or the program ended with the machine still up
                # (no runtime to mark, no interpreter, exec refused): kill it now.
                raise TimeoutError
            await asyncio.wait_for(self.wait(), OOM_NOW_WAIT_S)
        except TimeoutError:
            await self.kill(signals.SIGKILL, reason="oom")
            await self.wait()
        finally:
            hog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hog

    async def stop(self, grace_s: float = 5.0, reason: str = "stopped") -> ExitInfo:
        """Fly's ``stop`` (SIGTERM, then Fly's own SIGKILL after ``grace_s``); should the
        exit not show by then, a SIGKILL of our own, so :meth:`wait` is bounded."""
        self._reason = self._reason or reason
        with contextlib.suppress(fly.NotFound):
            try:
                await self.api.stop_machine(
                    self.app, self.id, signal="SIGTERM", timeout_s=max(1, round(grace_s))
                )
            except fly.FlyError as exc:
                # Fly would not stop it (not up yet, stopping already): a SIGTERM and a
                # SIGKILL as kill sends them, which knows those states.
                log.info("machine %s: Fly's stop failed (%s); signalling it", self.id, exc)
                return await super().stop(grace_s, reason)
        try:
            return await asyncio.wait_for(self.wait(), grace_s + STOP_SLACK_S)
        except TimeoutError:
            await self.kill(signals.SIGKILL, reason=reason)
            return await self.wait()


class FlySandboxProvider(SandboxProvider):
    """Starts each session's sandbox as a Fly Machine (see the module docstring)."""

    def __init__(
        self,
        api: FlyClient,
        app: str,
        bundles: Path,
        image: Callable[[], str],
        *,
        host_id: str,
        region: str | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api, self.app, self.bundles = api, app, bundles
        self.image = image
        self.host_id = host_id
        self.region = region
        self.start_timeout_s = start_timeout_s
        self.clock = clock
        self.running: dict[SessionId, FlySandbox] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    def machine_config(self, spec: SandboxSpec) -> MachineConfig:
        """The machine for ``spec``: the runtime image at the tier's size, the runtime config
        and the bundle as files, metadata naming the session."""
        bundle_dir = self.bundles / spec.bundle_digest[:32]
        if not (bundle_dir / MANIFEST).is_file():
            raise SandboxError(
                f"Bundle {spec.bundle_digest[:12]}… is not in {self.bundles}; the gateway "
                "fetches each deployed bundle from the bucket at start."
            )
        view = SandboxView(
            bundle_dir=f"{BUNDLES}/{bundle_dir.name}",
            workspace=WORKSPACE,
            home=HOME,
            tmp_dir="/tmp",
            listen=LISTEN,
        )
        config = runtime_config(spec, view).to_json()
        return {
            "image": self.image(),
            "guest": guest_of(spec.tier),
            "env": {CONFIG_ENV: CONFIG_PATH},
            "files": [
                {
                    "guest_path": CONFIG_PATH,
                    "raw_value": base64.b64encode(config.encode()).decode(),
                    "mode": 0o644,
                },
                *bundle_files(bundle_dir),
            ],
            "metadata": {
                ROLE: "sandbox",
                SESSION: spec.session_id,
                HOST: self.host_id,
                TIER: spec.tier,
            },
            "restart": {"policy": "no"},
            "auto_destroy": False,
            "stop_config": {"signal": "SIGTERM", "timeout": "10s"},
        }

    async def start(self, spec: SandboxSpec) -> FlySandbox:
        config = self.machine_config(spec)
        machine: Machine | None = None
        try:
            machine = await self._claim(spec, config)
            if machine is None:
                machine = await self.api.create_machine(self.app, config, region=self.region)
            sandbox = FlySandbox(self.api, self.app, machine, spec.session_id, spec.runtime_token)
            sandbox.watch()  # a runtime that dies while booting ends the wait for readiness
            await self.api.wait(
                self.app,
                machine.id,
                "started",
                version=machine.version or None,
                timeout_s=self.start_timeout_s,
            )
            client = RuntimeClient(sandbox.endpoint, spec.runtime_token)
            ready = await wait_ready(
                client, sandbox.alive, self.start_timeout_s, session_id=spec.session_id
            )
        except BaseException as exc:
            if machine is not None:
                await asyncio.shield(self._abandon(machine.id))
            if isinstance(exc, fly.FlyError):
                raise SandboxError(
                    f"could not start a machine for {spec.session_id}: {exc}"
                ) from exc
            raise
        if ready is None:
            info = await sandbox.wait()
            raise SandboxError(f"machine {machine.id} exited {info.exit_code} before it was ready")
        sandbox.resumed = bool(ready.get("resumed"))
        self._hold(sandbox)
        return sandbox

    async def _claim(self, spec: SandboxSpec, config: MachineConfig) -> Machine | None:
        """A stopped sandbox machine of this size no session holds, given ``config`` and
        started; None when there is none (or another host claimed it first)."""
        stopped = await self.api.list_machines(
            self.app, states=("stopped",), metadata={ROLE: "sandbox", TIER: spec.tier}
        )
        for candidate in stopped[:3]:
            try:
                async with self.api.leased(self.app, candidate.id, ttl_s=60, wait_s=0) as lease:
                    # The listing may be stale: another host may have claimed it since.
                    current = await self.api.get_machine(self.app, candidate.id)
                    if current.state != "stopped":
                        continue
                    machine = await self.api.update_machine(
                        self.app,
                        candidate.id,
                        config,
                        current_version=current.version,
                        skip_launch=True,
                        nonce=lease.nonce,
                    )
                    await self.api.start_machine(self.app, candidate.id, nonce=lease.nonce)
                    return machine
            except fly.FlyError as exc:  # held, changed, gone, or no room to start it
                log.info("could not claim machine %s (%s); trying another", candidate.id, exc)
                continue
        return None

    async def _abandon(self, machine_id: str) -> None:
        with contextlib.suppress(fly.FlyError):
            await self.api.stop_machine(self.app, machine_id, signal="SIGKILL", timeout_s=1)

    def _hold(self, sandbox: FlySandbox) -> None:
        self.running[sandbox.session_id] = sandbox

        async def forget() -> None:
            await sandbox.wait()
            if self.running.get(sandbox.session_id) is sandbox:
                del self.running[sandbox.session_id]

        task = asyncio.ensure_future(forget())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop watching (the machines run on: their sessions' owners stop them)."""
        for task in list(self._tasks):
            task.cancel()
        for sandbox in self.running.values():
            if sandbox._watch is not None:
                sandbox._watch.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def find(self, session_id: SessionId) -> FlySandbox | None:
        if session_id in self.running and self.running[session_id].alive():
            return self.running[session_id]
        try:
            listed = await self.api.list_machines(
                self.app, metadata={ROLE: "sandbox", SESSION: session_id}
            )
            # Fly filters lists by settled states only: one still starting counts too.
            found = [m for m in listed if m.state in LIVE_STATES]
        except fly.FlyError as exc:
            raise SandboxError(f"could not list the sandbox machines: {exc}") from exc
        if not found:
            return None
        # Never two sandboxes on one transcript: the newest stays, any other is stopped.
        newest, *others = sorted(found, key=lambda m: m.created_at, reverse=True)
        for other in others:
            await self._abandon(other.id)
        sandbox = FlySandbox(self.api, self.app, newest, session_id, None)
        self._hold(sandbox)
        return sandbox

    async def fleet(self) -> list[FleetMachine]:
        """Every sandbox machine of the app but destroyed ones, whichever host made it."""
        try:
            machines = await self.api.list_machines(self.app, metadata={ROLE: "sandbox"})
        except fly.FlyError as exc:
            raise SandboxError(f"could not list the sandbox machines: {exc}") from exc
        return [
            FleetMachine(
                machine_id=m.id,
                session_id=None if m.state == "stopped" else m.metadata.get(SESSION),
                host_id=m.metadata.get(HOST),
                tier=m.metadata.get(TIER, ""),
                state=m.state,
            )
            for m in machines
            if m.state not in ("destroying", "destroyed")
        ]

    async def reap(self, keep: Callable[[SessionId], bool]) -> list[SandboxId]:
        reaped: list[SandboxId] = []
        try:
            machines = await self.api.list_machines(
                self.app, states=("started", "stopped"), metadata={ROLE: "sandbox"}
            )
        except fly.FlyError as exc:
            raise SandboxError(f"could not list the sandbox machines: {exc}") from exc
        now = self.clock()
        for machine in machines:
            meta = machine.metadata
            try:
                if machine.state == "started" and not keep(SessionId(meta.get(SESSION, ""))):
                    await self.api.stop_machine(self.app, machine.id, signal="SIGKILL", timeout_s=1)
                    reaped.append(SandboxId(machine.id))
                elif machine.state == "stopped":
                    await self._expire(machine, now)
            except fly.FlyError as exc:
                log.warning("could not reap machine %s: %s", machine.id, exc)
        return reaped

    async def _expire(self, machine: Machine, now: float) -> None:
        """Mark a stopped machine, then destroy it once marked longer than the TTL."""
        marked = machine.metadata.get(STOPPED_AT)
        if marked is None:
            await self.api.set_metadata(self.app, machine.id, STOPPED_AT, str(int(now)))
        elif marked.isdigit() and now - int(marked) > STOPPED_TTL_S:
            await self.api.delete_machine(self.app, machine.id)
