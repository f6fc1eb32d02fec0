"""A Cloudflare deploy as data: what is wanted (:class:`Desired`) and the steps that make
it (:func:`plan`), pure, so ``--dry-run`` is just the plan (and wrangler's own dry run).

The steps, in order: write the wrangler config, the image's Dockerfile and the chat page's
files (the Worker's static assets) into the build folder; put the Worker's secrets (``wrangler secret put``, each value on stdin); then
``wrangler deploy``, which builds the image with Docker, pushes it to Cloudflare's registry,
uploads the Worker, applies the Durable Object migrations and rolls the container
application out. Every step is safe to repeat, so a deploy cut short is finished by the next.
What is already deployed is not read first (wrangler compares the Worker and image itself):
each deploy plans every step.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.deploy.cloudflare.target import PAGE, CloudflareTarget, bundle_path

CONFIG_FILE = "wrangler.jsonc"
DOCKERFILE = "Dockerfile"
PAGE_DIR = "web"
"""The build folder's copy of the chat page (:data:`~kit.deploy.cloudflare.target.PAGE`)."""
OUTDIR = "dist"
"""Where ``--dry-run`` has wrangler write the bundled Worker."""
SECRET_WHY = {
    "KIT_API_TOKEN": "the host API token clients send",
    "ANTHROPIC_API_KEY": "the model key: a Worker secret, never in a container",
}


class StepKind(enum.StrEnum):
    """What a step does."""

    WRITE_CONFIG = "write config"
    WRITE_DOCKERFILE = "write Dockerfile"
    WRITE_PAGE = "write page"
    PUT_SECRET = "put secret"
    DEPLOY = "deploy worker"


@dataclass(frozen=True)
class Step:
    """One change: its kind, what it changes and why (no secret values)."""

    kind: StepKind
    subject: str
    why: str
    secret: str | None = None
    """For :attr:`StepKind.PUT_SECRET`: the secret's name."""


@dataclass(frozen=True)
class Desired:
    """What the deploy wants."""

    target: CloudflareTarget
    build_dir: Path
    """Where the config and the Dockerfile are written (``<state>/cloudflare/<worker>``)."""
    runtime_image: str
    """kit's runtime image on this machine's Docker (``kit-runtime:<version>-<digest>``)."""
    bundle_dir: Path
    bundle_digest: str
    config: dict[str, Any]
    """The wrangler config (:func:`kit.deploy.cloudflare.target.wrangler_config`)."""
    dockerfile: str
    secrets: Mapping[str, str] = field(repr=False)
    """Name → value (never printed, never on a command line)."""
    session_url: str | None = None
    """``[web] session_url``: where the deployed page gets a session (None: nowhere)."""

    @property
    def config_path(self) -> Path:
        return self.build_dir / CONFIG_FILE

    @property
    def dockerfile_path(self) -> Path:
        return self.build_dir / DOCKERFILE

    @property
    def page_dir(self) -> Path:
        """The Worker's static assets: the chat page's files, copied from ``kit/web``."""
        return self.build_dir / PAGE_DIR


@dataclass(frozen=True)
class Plan:
    """The steps, in order."""

    steps: tuple[Step, ...]

    def rows(self) -> list[tuple[str, str, str]]:
        """The plan as table rows (kind, subject, why)."""
        return [(step.kind.value, step.subject, step.why) for step in self.steps]


def plan(desired: Desired) -> Plan:
    """The steps that make ``desired`` (see the module docstring)."""
    target = desired.target
    steps = [
        Step(
            StepKind.WRITE_CONFIG,
            str(desired.config_path),
            f"Worker {target.worker}: SessionDO, containers at {target.tier}",
        ),
        Step(
            StepKind.WRITE_DOCKERFILE,
            str(desired.dockerfile_path),
            f"{desired.runtime_image} + bundle {desired.bundle_digest[:16]} at "
            f"{bundle_path(desired.bundle_digest)}",
        ),
        Step(
            StepKind.WRITE_PAGE,
            str(desired.page_dir),
            f"the chat page at / ({', '.join(PAGE)}); sessions from "
            + (desired.session_url or "nowhere (no [web] session_url in kit.toml)"),
        ),
    ]
    for name in sorted(desired.secrets):
        why = SECRET_WHY.get(name, "")
        steps.append(Step(StepKind.PUT_SECRET, f"{target.worker}: {name}", why, secret=name))
    steps.append(
        Step(
            StepKind.DEPLOY,
            target.worker,
            f"wrangler deploy: the Worker, the image, up to {target.max_instances} "
            f"{target.tier} containers ({target.container_app})",
        )
    )
    return Plan(tuple(steps))
