"""``kit deploy --target fly`` and ``kit destroy --target fly``: settings read once here, the
plan printed as a table, then applied with progress (docs/deploy-fly.md).

Settings (flags win over the environment):

=====================  ===========================  ==========================================
setting                flag / variable              default
=====================  ===========================  ==========================================
app name               ``--app`` / ``KIT_FLY_APP``  the agent's name from ``kit.toml``
organisation           ``--org`` / ``FLY_ORG``      ``personal``
region                 ``--region`` / ``FLY_REGION``  ``iad``
gateway machines       ``--gateways``               2
Fly API token          ``FLY_API_TOKEN``            required (``fly tokens create org``)
Fly API endpoint       ``FLY_API_HOSTNAME``         ``https://api.machines.dev``
model API key          ``ANTHROPIC_API_KEY``        required for a deploy: a secret of the
                                                    gateway app, never in a sandbox
host API token         ``KIT_API_TOKEN``            made once, kept in ``<state>/fly-<app>.json``
bucket                 ``--bucket``                 ``<app>-kit``
bucket endpoint, keys  ``AWS_ENDPOINT_URL_S3``,     Tigris's (``fly storage create`` prints
                       ``AWS_ACCESS_KEY_ID``,       them)
                       ``AWS_SECRET_ACCESS_KEY``
bucket region          ``AWS_REGION``               ``auto`` (Tigris)
public URL             ``KIT_FLY_PUBLIC_URL``       ``https://<app>.fly.dev``: where new
                                                    gateways are health-checked
mail                   ``KIT_MAIL_WEBHOOK_SECRET``, none: each one set becomes a Fly
                       ``KIT_MAILGUN_SIGNING_KEY``, secret of the gateway app
                       ``KIT_POSTMARK_USER``/       (:data:`MAIL_SECRETS`, docs/email.md)
                       ``_PASSWORD``,
                       ``KIT_SMTP_RELAY``
image registry         ``KIT_FLY_REGISTRY``         ``registry.fly.io``; ``local``: this
                                                    machine's Docker daemon (the emulator)
=====================  ===========================  ==========================================
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import fly
from fly import FlyClient
from kit.bundle import build_bundle, load_project
from kit.cli import console
from kit.cli.errors import CliError
from kit.cli.statedir import make_private
from kit.deploy.fly.apply import Deployment, destroy
from kit.deploy.fly.deploy import LISTEN, deploy, desired, image_ref
from kit.deploy.fly.plan import Plan
from kit.deploy.fly.registry import FlyRegistry, LocalRegistry
from kit.deploy.fly.target import FlyTarget
from kit.storage.s3io import S3Bucket

TIGRIS = "https://fly.storage.tigris.dev"


@dataclass(frozen=True)
class FlySettings:
    """Everything ``kit deploy --target fly`` reads, read once."""

    target: FlyTarget
    project: Path
    state_dir: Path
    fly_token: str = field(repr=False)
    fly_api: str
    model_key: str = field(repr=False)
    api_token: str | None = field(repr=False)
    s3_endpoint: str
    s3_region: str
    s3_keys: tuple[str, str] = field(repr=False)
    local_registry: bool = False
    """The local Docker daemon is the registry (the emulator's machines run its images)."""
    listen: str = LISTEN
    public_url: str | None = None
    """Where Fly's proxy serves the gateway app (None: ``https://<app>.fly.dev``)."""
    mail_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The mail secrets set in the environment (:data:`MAIL_SECRETS`), carried as Fly
    secrets of the gateway app."""


def fly_settings(
    *,
    project: Path,
    state_dir: Path,
    agent_name: str,
    app: str | None,
    org: str | None,
    region: str | None,
    gateways: int,
    bucket: str | None,
    environ: Mapping[str, str],
) -> FlySettings:
    """The settings from flags and ``environ``; CliError naming what is missing."""
    token = environ.get("FLY_API_TOKEN", "").strip()
    if not token:
        raise CliError(
            "FLY_API_TOKEN is not set: make one with `fly tokens create org` (it must create "
            "apps) and export it."
        )
    try:
        api = fly.base_url(environ.get("FLY_API_HOSTNAME"))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    registry = environ.get("KIT_FLY_REGISTRY", "").strip()
    if registry not in ("", "local", "registry.fly.io"):
        raise CliError(
            f"KIT_FLY_REGISTRY={registry!r}: write local (the emulator's Docker daemon) or "
            "leave it unset (registry.fly.io)."
        )
    target = FlyTarget(
        app=app or environ.get("KIT_FLY_APP") or agent_name,
        org=org or environ.get("FLY_ORG") or "personal",
        region=region or environ.get("FLY_REGION") or "iad",
        gateways=gateways,
        bucket=bucket or "",
    )
    return FlySettings(
        target=target,
        project=project,
        state_dir=state_dir,
        fly_token=token,
        fly_api=api,
        model_key=environ.get("ANTHROPIC_API_KEY", "").strip(),
        api_token=environ.get("KIT_API_TOKEN", "").strip() or None,
        s3_endpoint=environ.get("AWS_ENDPOINT_URL_S3", "").strip() or TIGRIS,
        s3_region=environ.get("AWS_REGION", "").strip() or "auto",
        s3_keys=(
            environ.get("AWS_ACCESS_KEY_ID", "").strip(),
            environ.get("AWS_SECRET_ACCESS_KEY", "").strip(),
        ),
        local_registry=registry == "local",
        public_url=environ.get("KIT_FLY_PUBLIC_URL", "").strip() or None,
        mail_secrets=_mail_secrets(environ),
    )


MAIL_SECRETS = (
    "KIT_MAIL_WEBHOOK_SECRET",
    "KIT_MAILGUN_SIGNING_KEY",
    "KIT_POSTMARK_USER",
    "KIT_POSTMARK_PASSWORD",
    "KIT_SMTP_RELAY",
)
"""Email on Fly (docs/email.md, Fly): each one set in ``kit deploy``'s environment becomes a
Fly secret of the gateway app; one set before stays set (``fly secrets unset`` removes it)."""


def _mail_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """The mail secrets in ``environ``, checked as a gateway will read them."""
    from kit.cli.flymail import fly_mail_settings
    from kit.cli.settings import SettingsError

    found = {n: environ[n].strip() for n in MAIL_SECRETS if environ.get(n, "").strip()}
    try:
        fly_mail_settings(found)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    return found


def mail_note(address: str | None, target: FlyTarget, secret_names: set[str]) -> str | None:
    """What the deploy says about email: None without ``[mail] address``; else where mail
    is taken and what is still missing (``secret_names``: those the app will have)."""
    if address is None:
        return None
    inbound = [n for n in MAIL_SECRETS[:4] if n in secret_names]
    missing: list[str] = []
    if not inbound:
        missing.append("KIT_MAIL_WEBHOOK_SECRET (or KIT_MAILGUN_SIGNING_KEY, or KIT_POSTMARK_*)")
    if "KIT_SMTP_RELAY" not in secret_names:
        missing.append("KIT_SMTP_RELAY")
    where = f"mail to {address}: webhooks at {target.url}/v1/mail/(inbound|mailgun|postmark)"
    if missing:
        return f"{where}; off until these are set: {', '.join(missing)} (docs/email.md, Fly)."
    return f"{where}, replies through KIT_SMTP_RELAY ({', '.join(inbound)} set)."


def host_token(settings: FlySettings, *, save: bool = True) -> tuple[str, bool]:
    """The host API token clients use: ``KIT_API_TOKEN``, else the one made for this app
    before (``<state>/fly-<app>.json``, 0600), else a new one, saved there unless not
    ``save``; and whether it is new."""
    if settings.api_token:
        return settings.api_token, False
    path = settings.state_dir / f"fly-{settings.target.app}.json"
    try:
        saved = json.loads(path.read_text())
        if isinstance(saved.get("api_token"), str) and len(saved["api_token"]) >= 32:
            return str(saved["api_token"]), False
    except (OSError, ValueError, AttributeError):
        pass
    token = secrets.token_urlsafe(32)
    if save:
        save_token(settings, token)
    return token, True


def save_token(settings: FlySettings, token: str) -> None:
    """Keep the app's host API token in ``<state>/fly-<app>.json`` (0600)."""
    make_private(settings.state_dir)
    path = settings.state_dir / f"fly-{settings.target.app}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api_token": token}, f)


def _bucket(settings: FlySettings) -> S3Bucket:
    key_id, secret = settings.s3_keys
    if not key_id or not secret:
        raise CliError(
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set: the bucket's keys "
            "(`fly storage create` prints them)."
        )
    return S3Bucket.from_url(bucket_url(settings), what="bucket")


def bucket_url(settings: FlySettings) -> str:
    """The bucket as an ``s3://`` URL with its endpoint and region."""
    endpoint = quote(settings.s3_endpoint, safe="")
    return f"s3://{settings.target.bucket_name}?endpoint_url={endpoint}&region={settings.s3_region}"


def render(plan: Plan) -> str:
    """The plan as a table (or a line saying there is nothing to do)."""
    if plan.up_to_date:
        return "Nothing to change: the deployment is up to date."
    return console.table(["step", "what", "why"], plan.rows())


async def run_deploy(
    settings: FlySettings, build_image: Callable[[bool], str], *, dry_run: bool
) -> int:
    """Plan and (unless ``dry_run``) apply a deploy of the project; print the URL at the end.
    ``build_image(dry_run)`` gives the local runtime image's tag (built if need be), once
    every setting has been checked."""
    if not settings.model_key:
        raise CliError(
            "ANTHROPIC_API_KEY is not set: the gateway's model proxy needs it (it becomes a "
            "Fly secret of the gateway app, never seen by a sandbox)."
        )
    target = settings.target
    bucket = _bucket(settings)  # checked before anything is written or built
    local_image = await asyncio.to_thread(build_image, dry_run)
    bundle = build_bundle(load_project(settings.project), settings.state_dir / "bundles")
    token, new = host_token(settings, save=False)
    key_id, secret = settings.s3_keys
    values = {
        "ANTHROPIC_API_KEY": settings.model_key,
        "KIT_API_TOKEN": token,
        "FLY_API_TOKEN": settings.fly_token,
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
        **settings.mail_secrets,
    }
    bucket = _bucket(settings)
    bucket_url = f"s3://{target.bucket_name}?endpoint_url={quote(settings.s3_endpoint, safe='')}"
    image = image_ref(target, local_image)
    want = desired(target, bundle, image, values, bucket_url=bucket_url, listen=settings.listen)
    registry = LocalRegistry() if settings.local_registry else FlyRegistry(settings.fly_token)
    async with FlyClient(settings.fly_token, base_url=settings.fly_api) as api:
        to = Deployment(api, bucket, registry, settings.public_url)
        plan = await deploy(want, bundle, local_image, to, dry_run=True)
        if new and any(s.name == "KIT_API_TOKEN" for s in await _secrets(api, target.app)):
            raise CliError(
                f"{target.app} already has a host API token, and this machine does not know "
                f"it (no KIT_API_TOKEN, no {settings.state_dir}/fly-{target.app}.json): set "
                "KIT_API_TOKEN to it, or a new token would lock every client out."
            )
        console.out(f"kit deploy --target fly: {target.app} in {target.org} ({target.region})")
        console.out(render(plan))
        names = {s.name for s in await _secrets(api, target.app)} | set(values)
        note = mail_note(bundle.mail_address, target, names)
        if note is not None:
            console.out(note)
        if dry_run or plan.up_to_date:
            if new and dry_run:
                console.out(console.dim("(the host API token is made at the first deploy)"))
            return 0
        if new:
            save_token(settings, token)  # kept before the deploy makes it the gateway's secret
        await deploy(
            want, bundle, local_image, to, progress=lambda line: console.out(console.dim(line))
        )
    console.out(f"Deployed bundle {bundle.digest[:16]} to {target.url}")
    if new:
        console.out(
            f"The host API token was made now and kept in {settings.state_dir}; "
            "clients send it as KIT_API_TOKEN."
        )
    console.out(f"Chat with it:  KIT_API_TOKEN=… kit chat --url {target.url}")
    return 0


async def run_destroy(settings: FlySettings, *, yes: bool) -> int:
    """Remove what the deployment's record lists; without ``yes``, print it and stop."""
    bucket = _bucket(settings)
    async with FlyClient(settings.fly_token, base_url=settings.fly_api) as api:
        registry = LocalRegistry() if settings.local_registry else FlyRegistry(settings.fly_token)
        to = Deployment(api, bucket, registry)
        if not yes:
            listed = await destroy(settings.target, to, dry_run=True)
            if not listed:
                console.out(f"Nothing to remove: no kit deployment is recorded in {bucket.url()}.")
                return 0
            console.out("Would remove: " + ", ".join(listed))
            raise CliError("kit destroy deletes these for good: run it again with --yes.")
        removed = await destroy(
            settings.target, to, progress=lambda line: console.out(console.dim(line))
        )
    if removed:
        console.out("Removed: " + ", ".join(removed))
    else:
        console.out(f"Nothing to remove: no kit deployment is recorded in {bucket.url()}.")
    return 0


async def _secrets(api: FlyClient, app: str) -> list[fly.SecretInfo]:
    try:
        return await api.list_secrets(app)
    except fly.NotFound:
        return []
