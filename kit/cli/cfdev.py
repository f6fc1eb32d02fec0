"""``kit dev --target cloudflare``: the Cloudflare deployment rehearsed on this machine with
the production code: the real shim (``worker_shim/``, a Worker and one SessionDO per
session) in ``wrangler dev``. Only what wrangler dev cannot give differs:

- ``ctx.container`` is undefined under ``wrangler dev --enable-containers=false``, so the
  DO's containers come from kit's container emulator (:mod:`emulator.containers`) on
  loopback: containers of the bundle image (kit's runtime image with the bundle in it, as
  a deploy ships it) under this host's Docker, ``--network none``, reaching only the
  Worker's own loopback URL (their model calls go through the DO's model route);
- the model is the offline Messages API (``ANTHROPIC_API_KEY`` set: the real one), behind
  the DO's model route as on Cloudflare;
- the DO's storage is wrangler's local SQLite under ``<state>/cloudflare/``.

The bundle's ``[limits]`` reach the shim's model route as a deploy passes them
(:func:`kit.deploy.cloudflare.target.limits_var`).

The Worker serves the chat page at its URL as a deploy does (``worker_shim/src/web.ts``),
and in the rehearsal only (:data:`LOCAL_SESSIONS_VAR`) ``POST /web/session``, so the page,
opened on this machine, gets sessions without the API token as ``kit dev``'s does.

The Worker's URL is written to ``.kit/dev.json`` so ``kit chat`` finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from emulator.containers import DockerRunner, Served, serve
from kit.bundle import Bundle, build_bundle, load_project
from kit.cli.errors import CliError
from kit.cli.flydev import advertised, offline_model, rehearsal_lock, until_stopped
from kit.cli.stack import default_mail_address, load_api_token
from kit.cli.statedir import make_private
from kit.cli.wrangler import free_port, shim_wrangler, wrangler_dev, write_config
from kit.deploy.cloudflare.target import LIMITS_VAR, MAIL_ADDRESS_VAR, limits_var
from kit.deploy.image import bundle_image
from kit.tiers import get_tier

ANTHROPIC_API = "https://api.anthropic.com"
LOCAL_SESSIONS_VAR = "KIT_WEB_LOCAL_SESSIONS"
"""The var that has the shim serve ``POST /web/session`` (a rehearsal's only: kit deploy
never sets it, and the shim honours it only with its container emulator)."""


@dataclass
class CfRehearsal:
    """A running rehearsal: where to reach it and its parts (for tests and the banner)."""

    url: str
    """The Worker under ``wrangler dev`` (stands for ``https://<name>.workers.dev``)."""
    api_token: str
    api_token_file: Path
    containers: Served
    model_url: str
    bundle: Bundle
    image: str
    """The bundle image the containers run."""
    worker_dir: Path
    """Where wrangler dev runs: its config, and ``.wrangler/tmp/email/`` where the send_email
    binding writes each message it sends (``<Message-ID>.eml``)."""
    restart_worker: Callable[[], Awaitable[None]]
    """Stop ``wrangler dev`` (its workerd and every DO instance with it) and start it again
    on the same port and the same state: what a host restart is to the shim."""
    mail_address: str = ""
    """The agent's address (``[mail] address``, else ``NAME@localhost`` as in ``kit dev``)."""

    @property
    def local_email(self) -> str:
        """Where wrangler dev takes raw mail for the ``email()`` handler (``?from=&to=``)."""
        return f"{self.url}/cdn-cgi/local/email"


def cloudflare_tier(name: str) -> str:
    """``name`` if it is a Cloudflare instance type; :class:`CliError` naming them if not."""
    try:
        tier = get_tier(name)
    except KeyError:
        tier = None
    if tier is None or tier.platform != "cloudflare":
        raise CliError(
            f"[sandbox] tier = {name!r} is no Cloudflare instance type: set it in kit.toml to "
            "lite, basic or standard-1..4 for --target cloudflare."
        )
    return tier.name


def rehearsal_vars(
    bundle: Bundle,
    *,
    worker_url: str,
    model_upstream: str,
    containers_url: str,
    image: str,
    mail_address: str | None = None,
) -> dict[str, str]:
    """The shim's vars in a rehearsal: where it is, its model upstream, the bundle (its
    digest and, as a deploy passes them, its ``[limits]``), the container emulator,
    sessions for the chat page of this machine (``POST /web/session``) and, when given, the
    agent's mail address."""
    mail = {} if mail_address is None else {MAIL_ADDRESS_VAR: mail_address}
    return {
        **mail,
        "KIT_WORKER_URL": worker_url,
        LOCAL_SESSIONS_VAR: "1",
        "KIT_MODEL_UPSTREAM": model_upstream,
        "KIT_BUNDLE_DIGEST": bundle.digest,
        "KIT_CONTAINER_EMULATOR": containers_url,
        "KIT_CONTAINER_IMAGE": image,
        LIMITS_VAR: limits_var(bundle.limits),
    }


@contextlib.asynccontextmanager
async def rehearse_cloudflare(
    project: Path,
    state_dir: Path,
    runtime_image: str,
    *,
    model_key: str | None = None,
    mail_address: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> AsyncIterator[CfRehearsal]:
    """Start the offline model, the container emulator and the shim in ``wrangler dev``
    for ``project`` on ``runtime_image``; yield the rehearsal; take it all down on exit.
    ``mail_address``: the agent's address (default: ``[mail] address``; the shim's
    ``email()`` handler takes mail at ``POST <url>/cdn-cgi/local/email?from=&to=``)."""
    loaded = load_project(project)
    tier = cloudflare_tier(loaded.sandbox.tier)
    shim_wrangler()  # missing: said before any image is built or file written
    make_private(state_dir)
    bundle = build_bundle(loaded, state_dir / "bundles")
    progress("building the bundle image (the runtime image with the bundle in it)…")
    image = await asyncio.to_thread(bundle_image, runtime_image, bundle.path, bundle.digest)
    offline_key = "kit-rehearsal-" + secrets.token_urlsafe(12)
    emulator_token = secrets.token_urlsafe(32)
    token_file = state_dir / "api-token"
    token = load_api_token(token_file)
    folder = state_dir / "cloudflare"
    port = free_port()
    async with (
        offline_model(list(loaded.scenarios), offline_key) as model_url,
        rehearsal_lock(state_dir, "kit dev --target cloudflare") as runner_id,
        DockerRunner(runner_id=runner_id) as runner,
        serve(token=emulator_token, runner=runner, image=image) as containers,
    ):
        address = mail_address or loaded.mail_address or default_mail_address(loaded.agent.name)

        def configure() -> Path:
            # Written again at a restart: wrangler_dev removes .dev.vars when it stops.
            return write_config(
                folder,
                name=loaded.agent.name,
                tier=tier,
                variables=rehearsal_vars(
                    bundle,
                    worker_url=f"http://127.0.0.1:{port}",
                    model_upstream=ANTHROPIC_API if model_key else model_url,
                    containers_url=containers.url,
                    image=image,
                    mail_address=address,
                ),
                secrets={
                    "KIT_API_TOKEN": token,
                    "ANTHROPIC_API_KEY": model_key or offline_key,
                    "KIT_CONTAINER_EMULATOR_TOKEN": emulator_token,
                },
            )

        config = configure()
        progress(f"starting the shim in wrangler dev on 127.0.0.1:{port}…")
        running = contextlib.AsyncExitStack()  # the wrangler dev now running
        try:
            url = await running.enter_async_context(
                wrangler_dev(config, port=port, persist=folder / "state")
            )

            async def restart_worker() -> None:
                nonlocal running
                await running.aclose()
                running = contextlib.AsyncExitStack()
                await running.enter_async_context(
                    wrangler_dev(configure(), port=port, persist=folder / "state")
                )

            yield CfRehearsal(
                url=url,
                api_token=token,
                api_token_file=token_file,
                containers=containers,
                model_url=model_url,
                bundle=bundle,
                image=image,
                worker_dir=config.parent,
                restart_worker=restart_worker,
                mail_address=address,
            )
        finally:
            await running.aclose()


def banner_rows(cf: CfRehearsal, *, real_model: bool) -> list[tuple[str, str]]:
    """The rows of ``kit dev --target cloudflare``'s banner: where the shim and its page
    are, what serves its containers and model, where the API token is."""
    return [
        ("url", f"{cf.url} (the shim in wrangler dev; stands for workers.dev)"),
        ("page", f"{cf.url}/  (the chat page: open it in a browser on this machine)"),
        ("containers", f"{cf.containers.url} (kit's container emulator, Docker)"),
        ("image", cf.image),
        ("model", "the real API" if real_model else f"offline at {cf.model_url}"),
        (
            "mail",
            f"{cf.mail_address} through {cf.local_email} (wrangler's local email endpoint); "
            "`kit mail send`, `kit mail outbox`",
        ),
        ("api token", f"{cf.api_token_file} (Bearer token for POST /v1/sessions)"),
    ]


async def serve_rehearsal(
    project: Path, state_dir: Path, model_key: str | None, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    """``kit dev --target cloudflare`` until ``stop``: build the images if need be, start
    the rehearsal, tell clients where it is (``.kit/dev.json``; then ``ready``), take it
    down."""
    from kit.cli import console, statedir
    from kit.cli.image import ensure

    cloudflare_tier(load_project(project).sandbox.tier)  # bad input: said before any build
    shim_wrangler()
    make_private(state_dir)
    with statedir.lock(state_dir):
        runtime = await asyncio.to_thread(ensure, False)

        def say(line: str) -> None:
            console.out(console.dim(line))

        say("kit dev --target cloudflare: starting the container emulator, the model and the shim…")
        async with rehearse_cloudflare(
            project, state_dir, runtime, model_key=model_key, progress=say
        ) as cf:
            mail = {"address": cf.mail_address, "local_email": cf.local_email}
            with advertised(state_dir, cf.url, cf.api_token_file, mail):
                console.banner(
                    banner_rows(cf, real_model=model_key is not None),
                    title="kit dev --target cloudflare — ready. Talk to it with `kit chat`; "
                    "stop with Ctrl-C.",
                )
                ready.set()
                await stop.wait()
        console.out(console.dim("kit dev --target cloudflare: stopped; every container removed."))


def run(project: Path, state_dir: Path, model_key: str | None) -> int:
    """Entry for the CLI."""
    asyncio.run(
        until_stopped(
            lambda stop, ready: serve_rehearsal(project, state_dir, model_key, stop, ready),
            "kit dev --target cloudflare",
        )
    )
    return 0
