"""The Fly deploy plan, pure: a first deploy makes everything, a second with nothing changed
plans nothing, and each kind of change touches only what it must."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kit.deploy.errors import DeployError
from kit.deploy.fly.plan import Desired, GatewayMachine, Observed, StepKind, plan
from kit.deploy.fly.target import (
    CONFIG_KEY,
    SECRETS_KEY,
    FlyTarget,
    gateway_config,
    guest_for,
    secrets_digest,
)

TARGET = FlyTarget(app="acme-support", gateways=2)
SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-x", "KIT_API_TOKEN": "t" * 32}


def desired(
    image: str = "registry.fly.io/acme-support:0.1.0-abc",
    bundle: str = "b" * 64,
    secrets: dict[str, str] | None = None,
    target: FlyTarget = TARGET,
) -> Desired:
    secrets = secrets or SECRETS
    config = gateway_config(target, image, {"KIT_LISTEN": "[::]:8080"}, secrets_digest(secrets))
    return Desired(target, image, bundle, config, secrets)


def deployed(want: Desired) -> Observed:
    """What is there once ``want`` is applied."""
    meta = want.gateway.get("metadata", {})
    machines = tuple(
        GatewayMachine(f"m{n}", "started", meta[CONFIG_KEY], meta[SECRETS_KEY])
        for n in range(want.target.gateways)
    )
    apps = frozenset({want.target.app, want.target.sandbox_app})
    return Observed(
        apps=apps,
        record=apps,
        bucket=True,
        ip_kinds=frozenset({"v4", "v6"}),
        secret_names=frozenset(want.secrets),
        image=True,
        bundle=True,
        current=f"{want.bundle_digest}@{want.image}",
        gateways=machines,
    )


def kinds(want: Desired, seen: Observed) -> list[StepKind]:
    return [step.kind for step in plan(want, seen).steps]


def test_a_first_deploy_makes_everything_in_order() -> None:
    """Bucket (with the record), apps, addresses, secrets, image, bundle, pointer, then the
    gateways."""
    assert kinds(desired(), Observed()) == [
        StepKind.CREATE_BUCKET,
        StepKind.CREATE_APP,
        StepKind.CREATE_APP,
        StepKind.ASSIGN_IP,
        StepKind.ASSIGN_IP,
        StepKind.SET_SECRETS,
        StepKind.PUSH_IMAGE,
        StepKind.UPLOAD_BUNDLE,
        StepKind.SET_CURRENT,
        StepKind.CREATE_GATEWAY,
        StepKind.CREATE_GATEWAY,
    ]


def test_a_second_deploy_with_nothing_changed_plans_nothing() -> None:
    """Idempotent: the plan of a deployed target is empty. (Broken on purpose once: with the
    secrets set on every run, this planned a step.)"""
    want = desired()
    assert plan(want, deployed(want)).up_to_date


def test_a_bundle_only_change_touches_no_machine() -> None:
    """A new bundle is uploaded and pointed to; the gateways are not restarted (the next
    sandbox takes the bundle from the pointer)."""
    before = deployed(desired())
    assert kinds(desired(bundle="c" * 64), replace(before, bundle=False)) == [
        StepKind.UPLOAD_BUNDLE,
        StepKind.SET_CURRENT,
    ]


def test_a_new_image_or_secret_updates_every_gateway() -> None:
    """A new runtime image is pushed and the gateways updated one by one; a changed secret
    is set and the gateways updated to read it."""
    before = deployed(desired())
    image = "registry.fly.io/acme-support:0.1.0-def"
    assert kinds(desired(image=image), replace(before, image=False)) == [
        StepKind.PUSH_IMAGE,
        StepKind.SET_CURRENT,
        StepKind.UPDATE_GATEWAY,
        StepKind.UPDATE_GATEWAY,
    ]
    rotated = {**SECRETS, "ANTHROPIC_API_KEY": "sk-ant-y"}
    steps = plan(desired(secrets=rotated), before).steps
    assert [s.kind for s in steps] == [
        StepKind.SET_SECRETS,
        StepKind.UPDATE_GATEWAY,
        StepKind.UPDATE_GATEWAY,
    ]
    assert all("sk-ant" not in f"{s.subject} {s.why}" for s in steps)  # no value printed


def test_the_gateway_count_is_held() -> None:
    """A larger count creates gateways (and updates the others: the count is in their
    service's min_machines_running); a smaller one destroys the extra."""
    want = desired()
    three = desired(target=replace(TARGET, gateways=3))
    assert kinds(three, deployed(want)) == [
        StepKind.UPDATE_GATEWAY,
        StepKind.UPDATE_GATEWAY,
        StepKind.CREATE_GATEWAY,
    ]
    one = desired(target=replace(TARGET, gateways=1))
    assert kinds(one, deployed(want)) == [StepKind.UPDATE_GATEWAY, StepKind.DESTROY_GATEWAY]


def test_sizes_and_names() -> None:
    """Cloudflare tiers map to the smallest Fly size with their CPU share and memory; Fly
    presets stay; a bad app name is refused naming the flag."""
    assert guest_for("lite") == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}
    assert guest_for("basic") == {"cpu_kind": "shared", "cpus": 4, "memory_mb": 1024}
    assert guest_for("standard-1") == {"cpu_kind": "shared", "cpus": 8, "memory_mb": 4096}
    assert guest_for("standard-2") == {"cpu_kind": "performance", "cpus": 1, "memory_mb": 6144}
    assert guest_for("standard-4") == {"cpu_kind": "performance", "cpus": 4, "memory_mb": 12288}
    assert guest_for("performance-2x") == {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}
    assert guest_for("shared-cpu-1x") == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}
    with pytest.raises(DeployError, match="--app"):
        FlyTarget(app="Acme_Support")
    assert TARGET.sandbox_app == "acme-support-sandboxes"


def test_an_app_kit_did_not_make_is_refused() -> None:
    """An app of the deployment's name that its record does not list (someone's own app) is
    refused naming the flag, before any step. (Broken on purpose once: it was adopted, and
    kit destroy would have deleted it.)"""
    with pytest.raises(DeployError, match="not made by kit deploy"):
        plan(desired(), Observed(apps=frozenset({TARGET.app})))
    with pytest.raises(DeployError, match="--app"):
        plan(desired(), Observed(apps=frozenset({TARGET.app}), record=frozenset(), bucket=True))


def test_a_stopped_or_failed_gateway_is_replaced() -> None:
    """A gateway that is not running serves no one: it is destroyed and a new one made;
    the running one stays."""
    want = desired()
    before = deployed(want)
    stopped = replace(before.gateways[1], state="stopped")
    seen = replace(before, gateways=(before.gateways[0], stopped))
    assert kinds(want, seen) == [StepKind.DESTROY_GATEWAY, StepKind.CREATE_GATEWAY]
