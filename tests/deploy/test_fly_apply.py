"""``kit deploy --target fly``'s plan carried out against the Fly API emulator (real HTTP on
loopback, Fly's semantics and rate limits), moto's S3 and this machine's Docker daemon as the
registry: a first deploy makes everything, a second plans nothing, a bundle-only change
touches no machine, and destroy leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulator.fly_api import InProcessRunner, Served, serve
from fly import FlyClient
from kit.bundle import build_bundle, load_project
from kit.bundle.build import Bundle
from kit.deploy.fly.apply import CURRENT_KEY, Deployment, bundle_key, destroy
from kit.deploy.fly.deploy import deploy, desired, image_ref
from kit.deploy.fly.plan import StepKind
from kit.deploy.fly.registry import LocalRegistry
from kit.deploy.fly.target import FlyTarget
from kit.storage.s3io import S3Bucket
from tests.conftest import serve_on_loopback
from tests.emulator.fly_api.tiny_image import tiny_image

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fly-deploy-test-token"
TARGET = FlyTarget(app="acme-support", gateways=2, bucket="acme-support-deploy-test")
SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-test-not-real", "KIT_API_TOKEN": "k" * 40}


def healthy_app() -> Starlette:
    """Answers ``/healthz`` 200, whatever machine it is asked for."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/healthz", healthz)])


@dataclass
class Rig:
    served: Served
    to: Deployment
    local_image: str
    project: Path
    bundles: Path

    def bundle(self) -> Bundle:
        return build_bundle(load_project(self.project), self.bundles)


@pytest.fixture
async def rig(kit_tmp: Path, s3_endpoint: str) -> AsyncIterator[Rig]:
    local = tiny_image()
    project = kit_tmp / "project"
    shutil.copytree(REPO / "skills" / "support-bot", project)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    async with (
        serve(token=TOKEN, runner=InProcessRunner()) as served,
        FlyClient(TOKEN, base_url=served.url) as api,
        serve_on_loopback(healthy_app()) as public,
    ):
        # Machines of the in-process runner serve nothing: Fly's proxy and the gateways'
        # /healthz are stood in for by one server that is always healthy.
        to = Deployment(api, S3Bucket(s3, TARGET.bucket_name), LocalRegistry(), public)
        yield Rig(served, to, local, project, kit_tmp / "bundles")
        await destroy(TARGET, to)


async def test_deploy_twice_then_a_new_bundle_then_destroy(rig: Rig) -> None:
    """The whole life of a deployment against the emulator. (Broken on purpose once: with
    the pointer written on every deploy, the second deploy planned a step.)"""
    bundle = rig.bundle()
    image = image_ref(TARGET, rig.local_image)
    want = desired(TARGET, bundle, image, SECRETS, bucket_url="s3://acme-support-deploy-test")
    lines: list[str] = []
    first = await deploy(want, bundle, rig.local_image, rig.to, progress=lines.append)
    assert StepKind.CREATE_GATEWAY in [s.kind for s in first.steps]
    assert len(lines) == len(first.steps)
    api = rig.to.api
    gateways = await api.list_machines(TARGET.app, metadata={"kit_role": "gateway"})
    assert [g.state for g in gateways] == ["started", "started"]
    assert {s.name for s in await api.list_secrets(TARGET.app)} == set(SECRETS)
    assert await api.find_app(TARGET.sandbox_app) is not None
    assert len(await api.list_ips(TARGET.app)) == 2
    assert await rig.to.registry.has(image)
    pointer = json.loads(await rig.to.bucket.get(CURRENT_KEY) or b"{}")
    assert (pointer["bundle"], pointer["image"]) == (bundle.digest, image)
    assert await rig.to.bucket.get(bundle_key(bundle.digest))

    again = await deploy(want, bundle, rig.local_image, rig.to)
    assert again.steps == ()

    (rig.project / "prompt.md").write_text("You are Acme's new support agent.\n")
    changed = rig.bundle()
    assert changed.digest != bundle.digest
    want2 = desired(TARGET, changed, image, SECRETS, bucket_url="s3://acme-support-deploy-test")
    third = await deploy(want2, changed, rig.local_image, rig.to)
    assert [s.kind for s in third.steps] == [StepKind.UPLOAD_BUNDLE, StepKind.SET_CURRENT]
    after = await api.list_machines(TARGET.app, metadata={"kit_role": "gateway"})
    assert [(g.id, g.version) for g in after] == [(g.id, g.version) for g in gateways]
    pointer = json.loads(await rig.to.bucket.get(CURRENT_KEY) or b"{}")
    assert pointer["bundle"] == changed.digest

    removed = await destroy(TARGET, rig.to)
    assert removed == [
        f"app {TARGET.sandbox_app}",
        f"app {TARGET.app}",
        f"image {image}",
        f"bucket {TARGET.bucket_name}",
    ]
    assert not await rig.to.registry.has(image)
    assert await api.find_app(TARGET.app) is None
    assert not await rig.to.bucket.exists()
    assert await destroy(TARGET, rig.to) == []  # nothing left: nothing to do


async def test_a_dry_run_changes_nothing(rig: Rig) -> None:
    """``--dry-run`` plans everything and creates nothing."""
    bundle = rig.bundle()
    image = image_ref(TARGET, rig.local_image)
    want = desired(TARGET, bundle, image, SECRETS, bucket_url="s3://acme-support-deploy-test")
    steps = await deploy(want, bundle, rig.local_image, rig.to, dry_run=True)
    assert len(steps.steps) == 11
    assert await rig.to.api.find_app(TARGET.app) is None
    assert not await rig.to.bucket.exists()
