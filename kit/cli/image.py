"""``kit image build``: plan the runtime image, print the plan, and (unless --dry-run) apply
it; ``kit image prune``: remove the runtime images other than this checkout's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import kit
from kit.cli import console
from kit.deploy.image import (
    BuiltImage,
    ImageError,
    ImagePlan,
    apply_image,
    plan_image,
    prune_images,
)


def default_checkout() -> Path:
    """The source checkout the running kit was imported from (it holds pyproject.toml)."""
    return Path(kit.__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kit/image`` (``~/.cache/kit/image``): the base root, the wheels."""
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "kit" / "image"


def render_plan(plan: ImagePlan) -> str:
    """The plan as a table: each step, whether it is done, and how it would be made."""
    rows = [
        [step.kind.value, "present" if step.present else "to make", step.target, step.how]
        for step in plan.steps
    ]
    head = f"kit {plan.version} runtime image from {plan.checkout}"
    return head + "\n" + console.table(["step", "state", "target", "how"], rows)


def build(source: Path | None, cache_dir: Path | None, dry_run: bool, docker: str) -> int:
    """Plan, print, and apply unless ``dry_run``; print the image's tag and size."""
    plan = plan_image(
        source or default_checkout(),
        cache_dir or default_cache_dir(),
        docker=docker,
        python=sys.executable,
    )
    console.out(render_plan(plan))
    if dry_run:
        return 0
    image: BuiltImage = apply_image(plan, progress=lambda line: console.out(console.dim(line)))
    verb = "Built" if image.built else "Up to date:"
    console.out(
        f"{verb} {image.tag} ({image.size_bytes / 1e6:.0f} MB, {image.seconds:.1f} s); "
        f"run it with: docker run --network none {image.tag}"
    )
    return 0


def prune(source: Path | None, cache_dir: Path | None, dry_run: bool, docker: str) -> int:
    """Remove every runtime image but the one this checkout builds (which must exist)."""
    plan = plan_image(
        source or default_checkout(),
        cache_dir or default_cache_dir(),
        docker=docker,
        python=sys.executable,
    )
    if plan.tag is None or not plan.up_to_date:
        raise ImageError(
            "this checkout's runtime image is not built, so there is nothing to keep: run "
            "`kit image build` first, then `kit image prune`."
        )
    tags = prune_images(docker, plan.tag, dry_run=dry_run)
    verb = "Would remove" if dry_run else "Removed"
    for tag in tags:
        console.out(f"{verb} {tag}")
    console.out(f"{verb} {len(tags)} image(s); kept {plan.tag}.")
    return 0


def ensure(dry_run: bool) -> str:
    """This checkout's runtime image tag, built first unless ``dry_run`` (then the tag it
    would have; ``kit-runtime:unbuilt`` while its base or wheels are still to be made)."""
    plan = plan_image(default_checkout(), default_cache_dir(), python=sys.executable)
    if dry_run:
        return plan.tag or "kit-runtime:unbuilt"
    if not plan.up_to_date:
        console.out(console.dim("building the runtime image first (kit image build)…"))
    return apply_image(plan, progress=lambda line: console.out(console.dim(line))).tag
