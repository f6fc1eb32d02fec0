"""Settings of ``kit dev`` and friends, read once at the edge into a frozen object.

=====================  ==========================  =====================================
setting                flag / environment          default
=====================  ==========================  =====================================
project                ``--project DIR``           the folder with kit.toml in or above
                                                   the current one, else the bundled
                                                   ``skills/support-bot`` example
host                   ``--host``                  ``127.0.0.1``
port                   ``--port``, else            ``8787``; without ``--port`` a busy one
                       ``KIT_PORT``                is passed over for the next free one
                                                   above it (said in one line); a busy
                                                   ``--port`` is an error; ``0`` picks any
                                                   free port
smtp port              ``KIT_SMTP_PORT``           ``2525`` or the next free one above it
                                                   (kit dev's SMTP server for mail to the
                                                   agent, loopback only; ``0``: any)
state dir              ``KIT_STATE_DIR``           ``<project>/.kit``; made private (0700,
                                                   :mod:`kit.cli.statedir`); a shared
                                                   folder (sticky, like /tmp) is refused
model                  ``ANTHROPIC_API_KEY``       unset → the offline model (emulator);
                                                   set → the real Messages API
upstream               ``KIT_MODEL_UPSTREAM``      ``https://api.anthropic.com``
sandbox user           ``KIT_SANDBOX_USER``        ``nobody`` when run as root
sandboxes              ``KIT_SANDBOX``, ``--sandbox`` ``local``: process groups from the fork
                                                   server; ``docker``: containers of the
                                                   runtime image (built when missing)
sandbox isolation      ``KIT_SANDBOX_ISOLATION``   ``auto``: namespaces from the fork
                                                   server as root, else bubblewrap, else
                                                   none (said once); ``bwrap``: always
                                                   bubblewrap; ``off``: none
transcript store       ``KIT_STORE_URL``           a SQLite file per session in the state
                                                   dir; ``s3://…`` (one store for all
                                                   sessions) also hands kit dev's
                                                   ``AWS_*`` credentials to sandboxes
event log              ``KIT_LOG_URL``             the emulator's Durable Objects (a SQLite
                                                   file per session object in the state
                                                   dir); ``s3://…`` keeps logs in S3 with
                                                   a lease per session, so several hosts
                                                   can share one bucket (the Fly gateway)
durability             ``KIT_DURABILITY``          ``os`` for kit dev: an event log's commit
                                                   is in the OS before any client sees it
                                                   (survives kit dying, not the machine);
                                                   ``fsync`` (kit gateway's default): on
                                                   the disk (an fsync of its ``-wal``,
                                                   grouped, off the event loop;
                                                   :mod:`kit.durability`)
host id                ``KIT_HOST_ID``             the lease owner; default a random id
                                                   kept in the state dir (one host per
                                                   state dir, so unique; kept on restart)
lease ttl              ``KIT_LEASE_TTL_S``         15 (seconds): how soon another host may
                                                   take over a dead host's sessions
sandbox pool           ``KIT_SANDBOX_POOL``        2: sandboxes started ahead of new
                                                   sessions, so a first turn need not wait
                                                   for one (0 to 64; 0: start on the first
                                                   message)
sandbox grace          ``KIT_SANDBOX_GRACE_S``     30 (seconds): how long a session's
                                                   sandbox outlives its last client when no
                                                   turn is open (``idle_timeout`` in
                                                   kit.toml still bounds a quiet sandbox
                                                   whose client stays)
allowed origins        ``KIT_ALLOWED_ORIGINS``     none: browser pages may open session
                                                   sockets only from the host's own origin;
                                                   a comma-separated list of
                                                   ``scheme://host[:port]`` adds others
peer connections       ``KIT_PEER_CONNECTIONS``    64: connections one address may hold
                                                   open before they authenticate (a
                                                   ``hello`` accepted, a Bearer token
                                                   checked); one more is answered 429.
                                                   Every local client is 127.0.0.1
                                                   (1 to 65536; kit.host.edge)
watch                  ``--no-watch``              on: a saved change to kit.toml, the
                                                   prompt, skills or scenarios rebuilds the
                                                   bundle for new sandboxes
=====================  ==========================  =====================================

Flags win over the environment; nothing below ``kit.cli`` reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.bundle import CONFIG_FILE
from kit.cli.errors import CliError
from kit.durability import Durability, parse_durability
from kit.host.auth import normalise_origin
from kit.host.edge import UNAUTHENTICATED_PER_PEER, EdgeLimits
from kit.host.errors import HostError
from kit.host.gateway import GatewayConfig, store_urls
from kit.host.launch import GRACE_S
from kit.host.lease import DEFAULT_TTL_S
from kit.host.pool import MAX_POOL_SIZE, POOL_SIZE
from kit.protocol.runtime_config import STORE_DEADLINE_S, STORE_RETRY_S
from kit.storage.errors import StoreError
from kit.storage.s3io import endpoint_of
from kit.storage.sqliteurl import check_sqlite_url

ANTHROPIC_API = "https://api.anthropic.com"
DEFAULT_PORT = 8787
EXAMPLE_PROJECT = Path(__file__).resolve().parents[2] / "skills" / "support-bot"
ISOLATION_MODES = ("auto", "bwrap", "off")
SANDBOX_KINDS = ("local", "docker")
MAX_GRACE_S = 3600.0
MAX_PEER_CONNECTIONS = 65536
AWS_VARIABLES = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION"}
)
"""What an s3:// transcript store needs in the sandbox besides its URL."""


class SettingsError(CliError):
    """An environment variable of ``kit dev`` is wrong; the message names it and the fix."""


@dataclass(frozen=True)
class DevSettings:
    """Everything ``kit dev`` needs, resolved."""

    project_dir: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    port_fallback: bool = False
    """Take the next free port above ``port`` if it is busy (no ``--port`` was given)."""
    smtp_port: int | None = None
    """The local SMTP server's port (``KIT_SMTP_PORT``; None: 2525 or the next free one)."""
    api_key: str | None = None
    upstream_url: str = ANTHROPIC_API
    force_offline_model: bool = False
    """Use the offline model even with an API key (tests of the key-swapping proxy)."""
    sandbox_user: str | None = "nobody"
    sandbox: str = "local"
    """The sandbox provider: ``local`` (process groups from the fork server) or ``docker``
    (containers of kit's runtime image, built when missing)."""
    sandbox_isolation: str = "auto"
    """``auto``, ``bwrap`` or ``off`` (emulator.sandbox.isolation)."""
    store_url: str | None = None
    """One transcript store for every session (any ``open_store`` URL); None: a SQLite
    file per session under the state dir."""
    sandbox_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for sandbox runtimes (the credentials of an s3:// store)."""
    log_url: str | None = None
    """Where event logs live: None → a SQLite file per session in the state dir; an
    ``s3://BUCKET/PREFIX?endpoint_url=…`` URL → S3, one lease per session."""
    host_id: str | None = None
    """This host's name as a lease owner; None: the id kept in the state dir."""
    lease_ttl_s: float = DEFAULT_TTL_S
    """How long a lease lasts without renewal."""
    store_retry_s: float = STORE_RETRY_S
    """Runtime ``store_retry_s`` (kit.protocol.runtime_config); tests shorten it."""
    store_deadline_s: float = STORE_DEADLINE_S
    """Runtime ``store_deadline_s`` (kit.protocol.runtime_config); tests shorten it."""
    pool_size: int = POOL_SIZE
    """Sandboxes kept started ahead of new sessions (0: none)."""
    grace_s: float = GRACE_S
    """How long a sandbox with no open turn outlives its session's last client."""
    watch: bool = True
    """Rebuild the bundle when the project changes (``kit dev`` only)."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins besides the host's own that may open session sockets."""
    edge: EdgeLimits = field(default_factory=EdgeLimits)
    """The host's HTTP edge: head limits and timeout, unauthenticated connections per peer."""
    durability: Durability = Durability.OS
    """When a local event log's commit counts: in the OS (kit dev's default) or after an
    fsync (kit gateway's)."""

    @property
    def offline(self) -> bool:
        """Whether the emulator's offline model answers."""
        return self.force_offline_model or not self.api_key

    @property
    def store_endpoints(self) -> list[str]:
        """What the egress proxy must let through besides the agent's own ``egress``: an
        ``s3://`` transcript store's endpoint (the runtime writes it itself)."""
        return [endpoint_of(self.store_url)] if self.store_url else []

    def gateway_config(
        self,
        egress: Sequence[str],
        *,
        api_token: str,
        upstream: tuple[str, str],
        leased: bool,
        **where: Any,
    ) -> GatewayConfig:
        """The gateway's config from these settings, for ``kit dev`` and ``kit gateway``:
        the agent's ``egress``, the API token, the model ``upstream`` (URL, key), whether
        session logs are held under leases, and ``where`` it listens (``host``, ``port``,
        ``proxy_dir``, ``proxy_host``, ``proxy_public_host``)."""
        return GatewayConfig(
            api_token=api_token,
            upstream_url=upstream[0],
            upstream_key=upstream[1],
            store_url=store_urls(self.store_url, self.state_dir / "transcripts", self.durability),
            egress_allow=(*egress, *self.store_endpoints),
            grace_s=self.grace_s,
            pool_size=self.pool_size,
            lease_ttl_s=self.lease_ttl_s if leased else None,
            edge=self.edge,
            allowed_origins=self.allowed_origins,
            **where,
        )


def find_project(start: Path) -> Path:
    """The nearest folder at or above ``start`` with a kit.toml, else the bundled example."""
    for folder in (start, *start.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    return EXAMPLE_PROJECT


def dev_settings(
    *,
    project: Path | None,
    host: str | None,
    port: int | None,
    environ: Mapping[str, str] = os.environ,
    cwd: Path | None = None,
    durability: Durability = Durability.OS,
) -> DevSettings:
    """Resolve flags and environment into :class:`DevSettings` (``durability``: the default
    when ``KIT_DURABILITY`` is unset)."""
    project_dir = (project or find_project(cwd or Path.cwd())).resolve()
    state = environ.get("KIT_STATE_DIR")
    store_url = environ.get("KIT_STORE_URL") or None
    log_url = environ.get("KIT_LOG_URL") or None
    lease_ttl_s = _number(environ, "KIT_LEASE_TTL_S", DEFAULT_TTL_S, 1, 3600, "seconds")
    pool_size = int(
        _number(environ, "KIT_SANDBOX_POOL", POOL_SIZE, 0, MAX_POOL_SIZE, "sandboxes", whole=True)
    )
    grace_s = _number(environ, "KIT_SANDBOX_GRACE_S", GRACE_S, 1, MAX_GRACE_S, "seconds")
    per_peer = int(
        _number(
            environ,
            "KIT_PEER_CONNECTIONS",
            UNAUTHENTICATED_PER_PEER,
            1,
            MAX_PEER_CONNECTIONS,
            "connections",
            whole=True,
        )
    )
    if log_url and not log_url.startswith("s3://"):
        raise SettingsError(
            f"KIT_LOG_URL={log_url!r}: give s3://BUCKET/PREFIX?endpoint_url=…, or unset it "
            "for a SQLite log per session in the state dir."
        )
    sandbox = environ.get("KIT_SANDBOX") or "local"
    if sandbox not in SANDBOX_KINDS:
        raise SettingsError(
            f"KIT_SANDBOX={sandbox!r}: give local (process groups on this machine) or docker "
            "(containers of kit's runtime image; scripts/docker-up starts Docker)."
        )
    if store_url and store_url.startswith("sqlite:"):
        try:  # each sandbox would refuse it at its start, after its folder was made
            check_sqlite_url(store_url)
        except StoreError as exc:
            raise SettingsError(f"KIT_STORE_URL: {exc}") from None
    if sandbox == "docker" and store_url and store_url.startswith("s3:"):
        raise SettingsError(
            f"KIT_STORE_URL={store_url.split('?')[0]!r} with --sandbox docker: containers "
            "reach no network, so not that store. Unset KIT_STORE_URL (a SQLite store per "
            "session in the state dir), or run sandboxes as local processes (--sandbox local)."
        )
    isolation = environ.get("KIT_SANDBOX_ISOLATION") or "auto"
    if isolation not in ISOLATION_MODES:
        raise SettingsError(
            f"KIT_SANDBOX_ISOLATION={isolation!r}: give one of {', '.join(ISOLATION_MODES)} "
            "(auto: namespaces as root, else bubblewrap; off: sandboxes see the whole machine)."
        )
    if port is None:
        try:
            port = int(environ.get("KIT_PORT") or DEFAULT_PORT)
        except ValueError:
            raise SettingsError(
                f"KIT_PORT={environ['KIT_PORT']!r}: give a port number, e.g. 8787."
            ) from None
        if not 0 <= port <= 65535:
            raise SettingsError(f"KIT_PORT={port}: give a port from 0 to 65535.")
        fallback = True
    else:
        if not 0 <= port <= 65535:
            raise SettingsError(f"--port {port}: give a port from 0 to 65535 (0: any free one).")
        fallback = False
    smtp_port: int | None = None
    if environ.get("KIT_SMTP_PORT"):
        smtp_port = int(
            _number(
                environ, "KIT_SMTP_PORT", 2525, 0, 65535, "as a port (0: any free port)", whole=True
            )
        )
    try:
        durability = parse_durability(environ.get("KIT_DURABILITY"), durability)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    aws = {k: v for k, v in environ.items() if k in AWS_VARIABLES}
    origins = _origins(environ.get("KIT_ALLOWED_ORIGINS") or "")
    return DevSettings(
        project_dir=project_dir,
        state_dir=Path(state).resolve() if state else project_dir / ".kit",
        host=host or "127.0.0.1",
        port=port,
        port_fallback=fallback,
        smtp_port=smtp_port,
        api_key=environ.get("ANTHROPIC_API_KEY") or None,
        upstream_url=environ.get("KIT_MODEL_UPSTREAM") or ANTHROPIC_API,
        sandbox_user=environ.get("KIT_SANDBOX_USER", "nobody") or None,
        sandbox=sandbox,
        sandbox_isolation=isolation,
        store_url=store_url,
        sandbox_env=aws if store_url and store_url.startswith("s3:") else {},
        log_url=log_url,
        host_id=environ.get("KIT_HOST_ID") or None,
        lease_ttl_s=lease_ttl_s,
        pool_size=pool_size,
        grace_s=grace_s,
        allowed_origins=origins,
        durability=durability,
        edge=EdgeLimits(unauthenticated_per_peer=per_peer),
    )


def _origins(value: str) -> tuple[str, ...]:
    """``KIT_ALLOWED_ORIGINS``: comma-separated ``scheme://host[:port]`` origins."""
    origins = []
    for item in value.split(","):
        if not item.strip():
            continue
        try:
            origins.append(normalise_origin(item))
        except HostError as exc:
            raise SettingsError(
                f"KIT_ALLOWED_ORIGINS: {exc}; list origins like "
                "https://app.example.com,http://localhost:3000 (no paths)."
            ) from None
    return tuple(origins)


def _number(
    environ: Mapping[str, str],
    name: str,
    default: float,
    low: float,
    high: float,
    unit: str,
    *,
    whole: bool = False,
) -> float:
    """A number (``whole``: an integer) of ``unit`` from ``environ[name]`` within
    ``low..high``, else a :class:`SettingsError` naming the variable and the fix."""
    raw = environ.get(name) or ""
    example = f"{default:g}"
    try:
        value = (int(raw) if whole else float(raw)) if raw else default
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise SettingsError(f"{name}={raw!r}: give {kind} of {unit}, e.g. {example}.") from None
    if not low <= value <= high:  # NaN fails this too
        raise SettingsError(f"{name}={raw}: give {low:g} to {high:g} {unit}.")
    return value
