"""``kit deploy --target cloudflare`` and ``kit destroy --target cloudflare``: settings read
once here, the plan printed as a table, then applied by wrangler with progress
(docs/deploy-cloudflare.md).

Settings (flags win over the environment):

======================  ==============================  ====================================
setting                 flag / variable                 default
======================  ==============================  ====================================
Worker name             ``--app`` / ``KIT_CF_WORKER``   the agent's name from ``kit.toml``
container size          ``[sandbox] tier`` in kit.toml  ``standard-1``; must be a Cloudflare
                                                        instance type (lite, basic,
                                                        standard-1 … standard-4)
containers at most      ``--max-instances``             20 (wrangler's default)
Cloudflare API token    ``CLOUDFLARE_API_TOKEN``        required, but not for ``--dry-run``
account                 ``CLOUDFLARE_ACCOUNT_ID``       the token's only account
model API key           ``ANTHROPIC_API_KEY``           required, but not for ``--dry-run``:
                                                        a Worker secret, never in a container
host API token          ``KIT_API_TOKEN``               made once, kept in
                                                        ``<state>/cloudflare-<worker>.json``
wrangler                ``KIT_WRANGLER``                ``wrangler`` on ``PATH``, else
                                                        ``worker_shim/node_modules/.bin/``
                                                        (``scripts/setup-workers``)
the Worker's source     ``KIT_WORKER_SHIM``             ``worker_shim/`` of kit's checkout
======================  ==============================  ====================================

The build folder ``<state>/cloudflare/<worker>/`` gets the generated ``wrangler.jsonc``, the
``Dockerfile`` and ``web/`` (the chat page's files, the Worker's static assets); ``--dry-run`` writes them there (and wrangler's bundled Worker in ``dist/``)
and nothing else: no token file, no secret, no network.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kit.bundle import build_bundle, load_project
from kit.cli import console
from kit.cli.errors import CliError
from kit.cli.statedir import make_private
from kit.deploy.cloudflare.apply import apply, destroy, dry_run, secret_names, write_build
from kit.deploy.cloudflare.deploy import Shim, desired, load_shim
from kit.deploy.cloudflare.plan import Plan, plan
from kit.deploy.cloudflare.target import DEFAULT_MAX_INSTANCES, CloudflareTarget
from kit.deploy.cloudflare.wrangler import Wrangler, find_wrangler, offline_env, wrangler_env

BUILD = "cloudflare"
"""The state dir's folder of build folders, one per Worker."""


@dataclass(frozen=True)
class CloudflareSettings:
    """Everything ``kit deploy --target cloudflare`` reads, read once."""

    target: CloudflareTarget
    project: Path
    state_dir: Path
    shim: Shim
    wrangler: Path
    environ: Mapping[str, str] = field(repr=False)
    """The environment wrangler gets (kit's own secrets are taken out of it)."""
    cf_token: str = field(repr=False)
    account_id: str | None
    model_key: str = field(repr=False)
    api_token: str | None = field(repr=False)

    @property
    def build_dir(self) -> Path:
        return self.state_dir / BUILD / self.target.worker

    @property
    def token_file(self) -> Path:
        return self.state_dir / f"cloudflare-{self.target.worker}.json"


def cloudflare_settings(
    *,
    project: Path,
    state_dir: Path,
    agent_name: str,
    tier: str,
    app: str | None,
    max_instances: int | None,
    checkout: Path,
    environ: Mapping[str, str],
) -> CloudflareSettings:
    """The settings from flags, ``kit.toml``'s tier and ``environ``; a DeployError or
    CliError naming what is wrong. Nothing is written."""
    target = CloudflareTarget(
        worker=app or environ.get("KIT_CF_WORKER", "").strip() or agent_name,
        tier=tier,
        max_instances=DEFAULT_MAX_INSTANCES if max_instances is None else max_instances,
    )
    shim = load_shim(Path(environ.get("KIT_WORKER_SHIM", "").strip() or checkout / "worker_shim"))
    return CloudflareSettings(
        target=target,
        project=project,
        state_dir=state_dir,
        shim=shim,
        wrangler=find_wrangler(environ, shim.root),
        environ=dict(environ),
        cf_token=environ.get("CLOUDFLARE_API_TOKEN", "").strip(),
        account_id=environ.get("CLOUDFLARE_ACCOUNT_ID", "").strip() or None,
        model_key=environ.get("ANTHROPIC_API_KEY", "").strip(),
        api_token=environ.get("KIT_API_TOKEN", "").strip() or None,
    )


def host_token(settings: CloudflareSettings) -> tuple[str, bool]:
    """The host API token clients use: ``KIT_API_TOKEN``, else the one made for this Worker
    before (``<state>/cloudflare-<worker>.json``), else a new one (not yet saved); and
    whether it is new."""
    if settings.api_token:
        return settings.api_token, False
    try:
        saved = json.loads(settings.token_file.read_text())
        if isinstance(saved.get("api_token"), str) and len(saved["api_token"]) >= 32:
            return str(saved["api_token"]), False
    except (OSError, ValueError, AttributeError):
        pass
    return secrets.token_urlsafe(32), True


def save_token(settings: CloudflareSettings, token: str) -> None:
    """Keep the Worker's host API token in ``<state>/cloudflare-<worker>.json`` (0600)."""
    make_private(settings.state_dir)
    fd = os.open(settings.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api_token": token}, f)


def render(steps: Plan) -> str:
    """The plan as a table."""
    return console.table(["step", "what", "why"], steps.rows())


def _require_credentials(settings: CloudflareSettings, *, model_key: bool) -> None:
    if not settings.cf_token:
        raise CliError(
            "CLOUDFLARE_API_TOKEN is not set: make one in the Cloudflare dashboard (My Profile "
            "> API Tokens, the 'Edit Cloudflare Workers' template with Containers: Edit added) "
            "and export it; set CLOUDFLARE_ACCOUNT_ID too if it reaches more than one account."
        )
    if model_key and not settings.model_key:
        raise CliError(
            "ANTHROPIC_API_KEY is not set: the Worker needs it (it becomes a Worker secret, "
            "never seen by a container)."
        )


def _wrangler(settings: CloudflareSettings, *, offline: bool) -> Wrangler:
    build = settings.build_dir
    env = wrangler_env(settings.environ, settings.wrangler)
    if offline:
        env = offline_env(env, build / "wrangler-home")
    return Wrangler(settings.wrangler, env, build)


async def run_deploy(
    settings: CloudflareSettings, build_image: Callable[[bool], str], *, dry_run_only: bool
) -> int:
    """Plan and (unless ``dry_run_only``) apply a deploy of the project; print the URL at
    the end. ``build_image(dry_run)`` gives the local runtime image's tag (built if need
    be), once every setting has been checked."""
    if not dry_run_only:
        _require_credentials(settings, model_key=True)
    target = settings.target
    local_image = await asyncio.to_thread(build_image, dry_run_only)
    make_private(settings.state_dir)  # 0700 before anything is written in it
    project = load_project(settings.project)
    bundle = build_bundle(project, settings.state_dir / "bundles")
    token, new = host_token(settings)
    values = {"KIT_API_TOKEN": token, "ANTHROPIC_API_KEY": settings.model_key}
    want = desired(
        target,
        settings.shim,
        bundle,
        local_image,
        values,
        build_dir=settings.build_dir,
        session_url=project.web_session_url,
        mail_address=project.mail_address,
    )
    steps = plan(want)
    console.out(f"kit deploy --target cloudflare: Worker {target.worker} ({target.tier})")
    console.out(render(steps))
    if dry_run_only:
        out = await dry_run(want, _wrangler(settings, offline=True))
        console.out(console.dim("\n".join(line for line in out.splitlines() if line.strip())))
        console.out(
            f"Dry run: wrangler bundled the Worker into {want.build_dir / 'dist'}; nothing was "
            "deployed and no secret was set."
        )
        needed = {
            "CLOUDFLARE_API_TOKEN": settings.cf_token,
            "ANTHROPIC_API_KEY": settings.model_key,
        }
        missing = [name for name, value in needed.items() if not value]
        if missing:
            console.out(console.dim(f"(a deploy needs {' and '.join(missing)})"))
        return 0
    wrangler = _wrangler(settings, offline=False)
    write_build(want)  # wrangler runs in the build folder, with its config
    if new:
        names = await secret_names(wrangler, target.worker, want.config_path)
        if names is not None and "KIT_API_TOKEN" in names:
            raise CliError(
                f"Worker {target.worker} already has a host API token, and this machine does "
                f"not know it (no KIT_API_TOKEN, no {settings.token_file}): set KIT_API_TOKEN "
                "to it, or a new token would lock every client out."
            )
        save_token(settings, token)  # kept before the deploy makes it the Worker's secret
    url = await apply(steps, want, wrangler, progress=lambda line: console.out(console.dim(line)))
    console.out(f"Deployed bundle {bundle.digest[:16]} to Worker {target.worker}")
    if new:
        console.out(
            f"The host API token was made now and kept in {settings.token_file}; clients "
            "send it as KIT_API_TOKEN."
        )
    if url is None:
        console.out(
            "wrangler printed no workers.dev URL (has the account a workers.dev subdomain? "
            "Workers & Pages > your subdomain); use the Worker's route instead."
        )
        return 0
    console.out(f"Chat with it:  KIT_API_TOKEN=… kit chat --url {url}")
    return 0


async def run_destroy(settings: CloudflareSettings, *, yes: bool) -> int:
    """Delete the Worker and its container application; without ``yes``, print what would
    go and stop."""
    _require_credentials(settings, model_key=False)
    target = settings.target
    wrangler = _wrangler(settings, offline=False)
    if not yes:
        listed = await destroy(target, wrangler, dry_run=True)
        if not listed:
            console.out(f"Nothing to remove: no Worker {target.worker} on this account.")
            return 0
        console.out("Would remove: " + ", ".join(listed))
        raise CliError("kit destroy deletes these for good: run it again with --yes.")
    removed = await destroy(target, wrangler, progress=lambda line: console.out(console.dim(line)))
    if removed:
        console.out("Removed: " + ", ".join(removed))
    else:
        console.out(f"Nothing to remove: no Worker {target.worker} on this account.")
    return 0
