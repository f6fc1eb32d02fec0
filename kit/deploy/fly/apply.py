"""Carrying out a Fly deploy: read what is there (:func:`observe`), do the plan's steps
(:func:`apply`), or take it all down (:func:`destroy`). The Machines API through
:class:`fly.FlyClient`, the bucket through :class:`kit.storage.s3io.S3Bucket`, the image
through a :class:`Registry`.

Every step is safe to repeat: a deploy cut short is finished by the next one, which plans
only what is still missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

import fly
from fly import FlyClient
from kit.bundle.archive import pack
from kit.bundle.build import Bundle
from kit.deploy.errors import DeployError
from kit.deploy.fly.plan import (
    RECORD_KEY,
    Desired,
    GatewayMachine,
    Observed,
    Plan,
    Step,
    StepKind,
    current_of,
)
from kit.deploy.fly.target import CONFIG_KEY, ROLE_KEY, SECRETS_KEY, FlyTarget
from kit.storage.errors import StoreError
from kit.storage.s3io import S3Bucket

CURRENT_KEY = "deploy/current.json"
"""The bucket's pointer to the current deploy: ``{bundle, image, deployed_at}``."""
KIT_PREFIXES = ("bundles/", "deploy/", "logs/", "transcripts/", "kit/")
"""What kit keeps in a deployment's bucket (the record, under ``kit/``, goes last)."""
START_TIMEOUT_S = 300.0
HEALTH_POLL_S = 0.5

Progress = Callable[[str], None]


def bundle_key(digest: str) -> str:
    """Where a bundle's archive is in the bucket."""
    return f"bundles/{digest}.tar"


class Registry(Protocol):
    """Where machines pull the runtime image from."""

    async def has(self, ref: str) -> bool:
        """Whether ``ref`` is there."""

    async def push(self, local: str, ref: str) -> None:
        """Make the local image ``local`` available as ``ref``."""

    async def forget(self, app: str) -> list[str]:
        """Remove what was pushed for ``app`` where deleting the app does not; what went."""


@dataclass(frozen=True)
class Deployment:
    """What a deploy talks to."""

    api: FlyClient
    bucket: S3Bucket
    registry: Registry
    public_url: str | None = None
    """Where Fly's proxy serves the gateway app (default ``https://<app>.fly.dev``): a new
    or updated gateway counts as up once it answers ``/healthz`` there (reached with
    ``fly-force-instance-id``)."""


async def observe(desired: Desired, to: Deployment) -> Observed:
    """What of ``desired`` is there now (reads only)."""
    target = desired.target
    try:
        apps = frozenset(
            [app for app in (target.app, target.sandbox_app) if await to.api.find_app(app)]
        )
        ips: frozenset[str] = frozenset()
        secrets: frozenset[str] = frozenset()
        gateways: tuple[GatewayMachine, ...] = ()
        if target.app in apps:
            ips = frozenset(
                "v6" if ":" in ip.ip else "v4" for ip in await to.api.list_ips(target.app)
            )
            secrets = frozenset(s.name for s in await to.api.list_secrets(target.app))
            machines = await to.api.list_machines(target.app, metadata={ROLE_KEY: "gateway"})
            gateways = tuple(
                GatewayMachine(
                    m.id, m.state, m.metadata.get(CONFIG_KEY, ""), m.metadata.get(SECRETS_KEY, "")
                )
                for m in sorted(machines, key=lambda m: m.created_at)
            )
    except fly.FlyError as exc:
        raise DeployError(f"Reading the Fly apps failed: {exc}") from exc
    try:
        bucket = await to.bucket.exists()
        bundle = bucket and await to.bucket.get(bundle_key(desired.bundle_digest)) is not None
        current = await _current(to.bucket) if bucket else None
        found = await read_record(to.bucket) if bucket else None
    except StoreError as exc:
        raise DeployError(f"Reading the bucket {target.bucket_name} failed: {exc}") from exc
    return Observed(
        apps=apps,
        record=frozenset(found["apps"]) if found is not None else None,
        bucket=bucket,
        ip_kinds=ips,
        secret_names=secrets,
        image=await to.registry.has(desired.image),
        bundle=bundle,
        current=current,
        gateways=gateways,
    )


async def read_record(bucket: S3Bucket) -> dict[str, Any] | None:
    """The deployment's record (``{"apps": [...], "made_bucket": bool}``), or None."""
    raw = await bucket.get(RECORD_KEY)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        apps = [str(a) for a in data["apps"]]
        return {"apps": apps, "made_bucket": data.get("made_bucket") is True}
    except (ValueError, KeyError, TypeError):
        raise DeployError(
            f"{bucket.url(RECORD_KEY)} is not a kit deployment record; it was changed by hand."
        ) from None


async def _note(bucket: S3Bucket, *, app: str | None = None, made_bucket: bool = False) -> None:
    """Add ``app`` (and, when kit made it, the bucket) to the deployment's record."""
    record = await read_record(bucket) or {"apps": [], "made_bucket": False}
    if app is not None and app not in record["apps"]:
        record["apps"].append(app)
    record["made_bucket"] = record["made_bucket"] or made_bucket
    await bucket.put(RECORD_KEY, json.dumps(record).encode())


async def _current(bucket: S3Bucket) -> str | None:
    raw = await bucket.get(CURRENT_KEY)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return f"{data['bundle']}@{data['image']}"
    except (ValueError, KeyError, TypeError):
        return None


async def apply(
    plan: Plan,
    desired: Desired,
    bundle: Bundle,
    local_image: str,
    to: Deployment,
    progress: Progress = lambda _: None,
) -> None:
    """Do ``plan``'s steps in order (each reported to ``progress`` first)."""
    secrets_version: int | None = None
    for step in plan.steps:
        progress(f"{step.kind.value}: {step.subject}")
        try:
            secrets_version = await _do(step, desired, bundle, local_image, to, secrets_version)
        except fly.FlyError as exc:
            raise DeployError(f"{step.kind.value} {step.subject} failed: {exc}") from exc
        except StoreError as exc:
            raise DeployError(f"{step.kind.value} {step.subject} failed: {exc}") from exc


async def _do(
    step: Step,
    desired: Desired,
    bundle: Bundle,
    local_image: str,
    to: Deployment,
    secrets_version: int | None,
) -> int | None:
    target, api = desired.target, to.api
    match step.kind:
        case StepKind.CREATE_APP:
            await _create_app(api, to.bucket, step.subject, target.org)
        case StepKind.CREATE_BUCKET:
            await to.bucket.create()
            await _note(to.bucket, made_bucket=True)
        case StepKind.ASSIGN_IP:
            await api.assign_ip(target.app, "v6" if "v6" in step.subject else "shared_v4")
        case StepKind.SET_SECRETS:
            return await api.set_secrets(target.app, desired.secrets)
        case StepKind.PUSH_IMAGE:
            await to.registry.push(local_image, desired.image)
        case StepKind.UPLOAD_BUNDLE:
            await to.bucket.put_if_absent(bundle_key(bundle.digest), pack(bundle))
        case StepKind.SET_CURRENT:
            bundle_digest, _, image = current_of(desired).partition("@")
            pointer = {"bundle": bundle_digest, "image": image, "deployed_at": int(time.time())}
            await to.bucket.put(CURRENT_KEY, json.dumps(pointer).encode())
        case StepKind.CREATE_GATEWAY:
            machine = await api.create_machine(
                target.app,
                desired.gateway,
                region=target.region,
                min_secrets_version=secrets_version,
            )
            await _until_serving(to, target, machine)
        case StepKind.UPDATE_GATEWAY:
            async with api.leased(
                target.app, step.subject, ttl_s=120, description="kit deploy"
            ) as lease:
                machine = await api.update_machine(
                    target.app,
                    step.subject,
                    desired.gateway,
                    min_secrets_version=secrets_version,
                    nonce=lease.nonce,
                )
            await _until_serving(to, target, machine)
        case StepKind.DESTROY_GATEWAY:
            await api.delete_machine(target.app, step.subject, force=True)
    return secrets_version


async def _until_serving(to: Deployment, target: FlyTarget, machine: fly.Machine) -> None:
    """Until the gateway machine is started and answers ``/healthz`` through Fly's proxy
    (a started machine may not be listening yet): one at a time, so an update rolls."""
    await to.api.wait(
        target.app,
        machine.id,
        "started",
        version=machine.version or None,
        timeout_s=START_TIMEOUT_S,
    )
    url = (to.public_url or target.url).rstrip("/") + "/healthz"
    headers = {"fly-force-instance-id": machine.id}
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        for _ in range(int(START_TIMEOUT_S / HEALTH_POLL_S)):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url, headers=headers)).status_code == 200:
                    return
            await asyncio.sleep(HEALTH_POLL_S)
    raise DeployError(
        f"Gateway machine {machine.id} started but did not answer {url} within "
        f"{START_TIMEOUT_S:g} s; see its logs: fly logs -a {target.app} -i {machine.id}"
    )


async def _create_app(api: FlyClient, bucket: S3Bucket, name: str, org: str) -> None:
    """Create app ``name``, noted in the record first (a deploy cut short after the create
    still owns it); a name someone else has is taken off the record again and refused."""
    await _note(bucket, app=name)
    try:
        await api.create_app(name, org)
    except fly.NameTaken:
        record = await read_record(bucket)
        if record is not None and name in record["apps"]:
            record["apps"].remove(name)
            await bucket.put(RECORD_KEY, json.dumps(record).encode())
        raise DeployError(
            f"The Fly app name {name!r} is taken (app names are global across Fly); pass "
            "another --app."
        ) from None


async def destroy(
    target: FlyTarget, to: Deployment, progress: Progress = lambda _: None, *, dry_run: bool = False
) -> list[str]:
    """Remove what a deploy of ``target`` made, as its bucket's record lists it: the apps
    (with their machines, addresses and secrets), the image where the app does not take it
    along, kit's objects in the bucket, and the bucket if kit made it. Nothing when there is
    no record. What was (with ``dry_run``: would be) removed, as lines."""
    try:
        record = await read_record(to.bucket) if await to.bucket.exists() else None
    except StoreError as exc:
        raise DeployError(f"Reading the bucket {target.bucket_name} failed: {exc}") from exc
    if record is None:
        return []
    removed: list[str] = []
    for app in sorted(record["apps"], key=lambda a: a != target.sandbox_app):
        try:
            if await to.api.find_app(app) is not None:
                removed.append(f"app {app}")
                if not dry_run:
                    progress(f"delete app: {app}")
                    await to.api.delete_app(app)
        except fly.FlyError as exc:
            raise DeployError(f"Deleting the Fly app {app} failed: {exc}") from exc
    if not dry_run:
        for tag in await to.registry.forget(target.app):
            removed.append(f"image {tag}")
    what = (
        f"bucket {target.bucket_name}"
        if record["made_bucket"]
        else (f"kit's objects in bucket {target.bucket_name}")
    )
    removed.append(what)
    if dry_run:
        return removed
    progress(f"delete {what}")
    try:
        if record["made_bucket"]:
            await to.bucket.delete_bucket()
        else:
            for prefix in KIT_PREFIXES:
                await to.bucket.delete_many(await to.bucket.list_keys(prefix))
    except StoreError as exc:
        raise DeployError(f"Deleting {what} failed: {exc}") from exc
    return removed
