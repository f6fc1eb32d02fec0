"""A Fly deploy as data: what is wanted (:class:`Desired`), what is there (:class:`Observed`)
and the steps between them (:func:`plan`), pure, so ``--dry-run`` is just the plan and a
second deploy with nothing changed plans nothing.

The steps come in this order, each only when needed: the bucket (with the deployment's record,
:data:`RECORD_KEY`), the two apps, the gateway's
addresses, its secrets, the image in Fly's registry, the bundle in the bucket, the pointer
to the current deploy (``deploy/current.json``: bundle digest and image, what the gateways
give the next sandbox), then the gateway machines: created, updated one at a time when their
config or secrets changed (never for a bundle-only change), or destroyed past the count.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from fly import MachineConfig
from kit.deploy.errors import DeployError
from kit.deploy.fly.target import CONFIG_KEY, SECRETS_KEY, FlyTarget

RECORD_KEY = "kit/deployment.json"
"""The deployment's record in its bucket: the apps kit made, and whether it made the bucket.
``kit destroy`` removes only what it lists."""
LIVE = ("created", "starting", "started", "updating", "replacing", "restarting")
GONE = ("destroyed", "destroying")


class StepKind(enum.StrEnum):
    """What a step does."""

    CREATE_APP = "create app"
    CREATE_BUCKET = "create bucket"
    ASSIGN_IP = "assign address"
    SET_SECRETS = "set secrets"
    PUSH_IMAGE = "push image"
    UPLOAD_BUNDLE = "upload bundle"
    SET_CURRENT = "point to"
    CREATE_GATEWAY = "create gateway machine"
    UPDATE_GATEWAY = "update gateway machine"
    DESTROY_GATEWAY = "destroy gateway machine"


@dataclass(frozen=True)
class Step:
    """One change: its kind, what it changes and why (no secret values)."""

    kind: StepKind
    subject: str
    why: str


@dataclass(frozen=True)
class GatewayMachine:
    """A gateway machine as observed: its metadata's config and secrets digests."""

    id: str
    state: str
    config_sha: str
    secrets_sha: str


@dataclass(frozen=True)
class Desired:
    """What the deploy wants."""

    target: FlyTarget
    image: str
    """The runtime image's reference in Fly's registry (``registry.fly.io/<app>:<tag>``)."""
    bundle_digest: str
    gateway: MachineConfig
    secrets: Mapping[str, str] = field(repr=False)
    """Name → value (never printed)."""


@dataclass(frozen=True)
class Observed:
    """What is there now (read by :func:`kit.deploy.fly.apply.observe`)."""

    apps: frozenset[str] = frozenset()
    record: frozenset[str] | None = None
    """The apps the bucket's deployment record says kit made (None: no record, or no
    bucket)."""
    bucket: bool = False
    ip_kinds: frozenset[str] = frozenset()
    """``v6`` and/or ``v4`` (shared or dedicated)."""
    secret_names: frozenset[str] = frozenset()
    image: bool = False
    bundle: bool = False
    current: str | None = None
    """The digest and image ``deploy/current.json`` points to, as ``<bundle>@<image>``."""
    gateways: tuple[GatewayMachine, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The steps, in order; empty: the deployment is as wanted."""

    steps: tuple[Step, ...]

    @property
    def up_to_date(self) -> bool:
        return not self.steps

    def rows(self) -> list[tuple[str, str, str]]:
        """The plan as table rows (kind, subject, why), for ``--dry-run``."""
        return [(step.kind.value, step.subject, step.why) for step in self.steps]


def current_of(desired: Desired) -> str:
    """What ``deploy/current.json`` should point to."""
    return f"{desired.bundle_digest}@{desired.image}"


def plan(desired: Desired, observed: Observed) -> Plan:
    """The steps from ``observed`` to ``desired`` (see the module docstring)."""
    target = desired.target
    strangers = sorted(observed.apps - (observed.record or frozenset()))
    if strangers:
        raise DeployError(
            f"Fly app {strangers[0]} exists but this deployment's record "
            f"(s3://{target.bucket_name}/{RECORD_KEY}) does not list it: it was not made by "
            "kit deploy. Pass another --app (or --bucket, if the record is elsewhere)."
        )
    steps: list[Step] = []
    if not observed.bucket:
        steps.append(Step(StepKind.CREATE_BUCKET, target.bucket_name, "logs, leases, bundles"))
    for app, why in (
        (target.app, "the gateway: kit gateway behind Fly's proxy"),
        (target.sandbox_app, "one machine per active session"),
    ):
        if app not in observed.apps:
            steps.append(Step(StepKind.CREATE_APP, app, why))
    for kind in ("v6", "v4"):
        if kind not in observed.ip_kinds:
            shared = " (shared)" if kind == "v4" else ""
            steps.append(Step(StepKind.ASSIGN_IP, f"{target.app} {kind}{shared}", "public"))
    secrets_sha = str(desired.gateway.get("metadata", {}).get(SECRETS_KEY, ""))
    missing = sorted(set(desired.secrets) - observed.secret_names)
    changed = any(g.secrets_sha != secrets_sha for g in observed.gateways)
    if missing or changed or not observed.gateways:
        names = ", ".join(sorted(desired.secrets))
        why = f"missing: {', '.join(missing)}" if missing else "changed or not yet read"
        steps.append(Step(StepKind.SET_SECRETS, f"{target.app}: {names}", why))
    if not observed.image:
        steps.append(Step(StepKind.PUSH_IMAGE, desired.image, "not in the registry"))
    if not observed.bundle:
        steps.append(Step(StepKind.UPLOAD_BUNDLE, desired.bundle_digest[:16], "new bundle"))
    if observed.current != current_of(desired):
        steps.append(
            Step(StepKind.SET_CURRENT, desired.bundle_digest[:16], "the next sandboxes run it")
        )
    config_sha = str(desired.gateway.get("metadata", {}).get(CONFIG_KEY, ""))
    # A stopped or failed gateway serves no one: replaced, as are any past the count.
    live = [g for g in observed.gateways if g.state in LIVE]
    dead = [g for g in observed.gateways if g.state not in LIVE and g.state not in GONE]
    for machine in dead:
        steps.append(Step(StepKind.DESTROY_GATEWAY, machine.id, f"{machine.state}: replaced"))
    for machine in live[: target.gateways]:
        if machine.config_sha != config_sha or machine.secrets_sha != secrets_sha:
            why = "new config" if machine.config_sha != config_sha else "new secrets"
            steps.append(Step(StepKind.UPDATE_GATEWAY, machine.id, why))
    for n in range(len(live), target.gateways):
        steps.append(Step(StepKind.CREATE_GATEWAY, f"{target.app} #{n + 1}", target.region))
    for machine in live[target.gateways :]:
        steps.append(Step(StepKind.DESTROY_GATEWAY, machine.id, "more than --gateways"))
    return Plan(tuple(steps))
