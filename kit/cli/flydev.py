"""``kit dev --target fly``: the Fly deployment rehearsed on this machine with the production
code paths. Only the platform's endpoints differ:

- the Machines API is the emulator (:mod:`emulator.fly_api`) on loopback, its machines
  containers of kit's runtime image on this host's Docker (host network, each machine on
  its own loopback address ``127.X.0.N``);
- the bucket is moto's S3 server on loopback;
- the image registry is the local Docker daemon;
- the model is the offline Messages API (``ANTHROPIC_API_KEY`` set: the real one);
- ``https://<app>.fly.dev`` is the emulated Fly proxy on a loopback port (routing by app,
  ``fly-replay``, autostart).

The chat page is served as on Fly, at the proxy's URL. There it gets sessions without the
API token (``POST /web/session``), as ``kit dev``'s does: the gateways are told the proxy's
loopback origin (``KIT_LOCAL_PAGE_ORIGIN``, set only here), and the same rule holds (a
same-origin request at a loopback name of the proxy; the gateways listen on loopback
addresses). A deployed gateway never has that variable, and refuses it on ``[::]``.

The project is deployed into it with the real ``kit deploy`` code (two gateway machines
running ``kit gateway`` in Fly mode), and the proxy's URL is written to ``.kit/dev.json``
so ``kit chat`` finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from emulator.fly_api import DockerRunner, Served, serve
from emulator.fly_api.proxy import serve_proxy
from emulator.model import ScenarioSource
from emulator.model import create_app as create_model_app
from fly import FlyClient
from kit.bundle import Bundle, build_bundle, load_project
from kit.cli.deploy import FlySettings, bucket_url
from kit.cli.relaysink import RelaySink
from kit.cli.stack import default_mail_address
from kit.cli.statedir import host_id, lock, make_private
from kit.deploy.fly.apply import Deployment
from kit.deploy.fly.deploy import REHEARSAL_LISTEN, deploy, desired, image_ref
from kit.deploy.fly.plan import Plan
from kit.deploy.fly.registry import LocalRegistry
from kit.deploy.fly.target import FlyTarget
from kit.host.edge import EdgeLimits
from kit.host.gateway import serve as serve_app
from kit.host.gateway import tcp_socket, url_of
from kit.mail.webhook import INBOUND_PATH
from kit.private import write_private
from kit.storage.s3io import S3Bucket

FLY_TOKEN_BYTES = 24
LOCAL_PAGE_VARIABLE = "KIT_LOCAL_PAGE_ORIGIN"
"""The rehearsal's gateways serve local sessions to the page at this loopback origin
(:mod:`kit.cli.flygateway`)."""
RELAY_FOLDER = "mail-relay"
"""Under the state dir: each reply the loopback relay took, as ``NNNN.eml``."""
S3_KEY = "kit-rehearsal"
"""moto takes any keys; these are not secrets."""


@dataclass
class Rehearsal:
    """A deployed rehearsal: where to reach it and its parts (for tests and the banner)."""

    url: str
    """The emulated ``https://<app>.fly.dev``."""
    api_token: str
    target: FlyTarget
    fly_api: Served
    api: FlyClient
    bucket: S3Bucket
    s3_endpoint: str
    model_url: str
    plan: Plan
    bundle: Bundle
    image: str
    deployment: Deployment
    settings: FlySettings
    secrets: dict[str, str]
    gateway_env: dict[str, str]
    mail_address: str
    """The agent's address (``[mail] address``, else ``NAME@localhost``)."""
    mail_secret: str
    """``KIT_MAIL_WEBHOOK_SECRET``: what ``kit mail send`` signs with."""
    relay: RelaySink
    """The loopback SMTP relay replies are sent through: what a mail client would get."""
    relay_port: int

    async def redeploy(self, progress: Callable[[str], None] = lambda _: None) -> Plan:
        """Deploy the project as it is now (a changed bundle, say) with the real deploy
        code; the plan it carried out."""
        self.bundle = build_bundle(
            load_project(self.settings.project), self.settings.state_dir / "bundles"
        )
        want = desired(
            self.target,
            self.bundle,
            image_ref(self.target, self.image),
            self.secrets,
            bucket_url=bucket_url(self.settings),
            listen=REHEARSAL_LISTEN,
            extra_env=self.gateway_env,
        )
        self.plan = await deploy(want, self.bundle, self.image, self.deployment, progress=progress)
        return self.plan


@contextlib.asynccontextmanager
async def _moto() -> AsyncIterator[str]:
    """moto's S3 server on a free loopback port."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        from kit.cli.errors import CliError

        raise CliError(
            "kit dev --target fly needs moto (the bucket's stand-in): pip install 'kit[dev]' "
            "(./scripts/setup installs it)."
        ) from None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def _closing(server: asyncio.Server) -> AsyncIterator[None]:
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def offline_model(project_scenarios: list[Path], key: str) -> AsyncIterator[str]:
    """The offline Messages API on a free loopback port, taking ``key``; its URL."""
    app = create_model_app(ScenarioSource.from_paths(project_scenarios), api_key=key)
    sock = tcp_socket("127.0.0.1", 0)
    server, task = serve_app(app, sock, EdgeLimits())
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def rehearsal_lock(state_dir: Path, what: str) -> AsyncIterator[str]:
    """Hold the state dir's rehearsal lock (:class:`CliError` when another rehearsal holds
    it: its containers are live, not leftovers); the runner id of its containers."""
    make_private(state_dir)
    with lock(state_dir, "rehearsal.lock", what):
        yield f"rehearsal-{host_id(state_dir)}"


@contextlib.asynccontextmanager
async def rehearse_fly(
    project: Path,
    state_dir: Path,
    image: str,
    *,
    app: str | None = None,
    gateways: int = 2,
    model_key: str | None = None,
    lease_ttl_s: float | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> AsyncIterator[Rehearsal]:
    """Start the emulated Fly, moto and the model; deploy ``project`` on ``image`` (a local
    runtime image tag) into it; yield the rehearsal; take it all down on exit."""
    loaded = load_project(project)
    target = FlyTarget(app=app or loaded.agent.name, gateways=gateways)
    fly_token = secrets.token_urlsafe(FLY_TOKEN_BYTES)
    offline_key = "kit-rehearsal-" + secrets.token_urlsafe(12)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", S3_KEY)  # boto3 in this process reads these
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", S3_KEY)
    async with (
        _moto() as s3_endpoint,
        offline_model(list(loaded.scenarios), offline_key) as model_url,
        # One runner id per state dir (one rehearsal at a time holds it): a rehearsal killed
        # before it could clean up leaves containers this one removes first.
        rehearsal_lock(state_dir, "kit dev --target fly") as runner_id,
        DockerRunner(network="host", runner_id=runner_id) as runner,
        serve(token=fly_token, runner=runner) as fly_api,
        FlyClient(fly_token, base_url=fly_api.url) as api,
    ):
        api_token = secrets.token_urlsafe(32)
        settings = FlySettings(
            target=target,
            project=project,
            state_dir=state_dir,
            fly_token=fly_token,
            fly_api=fly_api.url,
            model_key=model_key or offline_key,
            api_token=api_token,
            s3_endpoint=s3_endpoint,
            s3_region="us-east-1",
            s3_keys=(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]),
            local_registry=True,
            listen=REHEARSAL_LISTEN,
        )
        bucket = S3Bucket.from_url(bucket_url(settings), what="bucket")
        bundle = build_bundle(loaded, state_dir / "bundles")
        values = {
            "ANTHROPIC_API_KEY": settings.model_key,
            "KIT_API_TOKEN": api_token,
            "FLY_API_TOKEN": fly_token,
            "AWS_ACCESS_KEY_ID": settings.s3_keys[0],
            "AWS_SECRET_ACCESS_KEY": settings.s3_keys[1],
        }
        mail_secret = secrets.token_urlsafe(32)
        relay_password = secrets.token_urlsafe(16)
        relay = RelaySink("kit", relay_password, state_dir / RELAY_FOLDER)
        relay_server = await asyncio.get_running_loop().create_server(
            relay.protocol, "127.0.0.1", 0
        )
        relay_port = int(relay_server.sockets[0].getsockname()[1])
        values["KIT_MAIL_WEBHOOK_SECRET"] = mail_secret
        values["KIT_SMTP_RELAY"] = f"smtp://kit:{relay_password}@127.0.0.1:{relay_port}"
        mail_address = bundle.mail_address or default_mail_address(loaded.agent.name)
        async with (
            _closing(relay_server),
            serve_proxy(fly_api.backend, target.app, as_served=True) as url,
        ):
            # The page loaded from the proxy gets sessions as kit dev's does (local ones).
            extra = {"FLY_API_HOSTNAME": fly_api.url, LOCAL_PAGE_VARIABLE: url}
            # Mail: the channel reaches sessions through the proxy, as on Fly.
            extra["KIT_PUBLIC_URL"] = url
            if bundle.mail_address is None:
                extra["KIT_MAIL_ADDRESS"] = mail_address
            if model_key is None:
                extra["KIT_MODEL_UPSTREAM"] = model_url
            if lease_ttl_s is not None:  # how soon another gateway takes a dead one's sessions
                extra["KIT_LEASE_TTL_S"] = f"{lease_ttl_s:g}"
            ref = image_ref(target, image)
            want = desired(
                target,
                bundle,
                ref,
                values,
                bucket_url=bucket_url(settings),
                listen=REHEARSAL_LISTEN,
                extra_env=extra,
            )
            to = Deployment(api, bucket, LocalRegistry(), url)
            plan = await deploy(want, bundle, image, to, progress=progress)
            make_private(state_dir)
            yield Rehearsal(
                url=url,
                api_token=api_token,
                target=target,
                fly_api=fly_api,
                api=api,
                bucket=bucket,
                s3_endpoint=s3_endpoint,
                model_url=model_url,
                plan=plan,
                bundle=bundle,
                image=image,
                deployment=to,
                settings=settings,
                secrets=values,
                gateway_env=extra,
                mail_address=mail_address,
                mail_secret=mail_secret,
                relay=relay,
                relay_port=relay_port,
            )
        await LocalRegistry().forget(target.app)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (a rehearsal runs until then)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def until_stopped(
    serve: Callable[[asyncio.Event, asyncio.Event], Awaitable[None]], name: str
) -> None:
    """Run ``serve(stop, ready)`` until SIGINT or SIGTERM. Once ``serve`` set ``ready`` it
    waits for ``stop`` and takes itself down; a signal before that (during a start-up of
    minutes: images, wrangler) cancels it, which takes down what it had started."""
    from kit.cli import console

    stop, ready = stop_on_signals(), asyncio.Event()
    task = asyncio.ensure_future(serve(stop, ready))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done() and not ready.is_set():
        console.out(console.dim(f"{name}: stopping during start-up; removing what was started…"))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        console.out(console.dim(f"{name}: stopped."))
        return
    await task


@contextlib.contextmanager
def advertised(
    state_dir: Path, url: str, token_file: Path, mail: dict[str, str] | None = None
) -> Iterator[None]:
    """Tell clients where the rehearsal is for as long as the block runs: ``dev.json`` in
    the state dir (``kit chat`` reads it; ``mail``: how ``kit mail send`` reaches the
    agent, its ``address`` and ``webhook`` with the ``secret_file`` to sign with), removed
    at the end."""
    dev_json = state_dir / "dev.json"
    info: dict[str, object] = {"url": url, "pid": os.getpid(), "api_token_file": str(token_file)}
    if mail is not None:
        info["mail"] = mail
        info["mail_address"] = mail["address"]
    write_private(dev_json, json.dumps(info))
    try:
        yield
    finally:
        dev_json.unlink(missing_ok=True)


async def serve_rehearsal(
    project: Path, state_dir: Path, model_key: str | None, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    """``kit dev --target fly`` until ``stop``: build the runtime image if need be, rehearse
    the deployment, tell clients where it is (``.kit/dev.json``; then ``ready``), take it
    down."""
    from kit.cli import console, statedir
    from kit.cli.image import ensure

    make_private(state_dir)
    with statedir.lock(state_dir):
        image = await asyncio.to_thread(ensure, False)

        def say(line: str) -> None:
            console.out(console.dim(line))

        say("kit dev --target fly: starting the Fly emulator, moto and the model…")
        async with rehearse_fly(
            project, state_dir, image, model_key=model_key, progress=say
        ) as fly:
            token_file = state_dir / "api-token"
            write_private(token_file, fly.api_token)
            secret_file = state_dir / "mail-webhook-secret"
            write_private(secret_file, fly.mail_secret)
            mail = {
                "address": fly.mail_address,
                "webhook": fly.url + INBOUND_PATH,
                "secret_file": str(secret_file),
            }
            with advertised(state_dir, fly.url, token_file, mail):
                console.banner(
                    [
                        ("url", f"{fly.url} (stands for {fly.target.url})"),
                        ("page", f"{fly.url}/  (the chat page: open it in a browser here)"),
                        ("apps", f"{fly.target.app} (gateways), {fly.target.sandbox_app}"),
                        ("Machines API", f"{fly.fly_api.url} (the emulator)"),
                        ("bucket", f"s3://{fly.target.bucket_name} at {fly.s3_endpoint} (moto)"),
                        ("model", "the real API" if model_key else f"offline at {fly.model_url}"),
                        ("api token", f"{token_file} (Bearer token for POST /v1/sessions)"),
                        (
                            "mail",
                            f"{fly.mail_address} through {fly.url}{INBOUND_PATH} (signed with "
                            f"{secret_file}): kit mail send --from you@example.org TEXT",
                        ),
                        (
                            "relay",
                            f"smtp://127.0.0.1:{fly.relay_port} (replies kept in "
                            f"{state_dir / RELAY_FOLDER}; kit mail outbox)",
                        ),
                    ],
                    title="kit dev --target fly — ready. Talk to it with `kit chat`; stop with Ctrl-C.",
                )
                ready.set()
                await stop.wait()
        console.out(console.dim("kit dev --target fly: stopped; every machine removed."))


def run(project: Path, state_dir: Path, model_key: str | None) -> int:
    """Entry for the CLI."""
    asyncio.run(
        until_stopped(
            lambda stop, ready: serve_rehearsal(project, state_dir, model_key, stop, ready),
            "kit dev --target fly",
        )
    )
    return 0
