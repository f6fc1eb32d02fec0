"""The local stack behind ``kit dev``: emulator model, model proxy, session host, sandboxes.

This is the one place that wires the emulator into kit's seams (ARCHITECTURE §6).
``kit dev``, ``kit test``, the end-to-end tests and the benchmarks all run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from starlette.applications import Starlette

from emulator.durable_objects import DOLogStore, create_control_app
from emulator.model import ScenarioSource
from emulator.model import create_app as create_model_app
from emulator.model.app import RequestLog
from emulator.sandbox import LocalSandboxProvider
from emulator.sandbox.machine import MachineProvider
from kit.bundle import Bundle, Project, build_bundle, load_project
from kit.cli import console, statedir
from kit.cli.control import Evict, control_routes
from kit.cli.sandboxes import open_provider
from kit.cli.settings import DevSettings
from kit.errors import KitError
from kit.host import EgressProxy, LogStore, ModelProxy, Release, Session, SessionHost
from kit.host.files import files_for
from kit.host.gateway import (
    Gateway,
    open_gateway,
    serve,
    tcp_socket,
    url_of,
)
from kit.host.pool import SandboxPool
from kit.host.s3log import S3LogStore
from kit.host.web import WebConfig
from kit.ids import SessionId, is_session_id
from kit.mail.channel import MailChannel
from kit.mail.routes import mail_routes, page_threads
from kit.mail.rules import Agent
from kit.mail.smtp import port_of, serve_smtp
from kit.mail.store import SqliteMailStore
from kit.private import write_private
from kit.protocol import errors as e

log = logging.getLogger("kit.dev")

PORT_TRIES = 20
"""Ports tried from the default one up when no ``--port`` was given."""


@dataclass
class Stack:
    """A running local stack."""

    settings: DevSettings
    project: Project
    bundle: Bundle
    url: str
    model_url: str | None
    """The offline model's URL (None when the real API is used)."""
    model_key: str | None
    """The key the offline model wants on every route (its request log included): made
    anew each run, held by the model proxy; None when the real API is used."""
    api_token: str
    api_token_file: Path
    host: SessionHost
    proxy: ModelProxy
    provider: MachineProvider
    transcripts_dir: Path
    advice: list[tuple[str, str]] = field(default_factory=list)
    """The tier advisor's lines so far: (session id, line); ``kit dev`` also prints them."""
    egress: EgressProxy | None = None
    """The sandboxes' egress proxy, admitting the bundle's ``[sandbox] egress`` hosts."""
    busy_port: int | None = None
    """The default port, when it was busy and the host took the next free one instead."""
    pool: SandboxPool | None = None
    """Sandboxes started ahead of new sessions (``KIT_SANDBOX_POOL``)."""
    scenarios: ScenarioSource | None = None
    """The offline model's scenario files (None when the real API answers)."""
    _release: list[Release] = field(default_factory=list)
    """A one-item cell holding the current release, shared with ``SessionEnv.release``."""
    model_requests: RequestLog | None = None
    """What the offline model was asked (None when the real API answers)."""
    app: Starlette | None = None
    """The host's ASGI app, its control routes and the DO hooks mounted."""
    mail: MailChannel | None = None
    """The email channel (its SMTP server listens on ``smtp_port``)."""
    smtp_port: int | None = None

    async def reload(self) -> Reload:
        """Load the project again; on success, new sandboxes run the new bundle.

        Never raises for a broken project: the :class:`Reload` carries the one-line
        error and the previous bundle keeps serving.
        """
        try:
            project, bundle = await asyncio.to_thread(self._build)
        except KitError as exc:
            return Reload(self.bundle, changed=False, error=str(exc))
        except OSError as exc:  # a file went away while it was read: the next save retries
            return Reload(self.bundle, changed=False, error=f"{exc.filename}: {exc.strerror}.")
        if bundle.digest == self.bundle.digest:
            self.project = project
            return Reload(bundle, changed=False)
        self.project, self.bundle = project, bundle
        if self.egress is not None:
            self.egress.allow([*bundle.egress, *self.settings.store_endpoints])
        self._release[:] = [release_of(bundle)]
        self.host.refresh()
        return Reload(bundle, changed=True)

    def _build(self) -> tuple[Project, Bundle]:
        """The project as it is on disk now, and its bundle (raises :class:`KitError`)."""
        project = load_project(self.settings.project_dir)
        bundle = build_bundle(project, self.settings.state_dir / "bundles")
        if self.scenarios is not None:  # a broken scenario file is reported the same way
            if tuple(project.scenarios) != self.scenarios.paths:
                self.scenarios.move(project.scenarios)  # [dev] scenarios changed
            else:
                self.scenarios.scenarios()
        return project, bundle

    @property
    def model_label(self) -> str:
        """How the banner names the model upstream."""
        if self.model_url:
            return f"offline model (emulator) at {self.model_url}; set ANTHROPIC_API_KEY for the real API"
        return (
            f"Anthropic Messages API at {self.settings.upstream_url} (key from ANTHROPIC_API_KEY)"
        )


@dataclass(frozen=True)
class Reload:
    """What :meth:`Stack.reload` did."""

    bundle: Bundle
    """The bundle new sandboxes run (the previous one if the reload failed)."""
    changed: bool
    """Whether a new bundle replaced the previous one."""
    error: str | None = None
    """The one-line error of a broken project (the previous bundle keeps serving)."""


def release_of(bundle: Bundle) -> Release:
    """The release new sandboxes start from, for ``bundle``."""
    return Release(bundle.path, bundle.digest, bundle.tier, bundle.idle_timeout_s, bundle.limits)


def _listen(settings: DevSettings) -> tuple[socket.socket, int | None]:
    """The host's listening socket, and the busy port it moved away from (None: it got
    the port asked for).

    Without ``--port`` the default port's next free neighbours are tried (up to
    :data:`PORT_TRIES` ports in all); a ``--port`` the user gave is taken or refused.
    """
    host, first = settings.host, settings.port
    tries = PORT_TRIES if settings.port_fallback and first else 1
    for port in range(first, min(first + tries, 65536)):
        try:
            return tcp_socket(host, port), (first if port != first else None)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise KitError(
                    f"Cannot listen on {host}:{port}: {exc.strerror or exc}; check --host "
                    "and --port."
                ) from None
    if tries > 1:
        raise KitError(
            f"Ports {first} to {first + tries - 1} on {host} are all in use; pick a free one "
            "with --port (--port 0 takes any)."
        )
    raise KitError(
        f"Port {first} on {host} is in use (another kit dev?); pick another with --port, "
        "or --port 0 for any free one."
    )


async def _discard_orphans(
    root: Path, sessions: set[SessionId], discard: Callable[[str], Awaitable[None]]
) -> None:
    """Delete the folders of pooled sandboxes no session took, left by a ``kit dev`` that
    was killed (a clean stop deletes them itself)."""
    try:
        names = await asyncio.to_thread(os.listdir, root)
    except FileNotFoundError:
        return
    for name in names:
        if is_session_id(name) and SessionId(name) not in sessions:
            await discard(name)


def _advise(advice: list[tuple[str, str]], session_id: str, line: str) -> None:
    advice.append((session_id, line))
    console.out(console.dim(f"tier advisor [{session_id[:8]}]: {line}"))


def _log_store(settings: DevSettings) -> LogStore:
    """The emulator's Durable Objects in the state dir (one object, one SQLite file, per
    session: the same files ``SQLiteLogStore`` wrote, so older state dirs keep working),
    or S3 under a lease per session (``KIT_LOG_URL``)."""
    if settings.log_url:
        owner = settings.host_id or statedir.host_id(settings.state_dir)
        return S3LogStore.from_url(settings.log_url, owner=owner, ttl_s=settings.lease_ttl_s)
    return DOLogStore.in_dir(settings.state_dir / "sessions", durability=settings.durability)


def _mount_durable_objects(
    app: Starlette, host: SessionHost, logs: DOLogStore, token: str
) -> Evict:
    """Serve the DO test hooks at ``/_emulator/do``; an evicted object takes its session
    out of the host's memory and its clients' sockets close with 1001 (they resume).

    Returns the control API's ``evict``: whether anything of the session was in memory,
    the host's session or its object (a hibernated object's session is still loaded).
    """
    namespace = logs.namespace

    def close_clients(session: Session) -> None:
        for client in list(app.state.connections):
            if client.session is session:
                client.shutdown(
                    e.SHUTTING_DOWN,
                    "The session's Durable Object was evicted; reconnect and resume.",
                    e.CLOSE_GOING_AWAY,
                )

    async def evicted(object_id: str) -> None:
        await host.unload_now(object_id, close_clients)

    async def evict(session_id: str) -> bool:
        loaded = any(s.id == session_id for s in host.live_sessions())
        return await namespace.evict(session_id) or loaded

    namespace.on_evict(evicted)
    namespace.start()
    app.mount("/_emulator/do", create_control_app({"SessionLog": namespace}, api_token=token))
    return evict


def default_mail_address(agent_name: str) -> str:
    """``kit dev``'s address for an agent without ``[mail] address``: ``NAME@localhost``."""
    local = re.sub(r"[^a-z0-9._-]+", "-", agent_name.lower()).strip("-._")[:64] or "agent"
    return f"{local}@localhost"


def load_api_token(path: Path) -> str:
    """The host API token kept in ``path`` (0600), made there first if need be."""
    if path.is_file():
        return path.read_text().strip()
    token = "kit-api-" + secrets.token_urlsafe(24)
    write_private(path, token + "\n")
    return token


@contextlib.asynccontextmanager
async def run_stack(settings: DevSettings) -> AsyncIterator[Stack]:
    """Start the whole local stack; stop it (sockets closed with 1001, sandboxes stopped) on exit."""
    project = load_project(settings.project_dir)
    # Listen before anything is written: a busy port changes nothing.
    host_sock, busy_port = _listen(settings)
    state = settings.state_dir
    try:
        statedir.make_private(state)  # 0700 before anything is written in it
        lock = statedir.lock(state)
    except BaseException:
        host_sock.close()
        raise
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(lock.close)
        cleanup.callback(host_sock.close)
        yield await _start(settings, project, host_sock, busy_port, cleanup)


async def _start(
    settings: DevSettings,
    project: Project,
    host_sock: socket.socket,
    busy_port: int | None,
    cleanup: contextlib.AsyncExitStack,
) -> Stack:
    """Start the stack's parts on ``host_sock``; ``cleanup`` stops them in reverse order."""
    state = settings.state_dir
    bundle = build_bundle(project, state / "bundles")
    advice: list[tuple[str, str]] = []
    provider = await open_provider(
        settings,
        state / "bundles",
        host_id=settings.host_id or statedir.host_id(state),
        progress=lambda line: console.out(console.dim(line)),
    )
    statedir.secure(state, provider.traverse_gid)
    if isinstance(provider, LocalSandboxProvider) and provider.traverse_gid is not None:
        log.warning("%s", statedir.passage_warning(state, provider.user, provider.traverse_gid))
    transcripts = state / "transcripts"

    model_url: str | None = None
    model_key: str | None = None
    scenarios: ScenarioSource | None = None
    model_requests: RequestLog | None = None
    if settings.offline:
        model_sock = tcp_socket("127.0.0.1", 0)
        model_url = url_of(model_sock)
        scenarios = ScenarioSource.from_paths(list(project.scenarios))
        model_key = settings.api_key or "kit-offline-" + secrets.token_urlsafe(24)
        model_app = create_model_app(scenarios, api_key=model_key)
        model_requests = model_app.state.requests
        # Only kit's model proxy calls the offline model: its connections are not capped.
        model_limits = replace(settings.edge, unauthenticated_per_peer=None)
        model_server, model_task = serve(model_app, model_sock, model_limits)

        async def stop_model() -> None:
            model_server.should_exit = True
            await asyncio.gather(model_task, return_exceptions=True)

        cleanup.push_async_callback(stop_model)
        upstream, key = model_url, model_key
    else:
        assert settings.api_key is not None
        upstream, key = settings.upstream_url, settings.api_key
    token_file = state / "api-token"
    api_token = load_api_token(token_file)
    mail_store = SqliteMailStore(state / "mail.sqlite")
    cleanup.callback(mail_store.close)
    mail_address = bundle.mail_address or default_mail_address(project.agent.name)
    # The runtime writes transcripts to an s3:// store itself, through the egress proxy.
    config = settings.gateway_config(
        bundle.egress,
        api_token=api_token,
        upstream=(upstream, key),
        leased=settings.log_url is not None,
        proxy_dir=provider.run_root,
        # The page lists the email threads and joins them (POST /web/mail): kit dev only.
        web=WebConfig(local_sessions=True, local_mail=page_threads(mail_store, mail_address)),
    )
    releases = [release_of(bundle)]
    logs = _log_store(settings)
    if isinstance(logs, DOLogStore):
        cleanup.push_async_callback(logs.aclose)

    async def discard(session_id: str) -> None:
        """Delete what was made for a pooled sandbox whose id no session took."""
        await provider.discard(session_id)
        await asyncio.to_thread(shutil.rmtree, transcripts / session_id, True)

    def mount(gateway: Gateway) -> None:
        gateway.app.router.routes.extend(mail_routes(mail_store, mail_address, api_token))
        evict = (
            _mount_durable_objects(gateway.app, gateway.host, logs, api_token)
            if isinstance(logs, DOLogStore)
            else None
        )
        gateway.app.router.routes.extend(
            control_routes(gateway.host, api_token, evict, gateway.app.state.connections)
        )

    gateway = await cleanup.enter_async_context(
        open_gateway(
            config,
            provider,
            logs,
            lambda: releases[-1],
            sock=host_sock,
            advise=lambda sid, line: _advise(advice, sid, line),
            discard=discard,
            orphans=lambda sessions: _discard_orphans(provider.root, sessions, discard),
            mount=mount,
            files=files_for(logs, settings.state_dir / "files.sqlite"),
        )
    )

    mail = MailChannel(
        mail_store,
        Agent(mail_address, project.agent.name),
        gateway.url,
        api_token,
    )
    cleanup.push_async_callback(mail.close)
    try:
        smtp = await serve_smtp(mail, api_token, port=settings.smtp_port)
    except OSError as exc:
        raise KitError(f"{exc}; choose a free port with KIT_SMTP_PORT (0: any).") from None

    async def stop_smtp() -> None:
        smtp.close()
        await smtp.wait_closed()

    cleanup.push_async_callback(stop_smtp)  # runs before mail.close: no mail arrives then
    await mail.start()
    dev_json = state / "dev.json"
    write_private(
        dev_json,
        json.dumps(
            {
                "url": gateway.url,
                "pid": os.getpid(),
                "api_token_file": str(token_file),
                "smtp": {"host": "127.0.0.1", "port": port_of(smtp)},
                "mail_address": mail_address,
            }
        ),
    )
    cleanup.callback(dev_json.unlink, missing_ok=True)
    return Stack(
        settings,
        project,
        bundle,
        gateway.url,
        model_url,
        model_key,
        api_token,
        token_file,
        gateway.host,
        gateway.proxy,
        provider,
        transcripts,
        advice,
        gateway.egress,
        busy_port,
        gateway.pool,
        scenarios,
        releases,
        model_requests,
        gateway.app,
        mail,
        port_of(smtp),
    )
