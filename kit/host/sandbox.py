"""The sandbox provider seam: start a runtime for a session, watch it, kill it, find it.

Implementations: ``emulator.sandbox.LocalSandboxProvider`` (tiered local processes, for
``kit dev``), ``emulator.sandbox.DockerSandboxProvider`` (containers of the runtime image),
``kit.host.fly_sandbox.FlySandboxProvider`` (Fly Machines). The host only sees :class:`Sandbox` handles.

A :class:`SandboxSpec` names nothing on the host's disk: the bundle by its digest, the
model and egress proxies and the transcript store by URL. Each provider knows where the
bundle is (a local bundle folder, a mount, a download) and how its sandbox sees the host's
endpoints (:class:`SandboxView`); :func:`runtime_config` is the one mapping from a spec to
the runtime's start-up config that every provider uses. Readiness is the runtime's health
probe (:func:`kit.host.runtime_client.wait_ready`), for every provider.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from kit.durability import DEFAULT, Durability
from kit.ids import SandboxId, SessionId
from kit.protocol.runtime_api import HARNESS_EXIT_CODE
from kit.protocol.runtime_config import STORE_DEADLINE_S, STORE_RETRY_S, RuntimeConfig
from kit.storage.errors import StoreError
from kit.storage.sqliteurl import read_sqlite_url, sqlite_durability, unparse_sqlite_url

log = logging.getLogger("kit.host")


class SandboxState(enum.Enum):
    """Lifecycle of one sandbox."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True)
class Endpoint:
    """A host service as a sandbox reaches it, and the sandbox's own token for it.

    ``url`` is ``unix:/path`` (a socket a provider binds or mounts into the sandbox) or
    ``http://host:port`` (a sandbox on another machine, or one that shares the host's
    loopback). The model proxy swaps ``token`` for the real key; the egress proxy admits
    only the hosts on the agent's allowlist (``kit.toml`` ``[sandbox] egress``) with it."""

    url: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        check_endpoint(self.url)

    @property
    def unix_path(self) -> str | None:
        """The socket's path for a ``unix:`` endpoint; None for ``http://``."""
        return self.url.removeprefix("unix:") if self.url.startswith("unix:") else None


def check_endpoint(url: str) -> str:
    """``url`` if it is ``unix:/absolute/path`` or ``http://host:port``; else SandboxError."""
    if url.startswith("unix:/") and len(url) > len("unix:/"):
        return url
    parts = urlsplit(url)
    if parts.scheme == "http" and parts.hostname and parts.path in ("", "/"):
        return url
    from kit.host.errors import SandboxError

    raise SandboxError(f"An endpoint must be unix:/path or http://host:port, not {url!r}.")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a provider needs to start one session's runtime, wherever it runs."""

    session_id: SessionId
    tier: str
    bundle_digest: str
    """The bundle's sha256 (its folder in a bundle store is named by its first 32 digits);
    the runtime refuses a bundle that is not this one."""
    store_url: str
    """The transcript store (``sqlite:///path`` on the host's disk, ``s3://…``)."""
    model: Endpoint
    runtime_token: str = field(repr=False)
    idle_timeout_s: int
    egress: Endpoint | None = None
    """The egress proxy, when the host runs one (None: no way out but the model proxy)."""
    store_token: str | None = field(default=None, repr=False)
    """The sandbox's own token for a transcript store the host serves (``kit+http``); None:
    the store needs none, or takes the model token."""


@dataclass(frozen=True)
class SandboxView:
    """Where a provider's sandbox finds things: what :func:`runtime_config` writes into the
    runtime's config. Paths are as the runtime sees them."""

    bundle_dir: str
    workspace: str
    home: str
    tmp_dir: str
    listen: str
    """Where the runtime listens: ``unix:/path`` or ``tcp:HOST:PORT``."""
    mounts: Mapping[str, str] = field(default_factory=dict)
    """Host folders seen elsewhere inside the sandbox (host path → sandbox path): the
    proxies' sockets and a local transcript store's folder. Empty: the same paths."""

    def inside(self, host_path: str) -> str:
        """``host_path`` as the sandbox sees it."""
        for outside, inner in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
            if host_path == outside or host_path.startswith(outside.rstrip("/") + "/"):
                return inner + host_path[len(outside) :]
        return host_path


def store_folder(store_url: str) -> Path | None:
    """The host folder a ``sqlite:///`` transcript store lives in (the sandbox must write
    it); None for stores reached over the network."""
    parts = read_sqlite_url(store_url)
    return None if parts is None else parts.path.parent


def store_durability(store_url: str) -> Durability | None:
    """How durable a ``sqlite:///`` transcript store's writes are (its ``durability=``
    option); None for stores reached over the network. Options the store refuses count as
    the default (the runtime refuses them when it opens the store)."""
    parts = read_sqlite_url(store_url)
    if parts is None:
        return None
    try:
        return sqlite_durability(store_url, parts.query)
    except StoreError:
        return DEFAULT


def runtime_config(
    spec: SandboxSpec,
    view: SandboxView,
    *,
    store_retry_s: float = STORE_RETRY_S,
    store_deadline_s: float = STORE_DEADLINE_S,
) -> RuntimeConfig:
    """The runtime's start-up config for ``spec`` in a sandbox that sees things as ``view``:
    the one mapping every provider uses."""
    model_socket = spec.model.unix_path
    store_url = spec.store_url
    sqlite = read_sqlite_url(store_url)
    if sqlite is not None:  # the same file as the sandbox sees it, with the same options
        store_url = unparse_sqlite_url(sqlite._replace(path=Path(view.inside(str(sqlite.path)))))
    egress_url = None
    if spec.egress is not None:
        socket_path = spec.egress.unix_path
        egress_url = f"unix:{view.inside(socket_path)}" if socket_path else spec.egress.url
    return RuntimeConfig(
        session_id=spec.session_id,
        bundle_dir=Path(view.bundle_dir),
        workspace=Path(view.workspace),
        home=Path(view.home),
        tmp_dir=Path(view.tmp_dir),
        store_url=store_url,
        listen=view.listen,
        # Over a Unix socket the CLI still wants an HTTP base URL; the socket carries it.
        model_base_url="http://localhost" if model_socket else spec.model.url,
        model_unix_socket=view.inside(model_socket) if model_socket else None,
        model_token=spec.model.token,
        runtime_token=spec.runtime_token,
        store_retry_s=store_retry_s,
        store_deadline_s=store_deadline_s,
        egress_url=egress_url,
        egress_token=spec.egress.token if spec.egress is not None else None,
        bundle_digest=spec.bundle_digest,
        store_token=spec.store_token,
    )


@dataclass(frozen=True)
class ExitInfo:
    """How a sandbox ended: ``exit_code`` as a shell reports it (137 = SIGKILL, 143 = SIGTERM)."""

    exit_code: int
    reason: str
    """``exited`` (code 0, on its own), ``harness`` (the agent harness died under the
    runtime: :data:`~kit.protocol.runtime_api.HARNESS_EXIT_CODE`), ``crashed`` (other codes),
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


LOST_EXIT_S = 30.0
"""How long a provider may take to report a sandbox's exit after a SIGKILL before
:meth:`Sandbox.wait` takes the sandbox as killed (137) without its word."""
LOST_CLEANUP_S = 10.0
"""How long :meth:`Sandbox.wait` then gives the provider to drop what it holds of the
sandbox (:meth:`Sandbox._exit_lost`: Docker removes the container) before it returns."""


def _read_error(task: asyncio.Task[ExitInfo]) -> None:
    if not task.cancelled():
        task.exception()


class Sandbox(ABC):
    """A running (or finished) sandbox.

    A provider implements :meth:`_send_signal`, :meth:`_reported_exit` and
    :meth:`_has_exited`; this class decides, in one place, when the sandbox has ended:
    when its provider reports the exit, or :data:`LOST_EXIT_S` after a SIGKILL whose exit
    the provider never reported (a Docker shim or a Fly API that lost it). Every
    :meth:`wait` then gets the same :class:`ExitInfo`. A sandbox never sent SIGKILL is
    waited for as long as it runs.

    Taking a SIGKILLed sandbox as gone lets the session start another for its turn; the
    old one must no longer act. A local sandbox's processes are reaped by the kernel, so
    its report always comes. Docker: the daemon accepted the SIGKILL (else :meth:`kill`
    raises and nothing is decided), the provider removes the container by force once its
    exit is lost, and the session revokes the sandbox's tokens (no model, no egress);
    what remains is a container whose daemon lost it altogether, which could still write
    the session's transcript file until it is removed. Fly: the API accepted the SIGKILL,
    and the next start's ``find`` stops any machine Fly still lists as the session's;
    what remains is a machine Fly neither killed nor lists, with its tokens revoked.
    """

    id: SandboxId
    session_id: SessionId
    endpoint: str
    """``unix:/path/to.sock`` or ``http://host:port``: where the runtime listens."""
    resumed: bool
    """Whether the runtime found the session's transcript and resumed it."""

    _ending: asyncio.Task[ExitInfo] | None = None
    """Decides the sandbox's end (:meth:`_decide_end`); started by the first wait or SIGKILL."""
    _sigkilled: asyncio.Event | None = None
    _kill_reason: str | None = None

    @property
    def state(self) -> SandboxState:
        """Where the sandbox is in its lifecycle."""
        ending = self._ending
        decided = (
            ending is not None
            and ending.done()
            and not ending.cancelled()
            and ending.exception() is None  # a provider's watch that failed is no exit
        )
        return SandboxState.EXITED if decided or self._has_exited() else SandboxState.RUNNING

    async def wait(self) -> ExitInfo:
        """Wait until the sandbox has exited: as its provider reports it or, when the
        provider has not :data:`LOST_EXIT_S` after a SIGKILL, ``ExitInfo(137, reason)``
        (the kill's reason, else ``killed``). Every waiter gets the same answer."""
        return await asyncio.shield(self._end())

    async def kill(self, sig: int = signal.SIGKILL, reason: str | None = None) -> None:
        """Send ``sig`` to everything in the sandbox; ``reason`` is what :meth:`wait`
        reports (the first one given). After a SIGKILL the provider has
        :data:`LOST_EXIT_S` to report the exit."""
        if reason is not None and self._kill_reason is None:
            self._kill_reason = reason
        await self._send_signal(sig, reason)
        if sig == signal.SIGKILL:  # sent: else _send_signal raised, and nothing is decided
            if self._sigkilled is None:
                self._sigkilled = asyncio.Event()
            self._sigkilled.set()
            self._end()  # the bound runs, waited for or not

    def _end(self) -> asyncio.Task[ExitInfo]:
        """The task deciding the sandbox's end (made once; again if it was cancelled). Its
        error, a provider's watch that failed, is read here as well as by any waiter."""
        if self._ending is None or self._ending.cancelled():
            self._ending = asyncio.create_task(self._decide_end(), name=f"end-{self.id}")
            self._ending.add_done_callback(_read_error)
        return self._ending

    async def _decide_end(self) -> ExitInfo:
        """The provider's report of the exit, or, once it is :data:`LOST_EXIT_S` late
        after a SIGKILL, 137 (logged, and the provider told by :meth:`_exit_lost`)."""
        if self._sigkilled is None:
            self._sigkilled = asyncio.Event()
        reported = asyncio.ensure_future(self._reported_exit())
        killed = asyncio.ensure_future(self._sigkilled.wait())
        try:
            await asyncio.wait([reported, killed], return_when=asyncio.FIRST_COMPLETED)
            if not reported.done():
                await asyncio.wait([reported], timeout=LOST_EXIT_S)
            if reported.done():
                return reported.result()
        finally:
            reported.cancel()
            killed.cancel()
        lost = ExitInfo(128 + signal.SIGKILL, self._kill_reason or "killed")
        log.error(
            "sandbox %s (session %s): its exit was never reported %.0f s after a SIGKILL; "
            "taking it as gone (exit %d, %s)",
            self.id,
            self.session_id,
            LOST_EXIT_S,
            lost.exit_code,
            lost.reason,
        )
        try:  # the provider drops what it holds (a container) before anyone starts anew
            await asyncio.wait_for(self._exit_lost(lost), LOST_CLEANUP_S)
        except Exception as exc:
            log.error("sandbox %s: dropping it after its lost exit failed: %r", self.id, exc)
        return lost

    @abstractmethod
    async def _send_signal(self, sig: int, reason: str | None) -> None:
        """Send ``sig`` to everything in the sandbox (the provider's part of :meth:`kill`);
        raise :class:`~kit.host.errors.SandboxError` when it could not be sent."""

    @abstractmethod
    async def _reported_exit(self) -> ExitInfo:
        """Until the provider has seen the sandbox exit (the provider's part of
        :meth:`wait`). Cancelling it must not stop the provider watching (shield it)."""

    @abstractmethod
    def _has_exited(self) -> bool:
        """Whether the provider has seen the sandbox exit."""

    async def _exit_lost(self, info: ExitInfo) -> None:  # noqa: B027 - optional hook
        """:meth:`wait` gave up on the provider's report and is about to return ``info``:
        drop what is held of the sandbox (Docker removes the container), within
        :data:`LOST_CLEANUP_S`; from now on the provider must not take it for running."""

    async def usage(self) -> Usage | None:
        """What the sandbox has used so far (``None`` where the provider cannot measure)."""
        return None

    async def stop(self, grace_s: float = 5.0, reason: str = "stopped") -> ExitInfo:
        """SIGTERM, then SIGKILL after ``grace_s`` seconds; wait for the exit (at most
        :data:`LOST_EXIT_S` after the SIGKILL: :meth:`wait`)."""
        await self.kill(signal.SIGTERM, reason=reason)
        try:
            return await asyncio.wait_for(self.wait(), grace_s)
        except TimeoutError:
            await self.kill(signal.SIGKILL, reason=reason)
            return await self.wait()


class Rehearsable(ABC):
    """A sandbox kit can push into a failure now (``kit sandbox oom``), to rehearse what
    production sandboxes only meet. Not part of the provider seam: the host never calls it;
    the control API offers it where a sandbox has it (the emulator's, and Fly machines)."""

    @abstractmethod
    async def oom(self) -> None:
        """Push the sandbox past its memory limit now, to rehearse an OOM kill (exit 137,
        reason ``oom``). :class:`~kit.host.errors.SandboxError` where it has no limit."""


class SandboxProvider(ABC):
    """Starts sandboxes, and finds the ones still running."""

    @abstractmethod
    async def start(self, spec: SandboxSpec) -> Sandbox:
        """Start a runtime for ``spec`` and return once it is ready for turns."""

    @abstractmethod
    async def find(self, session_id: SessionId) -> Sandbox | None:
        """The session's sandbox if one still runs: this host's, or one a host that died
        left behind (which a new host must stop before it starts another: never two
        sandboxes on one transcript)."""

    @abstractmethod
    async def reap(self, keep: Callable[[SessionId], bool]) -> list[SandboxId]:
        """Stop every sandbox this provider can see whose session ``keep`` rejects (left
        behind by a host that died); return their ids."""

    async def discard(self, session_id: str) -> None:  # noqa: B027 - optional hook
        """Delete what was kept for ``session_id`` (its workspace), whose sandbox has
        stopped and which no session ever used (a pooled sandbox no session took)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release provider resources (running sandboxes are stopped by their owner)."""
