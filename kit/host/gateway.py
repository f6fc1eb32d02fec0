"""A whole session host as a library: proxies, host, pool, app and its HTTP server.

:func:`open_gateway` opens one from a frozen :class:`GatewayConfig` and the parts that
differ between places it runs: a :class:`~kit.host.SandboxProvider`, a
:class:`~kit.host.LogStore` and a release source. ``kit dev`` (kit/cli/stack.py) hands it
the emulator's parts; ``kit gateway`` (kit/cli/gateway.py) the ones its environment names;
``bench/kit_host.py`` synthetic sandboxes. It never reads ``os.environ``.

=======================  =======================  =========================================
field                    ``kit gateway`` setting  default
=======================  =======================  =========================================
``api_token``            ``KIT_API_TOKEN``,       required: the Bearer token of every HTTP
                         ``KIT_API_TOKEN_FILE``   route but ``/healthz``
``host``, ``port``       ``KIT_LISTEN``           ``127.0.0.1``, ``0`` (any free port);
                                                  ignored when a bound socket is given
``upstream_url``         ``KIT_UPSTREAM_URL``     ``https://api.anthropic.com``: where the
                                                  model proxy sends sandboxes' calls
``upstream_key``         ``ANTHROPIC_API_KEY``    required: the key the model proxy puts on
                                                  them (sandboxes never see it)
``proxy_dir``            ``KIT_PROXY_LISTEN``     None; a folder: the model and egress
                         (a path)                 proxies listen on ``model.sock`` and
                                                  ``egress.sock`` in it (mode 0666: the
                                                  per-session token authenticates)
``proxy_host``           ``KIT_PROXY_LISTEN``     ``127.0.0.1``: without ``proxy_dir`` both
                         (a host)                 proxies listen on TCP here, each on a free
                                                  port, sandboxes reach them at
                                                  ``http://HOST:PORT`` with their token
``proxy_public_host``    ``KIT_PROXY_HOST``       None: ``proxy_host``; the name sandboxes
                                                  on other machines use for the proxies
``store_url``            ``KIT_STORE_URL``        required: a session id → its transcript
                                                  store URL
``egress_allow``         bundle ``[sandbox]``     ``()``: hosts sandboxes may reach
                         ``egress``               through the egress proxy
``grace_s``              ``KIT_SANDBOX_GRACE_S``  30 s (:data:`kit.host.launch.GRACE_S`)
``pool_size``            ``KIT_SANDBOX_POOL``     0: sandboxes started ahead of sessions
``lease_ttl_s``          ``KIT_LEASE_TTL_S``      None: no sweeper; a number: every that
                         (with ``KIT_LOG_URL``)   many seconds, recover sessions whose
                                                  host's lease ran out (shared S3 logs)
``edge``                 ``KIT_PEER_CONNECTIONS`` :class:`~kit.host.edge.EdgeLimits`
``allowed_origins``      ``KIT_ALLOWED_ORIGINS``  ``()``: browser pages only from the
                                                  host's own origin (on a loopback address,
                                                  its loopback names)
``graceful_s``           none                     5 s: how long the HTTP server waits for
                                                  requests in flight when it stops
``web``                  bundle ``[web]``         None: no chat page. ``kit dev`` serves it
                         ``session_url``          with local sessions (:mod:`kit.host.web`),
                                                  ``kit gateway`` with the bundle's session
                                                  URL (on Fly: the current bundle's)
``proxied_at``           ``KIT_LOCAL_PAGE_``      None; a loopback origin a local proxy
                         ``ORIGIN`` (Fly mode)    serves the host at (``kit dev --target
                                                  fly``): pages from it are of the host's
                                                  own origin. Needs a loopback ``host``
``reap_at_start``        none                     True: before recovery, stop every sandbox
                                                  the provider still runs (a host that died
                                                  left it); off where gateways share one
=======================  =======================  =========================================

Shutdown (leaving the ``async with``): the sweeper stops, every session socket closes with
1001 (clients resume elsewhere), sessions and their sandboxes stop, the server stops, the
proxies close, and the provider is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette

from kit.durability import DEFAULT, Durability
from kit.host.app import WS_MAX_BYTES, create_app
from kit.host.auth import OriginPolicy, is_loopback_name, loopback_hosts, normalise_origin
from kit.host.edge import EdgeConfig, EdgeLimits
from kit.host.egress import EgressProxy
from kit.host.errors import HostError
from kit.host.eventlog import LogStore
from kit.host.files import SessionFiles
from kit.host.host import SessionHost
from kit.host.launch import GRACE_S, Release, SessionEnv
from kit.host.pool import SandboxPool
from kit.host.proxy import ModelProxy
from kit.host.sandbox import SandboxProvider
from kit.host.store_routes import store_routes
from kit.host.tokens import SessionTokens
from kit.host.web import WebConfig
from kit.ids import SessionId
from kit.storage import open_store
from kit.storage.sqliteurl import sqlite_url

__all__ = [
    "Gateway",
    "GatewayConfig",
    "Server",
    "open_gateway",
    "serve",
    "store_urls",
    "tcp_socket",
    "url_of",
]

ANTHROPIC_API = "https://api.anthropic.com"
GRACEFUL_S = 5.0

log = logging.getLogger("kit.host")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway needs besides its injected parts (see the module docstring)."""

    api_token: str
    upstream_key: str
    store_url: Callable[[str], str]
    host: str = "127.0.0.1"
    port: int = 0
    upstream_url: str = ANTHROPIC_API
    proxy_dir: Path | None = None
    proxy_host: str = "127.0.0.1"
    proxy_public_host: str | None = None
    egress_allow: tuple[str, ...] = ()
    grace_s: float = GRACE_S
    pool_size: int = 0
    lease_ttl_s: float | None = None
    edge: EdgeLimits = field(default_factory=EdgeLimits)
    allowed_origins: tuple[str, ...] = ()
    graceful_s: float = GRACEFUL_S
    reap_at_start: bool = True
    replay_to_owner: bool = False
    """Behind Fly's proxy: a session socket for a session another live gateway holds is
    answered with ``fly-replay: instance=<owner>`` (the owner is its host id, the Fly
    machine id) instead of being accepted."""
    web: WebConfig | None = None
    """The chat page at ``/`` (:mod:`kit.host.web`); None: no page. ``kit dev`` serves it
    with local sessions (``POST /web/session``); ``kit gateway`` with the session URL of
    its bundle's ``[web] session_url`` (the Fly gateway: of the deployed bundle, followed
    as the deploy pointer changes), and local sessions only in ``kit dev --target fly``'s
    rehearsal (with ``proxied_at``)."""
    proxied_at: str | None = None
    """A loopback origin (``http://127.0.0.1:PORT``) where a local proxy serves this host,
    as ``kit dev --target fly``'s emulated Fly proxy does: a page loaded from it is of the
    host's own origin (it may open session sockets and, with local sessions, get
    sessions), besides the loopback names of the address the host listens on. Only for a
    host listening on a loopback address (:class:`HostError` otherwise)."""
    public_paths: tuple[str, ...] = ()
    """HTTP paths answered without the API token: routes ``mount`` adds that authenticate
    on their own (the Fly gateway's signed mail webhooks, :mod:`kit.mail.webhook`)."""
    served_store: str | None = None
    """The host's own transcript store (a URL ``open_store`` takes, e.g. ``s3://…``) served
    to sandboxes over HTTP (``kit+http://``, :mod:`kit.host.store_routes`) in place of
    ``store_url``: sandboxes then hold no storage keys. Needs TCP proxies."""


@dataclass
class Gateway:
    """A running gateway: its URL and its parts (for the caller's routes and reloads)."""

    url: str
    """``http://host:port`` the API is served at."""
    config: GatewayConfig
    host: SessionHost
    app: Starlette
    proxy: ModelProxy
    egress: EgressProxy
    env: SessionEnv
    pool: SandboxPool | None
    sock: socket.socket


class Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the gateway's owner handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def tcp_socket(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket (``TCP_NODELAY`` on what it accepts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this: without it, small frames sent back to back wait
        # ~40 ms for the client's delayed ACK (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def serve(
    app: Any, sock: socket.socket, limits: EdgeLimits, **config: Any
) -> tuple[Server, asyncio.Task[None]]:
    """Serve an ASGI app on ``sock`` behind kit's edge (no lifespan); stop it with
    ``server.should_exit = True`` and await the task."""
    server = Server(EdgeConfig(app, limits=limits, log_level="warning", lifespan="off", **config))
    return server, asyncio.create_task(server.serve(sockets=[sock]))


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound TCP socket (IPv6 addresses in brackets)."""
    address, port = sock.getsockname()[:2]
    return f"http://{_bracket(address)}:{port}"


def store_urls(
    shared: str | None, folder: Path, durability: Durability = DEFAULT
) -> Callable[[str], str]:
    """A session's transcript store URL: ``shared`` for every session, else its own SQLite
    file under ``folder`` (``folder/<session id>/transcript.sqlite``), as durable as
    ``durability`` (that of the event logs: a turn's ``result`` must not outlast its
    transcript). The path is percent-encoded, so a folder of any name reads back as itself
    (:mod:`kit.storage.sqliteurl`)."""
    if shared:
        return lambda sid: shared
    return lambda sid: sqlite_url(folder.absolute() / sid / "transcript.sqlite", durability)


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _origin_policy(
    allowed: Sequence[str], sock: socket.socket, proxied_at: str | None = None
) -> OriginPolicy:
    """Browser pages may open session sockets from the host's own origin and ``allowed``.
    On a loopback address the own origin is one of its loopback names (and those of the
    loopback origin ``proxied_at`` a local proxy serves it at), not whatever ``Host`` a
    page sends (a DNS-rebinding page names its own host)."""
    address, port = sock.getsockname()[:2]
    if not ipaddress.ip_address(address).is_loopback:
        if proxied_at is not None:
            raise HostError(
                f"The host is proxied at {proxied_at} but listens on {address}: only a host "
                "on a loopback address is served by a local proxy; listen on 127.0.0.1."
            )
        return OriginPolicy(allowed, own=None)
    own = loopback_hosts(address, port)
    if proxied_at is not None:
        front = urlsplit(normalise_origin(proxied_at))
        if front.scheme != "http" or front.port is None or not is_loopback_name(front.hostname):
            raise HostError(
                f"proxied_at {proxied_at!r} is not a loopback origin like http://127.0.0.1:8080."
            )
        own += loopback_hosts(front.hostname or "", front.port)
    return OriginPolicy(allowed, own=own)


async def _serve_proxies(
    config: GatewayConfig, proxy: ModelProxy, egress: EgressProxy
) -> tuple[str, str]:
    """Start both proxies where ``config`` says; their endpoint URLs as sandboxes reach them."""
    if config.proxy_dir is not None:
        urls = []
        for name, serve_unix in (("model", proxy.serve_unix), ("egress", egress.serve_unix)):
            path = config.proxy_dir / f"{name}.sock"
            path.unlink(missing_ok=True)
            await serve_unix(path)
            # Sandboxes run as another user; the per-session token is what authenticates them.
            path.chmod(0o666)
            urls.append(f"unix:{path}")
        return urls[0], urls[1]
    public = _bracket(config.proxy_public_host or config.proxy_host)
    ports = []
    for serve_tcp in (proxy.serve_tcp, egress.serve_tcp):
        server = await serve_tcp(config.proxy_host, 0)
        ports.append(server.sockets[0].getsockname()[1])
    return f"http://{public}:{ports[0]}", f"http://{public}:{ports[1]}"


STORE_PATH = "/_kit/store"


def _serve_store(
    config: GatewayConfig, tokens: SessionTokens
) -> tuple[socket.socket, str, tuple[Server, asyncio.Task[None]]]:
    """Serve ``config.served_store`` to sandboxes, each with a store token of ``tokens``, on
    a free TCP port of the proxy host; the socket, the ``kit+http://`` URL sandboxes use,
    and the server."""
    if config.proxy_dir is not None or config.served_store is None:
        raise HostError("A served transcript store needs TCP proxies (no proxy_dir).")
    backing = open_store(config.served_store)
    app = Starlette(routes=store_routes(STORE_PATH, backing, tokens.session_for))
    sock = tcp_socket(config.proxy_host, 0)
    port = sock.getsockname()[1]
    public = _bracket(config.proxy_public_host or config.proxy_host)
    server = serve(app, sock, config.edge, timeout_graceful_shutdown=config.graceful_s)
    return sock, f"kit+http://{public}:{port}{STORE_PATH}", server


@contextlib.asynccontextmanager
async def open_gateway(
    config: GatewayConfig,
    provider: SandboxProvider,
    logs: LogStore,
    release: Callable[[], Release],
    *,
    sock: socket.socket | None = None,
    advise: Callable[[SessionId, str], None] | None = None,
    discard: Callable[[str], Awaitable[None]] | None = None,
    orphans: Callable[[set[SessionId]], Awaitable[None]] | None = None,
    mount: Callable[[Gateway], None] | None = None,
    files: SessionFiles | None = None,
) -> AsyncIterator[Gateway]:
    """Open a whole session host; yields it serving; stops it in order on exit.

    ``sock``: a listening socket to serve on (default: one on ``config.host:port``; the
    gateway closes either). ``release``: the current release (a caller that swaps it calls
    ``gateway.host.refresh()``). ``advise``: where tier advisor lines go. ``discard``:
    deletes what was made for a pooled sandbox no session took; ``orphans``: called once
    after recovery with every session id in the log store, before the pool starts (to
    delete a killed host's leftovers). ``mount``: adds routes to ``gateway.app`` before it
    serves. ``files``: where sessions' files are kept (``PUT /v1/sessions/{id}/files/…``;
    None: that route answers 404). ``provider`` is closed on exit; ``logs`` is the caller's
    to close.
    """
    sock = sock if sock is not None else tcp_socket(config.host, config.port)
    proxy = ModelProxy(config.upstream_url, config.upstream_key)
    egress = EgressProxy(config.egress_allow)
    servers: list[tuple[Server, asyncio.Task[None]]] = []
    sweeper: asyncio.Task[None] | None = None
    host: SessionHost | None = None
    app: Starlette | None = None
    store_sock: socket.socket | None = None
    try:
        model_url, egress_url = await _serve_proxies(config, proxy, egress)
        store_url = config.store_url
        store_tokens: SessionTokens | None = None
        if config.served_store is not None:
            store_tokens = SessionTokens("kit-store-")
            store_sock, served_url, store_server = _serve_store(config, store_tokens)
            servers.append(store_server)
            store_url = lambda _session: served_url  # noqa: E731 - one URL for every session
        env = SessionEnv(
            provider=provider,
            issue_model_token=proxy.issue,
            revoke_model_token=proxy.revoke,
            model_endpoint=model_url,
            store_url=store_url,
            release=release,
            grace_s=config.grace_s,
            advise=advise,
            issue_egress_token=egress.issue,
            revoke_egress_token=egress.revoke,
            issue_store_token=store_tokens.issue if store_tokens else None,
            revoke_store_token=store_tokens.revoke if store_tokens else None,
            egress_endpoint=egress_url,
            spend=proxy.meter,
            files=files,
        )
        pool = SandboxPool(env, config.pool_size, discard=discard) if config.pool_size else None
        host = SessionHost(logs, env, pool)
        app = create_app(
            host,
            api_token=config.api_token,
            origins=_origin_policy(config.allowed_origins, sock, config.proxied_at),
            replay_to_owner=config.replay_to_owner,
            web=config.web,
            extra_public=config.public_paths,
        )
        gateway = Gateway(url_of(sock), config, host, app, proxy, egress, env, pool, sock)
        if mount is not None:
            mount(gateway)
        servers.append(
            serve(
                app,
                sock,
                config.edge,
                ws_max_size=WS_MAX_BYTES,
                timeout_graceful_shutdown=config.graceful_s,
            )
        )
        if config.reap_at_start:
            # Never two sandboxes on one transcript: what a dead host left goes before
            # recovery starts the sessions' new ones.
            reaped = await provider.reap(lambda session_id: False)
            if reaped:
                log.warning("stopped %d sandbox(es) a previous host left running", len(reaped))
        # Connections made before recovery ends wait in the listen backlog or on sessions.
        await host.recover()
        if orphans is not None:
            await orphans(set(await host.session_ids()))
        if pool is not None:
            pool.start()
        if config.lease_ttl_s is not None:
            sweeper = asyncio.create_task(host.sweep(config.lease_ttl_s), name="sweep")
        yield gateway
    finally:
        if sweeper is not None:
            sweeper.cancel()
        if app is not None:
            app.state.close_all_connections()
        if host is not None:
            await host.close()
        for server, _ in servers:
            server.should_exit = True
        await asyncio.gather(*(task for _, task in servers), return_exceptions=True)
        sock.close()
        if store_sock is not None:
            store_sock.close()
        await proxy.aclose()
        await egress.aclose()
        await provider.close()
