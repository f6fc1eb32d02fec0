"""Whether Docker can run here, for the tests that need it (they skip, saying why, when not).

``scripts/docker-up`` starts the daemon the way kit needs it (ARCHITECTURE §9)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kit.cli.image import default_cache_dir, default_checkout
from kit.cli.statedir import host_id
from kit.deploy.image import BaseRecipe, BuiltImage, apply_image, plan_image


@functools.cache
def docker_missing() -> str | None:
    """Why Docker cannot be used here, or None when a daemon answers."""
    if shutil.which("docker") is None:
        return "no docker CLI (run scripts/docker-up as root to install and start Docker)"
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer `docker version` within 20 s"
    if done.returncode != 0:
        return f"no Docker daemon answers (run scripts/docker-up): {done.stderr.strip()[:200]}"
    return None


def need_docker() -> None:
    """Skip the calling test, saying why, unless a Docker daemon answers."""
    reason = docker_missing()
    if reason:
        pytest.skip(reason)


@functools.cache
def runtime_image() -> BuiltImage:
    """kit's runtime image for this checkout, built if missing (the first time: ~2 min)."""
    need_docker()
    plan = plan_image(default_checkout(), default_cache_dir())
    if not plan.steps[0].present and os.geteuid() != 0:
        pytest.skip(f"the base image {BaseRecipe().tag} is missing and making it needs root")
    return apply_image(plan)


def containers_of(session_id: str) -> list[str]:
    """The ids of every container (running or not) a sandbox of ``session_id`` left."""
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=kit.session={session_id}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return done.stdout.split()


def cf_containers(state_dir: Path) -> list[str]:
    """The ids of every container that the Cloudflare rehearsal on ``state_dir`` left on
    this host (its container emulator's runner label)."""
    return _labelled(f"kit.cf.runner=rehearsal-{host_id(state_dir)}")


def fly_containers(state_dir: Path) -> list[str]:
    """The ids of every container (running or not) that the Fly rehearsal on ``state_dir``
    left on this host (its runner's label: other runs on the host are not its business)."""
    return _labelled(f"kit.fly.runner=rehearsal-{host_id(state_dir)}")


def _labelled(label: str) -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return done.stdout.split()
