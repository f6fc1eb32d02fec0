"""``kit gateway``: a session host from environment settings, as a container entrypoint runs it.

======================  =====================================================================
variable                meaning (default)
======================  =====================================================================
``KIT_LISTEN``          ``HOST:PORT`` the host serves on (``127.0.0.1:8787``; port 0: any)
``KIT_API_TOKEN``       the Bearer token of the HTTP API (required, or ``KIT_API_TOKEN_FILE``
                        naming a file that holds it)
``KIT_BUNDLE``          a built bundle folder (``.kit/bundles/<digest>``) to run; or
``KIT_PROJECT``         an agent project folder, built into the state dir at start
``KIT_STATE_DIR``       where local sandboxes, built bundles and SQLite files live
                        (``./.kit-gateway``)
``KIT_LOG_URL``         event logs: ``s3://BUCKET/PREFIX?endpoint_url=…`` (a lease per
                        session, a sweeper takes over dead hosts' sessions) or a folder of
                        SQLite files (``<state>/sessions``)
``KIT_STORE_URL``       one transcript store for all sessions (a SQLite file per session)
``ANTHROPIC_API_KEY``   the model key the model proxy adds (required; sandboxes never see it)
``KIT_MODEL_UPSTREAM``  the Messages API (``https://api.anthropic.com``)
``KIT_PROXY_LISTEN``    where the model and egress proxies listen: a folder (unix sockets,
                        for local sandboxes) or a host (TCP, a free port each, per-session
                        tokens); default: the local provider's run folder
``KIT_PROXY_HOST``      the name sandboxes reach TCP proxies at (the ``KIT_PROXY_LISTEN`` host)
``KIT_SANDBOX``         the sandbox provider: ``local`` (the fork server), ``docker``, or
                        ``fly`` (Fly Machines, as a deployed gateway runs: the bundle, logs
                        and transcripts come from the bucket; :mod:`kit.cli.flygateway`)
======================  =====================================================================

``KIT_SANDBOX_POOL``, ``KIT_SANDBOX_GRACE_S``, ``KIT_LEASE_TTL_S``, ``KIT_HOST_ID``,
``KIT_PEER_CONNECTIONS``, ``KIT_ALLOWED_ORIGINS``, ``KIT_SANDBOX_USER`` and
``KIT_SANDBOX_ISOLATION`` mean what they mean for ``kit dev`` (:mod:`kit.cli.settings`, whose
parsers read them). Every setting is read and checked before anything is written; SIGTERM
or SIGINT stops the host (sockets closed with 1001, sandboxes stopped), exit 0.

The chat page is served at ``/``; its ``/web/config.json`` names the bundle's ``[web]
session_url`` (docs/web.md). ``POST /web/session`` (a session without the API token) is
not served, except to the page of ``kit dev --target fly``'s rehearsal
(``KIT_LOCAL_PAGE_ORIGIN``, :mod:`kit.cli.flygateway`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from fly import FlyClient
from kit.bundle import Bundle, build_bundle, load_project, open_bundle
from kit.cli import console, statedir
from kit.cli.control import control_routes
from kit.cli.flygateway import Deployed, FlyGatewaySettings, fly_gateway_settings, reap_orphans
from kit.cli.flymail import FlyMail
from kit.cli.sandboxes import open_provider
from kit.cli.settings import DevSettings, SettingsError, dev_settings
from kit.cli.stack import release_of
from kit.durability import Durability
from kit.host import LogStore, SQLiteLogStore
from kit.host.auth import is_loopback_name
from kit.host.files import S3Files, files_for
from kit.host.fly_sandbox import FlySandboxProvider
from kit.host.gateway import Gateway, GatewayConfig, open_gateway, tcp_socket
from kit.host.s3log import S3LogStore
from kit.host.web import WebConfig
from kit.storage.s3io import S3Bucket

DEFAULT_LISTEN = "127.0.0.1:8787"


@dataclass(frozen=True)
class GatewaySettings:
    """``kit gateway``'s environment, read and checked once."""

    common: DevSettings
    """The settings ``kit gateway`` shares with ``kit dev`` (pool, grace, lease, edge, …)."""
    host: str
    port: int
    api_token: str
    bundle: Path | None
    """A built bundle folder; None: build ``common.project_dir``."""
    log_url: str | None
    """``s3://…``; None: SQLite files in ``log_dir``."""
    log_dir: Path
    proxy_dir: Path | None
    """Unix sockets of the proxies here; None: TCP on ``proxy_host`` (or, with no
    ``proxy_host`` either, the local provider's run folder)."""
    proxy_host: str | None
    proxy_public_host: str | None
    sandbox: str
    fly: FlyGatewaySettings | None = None
    """``KIT_SANDBOX=fly``: the Fly settings; the bundle, logs and store come from there."""


def gateway_settings(environ: Mapping[str, str] = os.environ) -> GatewaySettings:
    """Read ``kit gateway``'s settings; :class:`SettingsError` names the variable and the fix."""
    log_url = environ.get("KIT_LOG_URL") or None
    fly_mode = fly_gateway_settings(environ) if environ.get("KIT_SANDBOX") == "fly" else None
    # kit dev's parsers read the shared variables; KIT_LOG_URL may also be a folder here.
    skip = ("KIT_LOG_URL", "KIT_PORT", *(("KIT_SANDBOX",) if fly_mode else ()))
    shared = {k: v for k, v in environ.items() if k not in skip}
    project = environ.get("KIT_PROJECT") or None
    bundle = environ.get("KIT_BUNDLE") or None
    if fly_mode is None and bool(project) == bool(bundle):
        raise SettingsError(
            "Set one of KIT_BUNDLE (a built bundle folder) or KIT_PROJECT (an agent project "
            "folder to build at start)."
        )
    if project and not Path(project).is_dir():
        raise SettingsError(f"KIT_PROJECT={project!r} is not a folder; give an agent project.")
    state = environ.get("KIT_STATE_DIR") or str(Path.cwd() / ".kit-gateway")
    common = dev_settings(
        project=Path(project or state),
        host=None,
        port=0,
        environ={**shared, "KIT_STATE_DIR": state},
        durability=Durability.FSYNC,  # a production host: a commit survives the machine
    )
    listen = (environ.get("KIT_LISTEN") or DEFAULT_LISTEN).replace(
        "${FLY_PRIVATE_IP}", _bracket_ip(environ.get("FLY_PRIVATE_IP") or "::")
    )
    host, port = _host_port(listen)
    if environ.get("KIT_LOCAL_PAGE_ORIGIN", "").strip():
        if fly_mode is None:
            raise SettingsError(
                "KIT_LOCAL_PAGE_ORIGIN is set only on the gateways of kit dev --target fly "
                "(KIT_SANDBOX=fly); unset it."
            )
        if not is_loopback_name(host):
            raise SettingsError(
                f"KIT_LOCAL_PAGE_ORIGIN gives sessions without the API token, so only to a "
                f"gateway on a loopback address (kit dev --target fly's), not KIT_LISTEN="
                f"{listen!r}; unset KIT_LOCAL_PAGE_ORIGIN (a deployed gateway never has it)."
            )
    if not common.api_key:
        raise SettingsError(
            "ANTHROPIC_API_KEY is not set; give the model key the gateway's model proxy adds "
            "to sandboxes' calls."
        )
    log_dir = common.state_dir / "sessions"
    if log_url and not log_url.startswith("s3://"):
        log_dir, log_url = Path(log_url).resolve(), None
    proxy = environ.get("KIT_PROXY_LISTEN") or None
    proxy_dir = Path(proxy) if proxy and "/" in proxy else None
    proxy_host = proxy if proxy and proxy_dir is None else None
    bare_ipv6 = proxy_host is not None and ":" in proxy_host and not proxy_host.startswith("[")
    if (proxy_dir is not None and not proxy_dir.is_absolute()) or bare_ipv6:
        raise SettingsError(
            f"KIT_PROXY_LISTEN={proxy!r}: give a host (each proxy takes a free port) or an "
            "absolute folder for unix sockets; IPv6 addresses in brackets."
        )
    if proxy_dir is not None and proxy_dir.is_absolute() and not proxy_dir.is_dir():
        raise SettingsError(
            f"KIT_PROXY_LISTEN={proxy!r} is not a folder; make it, or give a host for TCP."
        )
    return GatewaySettings(
        common=common,
        host=host,
        port=port,
        api_token=_api_token(environ),
        bundle=Path(bundle).resolve() if bundle else None,
        log_url=log_url,
        log_dir=log_dir,
        proxy_dir=proxy_dir,
        proxy_host=proxy_host.strip("[]") if proxy_host else None,
        proxy_public_host=environ.get("KIT_PROXY_HOST") or None,
        sandbox="fly" if fly_mode else common.sandbox,
        fly=fly_mode,
    )


def _bracket_ip(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 <= number <= 65535:
        raise SettingsError(
            f"KIT_LISTEN={value!r}: give HOST:PORT, e.g. 0.0.0.0:8080 (port 0: any free one)."
        )
    return host.strip("[]"), number


def _api_token(environ: Mapping[str, str]) -> str:
    token = environ.get("KIT_API_TOKEN") or ""
    path = environ.get("KIT_API_TOKEN_FILE") or ""
    if path and not token:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise SettingsError(
                f"KIT_API_TOKEN_FILE={path!r}: cannot read it ({exc.strerror}); give a file "
                "holding the API token."
            ) from None
    if len(token) < 16:
        raise SettingsError(
            "KIT_API_TOKEN is unset or shorter than 16 characters; set it (or "
            "KIT_API_TOKEN_FILE) to a long random token, e.g. `openssl rand -hex 24`."
        )
    return token


def _log_store(settings: GatewaySettings) -> LogStore:
    common = settings.common
    if settings.log_url:
        owner = common.host_id or statedir.host_id(common.state_dir)
        return S3LogStore.from_url(settings.log_url, owner=owner, ttl_s=common.lease_ttl_s)
    return SQLiteLogStore(settings.log_dir, durability=common.durability)


def _bundle(settings: GatewaySettings) -> Callable[[], Bundle]:
    """Check the bundle or project now (nothing written); the returned call builds it."""
    if settings.bundle is not None:
        bundle = open_bundle(settings.bundle)
        return lambda: bundle
    project = load_project(settings.common.project_dir)
    return lambda: build_bundle(project, settings.common.state_dir / "bundles")


def _listen(settings: GatewaySettings) -> socket.socket:
    try:
        return tcp_socket(settings.host, settings.port)
    except OSError as exc:
        raise SettingsError(
            f"KIT_LISTEN={settings.host}:{settings.port}: cannot listen there "
            f"({exc.strerror or exc}); give a free port on an address of this machine."
        ) from None


async def serve(settings: GatewaySettings) -> None:
    """Run the gateway until SIGTERM or SIGINT, then stop it in order."""
    common = settings.common
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if settings.fly is not None:
        await serve_fly(settings, settings.fly, stop)
        return
    # A bad bundle or a busy port is found before anything is written.
    build = _bundle(settings)
    sock = _listen(settings)
    try:
        statedir.make_private(common.state_dir)
        held = statedir.lock(common.state_dir)  # one host per state dir: its id, its containers
    except BaseException:
        sock.close()
        raise
    with held:
        bundle = build()
        provider = await open_provider(
            common,
            bundle.path.parent,
            host_id=common.host_id or statedir.host_id(common.state_dir),
            progress=lambda line: console.out(console.dim(line)),
        )
        statedir.secure(common.state_dir, provider.traverse_gid)
        use_tcp = settings.proxy_host is not None
        config = common.gateway_config(
            bundle.egress,
            api_token=settings.api_token,
            upstream=(common.upstream_url, common.api_key or ""),
            leased=settings.log_url is not None,
            host=settings.host,
            port=settings.port,
            proxy_dir=None if use_tcp else (settings.proxy_dir or provider.run_root),
            proxy_host=settings.proxy_host or "127.0.0.1",
            proxy_public_host=settings.proxy_public_host,
            web=WebConfig(session_url=bundle.web_session_url),
        )
        logs = _log_store(settings)
        release = release_of(bundle)
        files = files_for(logs, settings.common.state_dir / "files.sqlite")
        async with open_gateway(
            config, provider, logs, lambda: release, sock=sock, files=files
        ) as gateway:
            console.out(f"kit gateway: serving {bundle.digest[:16]} at {gateway.url}")
            await stop.wait()
            console.out(console.dim("kit gateway: stopping (closing sockets with 1001)…"))
    console.out(console.dim("kit gateway: stopped."))


def fly_gateway_config(
    settings: GatewaySettings, fly_settings: FlyGatewaySettings, current: Callable[[], Bundle]
) -> GatewayConfig:
    """The gateway's config on Fly, ``current()`` giving the deployed bundle: logs and
    leases in the bucket, the store served from it, proxies on the private address,
    ``fly-replay`` to a session's owner, and the chat page naming the current bundle's
    session URL (local sessions only at ``KIT_LOCAL_PAGE_ORIGIN``, which only the
    rehearsal sets)."""
    common = settings.common
    config = common.gateway_config(
        current().egress,
        api_token=settings.api_token,
        upstream=(common.upstream_url, common.api_key or ""),
        leased=True,
        host=settings.host,
        port=settings.port,
        proxy_dir=None,
        proxy_host=fly_settings.private_ip,
        proxy_public_host=fly_settings.private_ip,
    )
    local = fly_settings.local_page is not None
    return replace(
        config,
        served_store=fly_settings.prefixed("transcripts"),
        # Gateways share the sandbox app: none may reap another's sandboxes at start.
        reap_at_start=False,
        replay_to_owner=True,
        # Read at each request: a deploy changes the bundle under a running gateway.
        web=WebConfig(local_sessions=local, session_url_from=lambda: current().web_session_url),
        proxied_at=fly_settings.local_page,
        public_paths=FlyMail.public_paths(),  # signed mail webhooks, no API token
    )


async def serve_fly(
    settings: GatewaySettings, fly_settings: FlyGatewaySettings, stop: asyncio.Event
) -> None:
    """``serve`` as a gateway machine of a Fly deploy runs it: sandboxes as machines of the
    sandbox app, the bundle from the bucket's pointer (followed), event logs with leases
    and the transcripts in the bucket, the proxies and the served store on the machine's
    private address."""
    common = settings.common
    bundles = common.state_dir / "bundles"
    sock = _listen(settings)
    try:
        statedir.make_private(common.state_dir)
        held = statedir.lock(common.state_dir)
    except BaseException:
        sock.close()
        raise
    with held:
        bucket = S3Bucket.from_url(fly_settings.bucket_url, what="KIT_BUCKET_URL")
        deployed = Deployed(bucket, bundles)
        await deployed.load()
        assert deployed.bundle is not None
        bundle = deployed.bundle
        config = fly_gateway_config(settings, fly_settings, deployed.current)
        logs = S3LogStore.from_url(
            fly_settings.prefixed("logs"), owner=fly_settings.machine_id, ttl_s=common.lease_ttl_s
        )
        async with FlyClient(fly_settings.token, base_url=fly_settings.api_url) as api:
            provider = FlySandboxProvider(
                api,
                fly_settings.sandbox_app,
                bundles,
                deployed.image,
                host_id=fly_settings.machine_id,
                region=fly_settings.region,
            )

            mail = FlyMail(fly_settings.mail, bucket, settings.api_token, deployed.current)

            def mount(gateway: Gateway) -> None:
                gateway.app.router.routes.extend(mail.routes())
                gateway.app.router.routes.extend(
                    control_routes(
                        gateway.host,
                        settings.api_token,
                        connections=gateway.app.state.connections,
                        fleet=provider.fleet,
                        replay=True,
                    )
                )

            async with (
                open_gateway(
                    config,
                    provider,
                    logs,
                    deployed.release,
                    sock=sock,
                    mount=mount,
                    files=S3Files(logs.bucket),
                ) as gateway,
                mail.running(),
            ):

                def new_deploy() -> None:
                    assert deployed.bundle is not None
                    gateway.egress.allow(deployed.bundle.egress)  # its allowlist, at once
                    gateway.host.refresh()  # idle sandboxes of the old bundle are replaced
                    mail.new_deploy()

                follower = asyncio.create_task(deployed.follow(new_deploy))
                reaper = asyncio.create_task(reap_orphans(provider, logs))
                console.out(f"kit gateway: serving {bundle.digest[:16]} at {gateway.url} (fly)")
                console.out(
                    f"kit gateway: mail to {mail.channel.agent.address}, replies through "
                    f"{fly_settings.mail.relay.describe() if fly_settings.mail.relay else ''}"
                    if mail.channel is not None
                    else f"kit gateway: {mail.off}"
                )
                try:
                    await stop.wait()
                finally:
                    follower.cancel()
                    reaper.cancel()
                console.out(console.dim("kit gateway: stopping (closing sockets with 1001)…"))
    console.out(console.dim("kit gateway: stopped."))


def run() -> int:
    """Entry for the CLI: settings from the environment, then :func:`serve`."""
    settings = gateway_settings()
    asyncio.run(serve(settings))
    return 0
