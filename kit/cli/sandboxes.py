"""The sandbox provider ``kit dev`` and ``kit gateway`` run on: ``local`` (process groups
forked by the fork server) or ``docker`` (containers of kit's runtime image, built here
the first time; ``scripts/docker-up`` starts Docker as ARCHITECTURE §9 says)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from emulator.sandbox import LocalSandboxProvider
from emulator.sandbox.docker import DockerSandboxProvider
from emulator.sandbox.dockerapi import DockerClient
from emulator.sandbox.machine import MachineProvider
from kit.cli.image import default_cache_dir, default_checkout
from kit.cli.settings import DevSettings
from kit.deploy.image import apply_image, plan_image
from kit.errors import KitError


async def open_provider(
    settings: DevSettings,
    bundles: Path,
    *,
    host_id: str,
    progress: Callable[[str], None] | None = None,
) -> MachineProvider:
    """The provider ``settings.sandbox`` names, sandboxes' folders under the state dir;
    ``host_id`` labels its containers (:func:`kit.cli.statedir.host_id`)."""
    root = settings.state_dir / "sandboxes"
    if settings.sandbox == "local":
        return LocalSandboxProvider(
            root,
            bundles=bundles,
            user=settings.sandbox_user,
            isolation=settings.sandbox_isolation,
            env=settings.sandbox_env,
            store_retry_s=settings.store_retry_s,
            store_deadline_s=settings.store_deadline_s,
        )
    client = DockerClient()
    try:
        await client.version()
    except KitError as exc:
        await client.close()
        raise KitError(
            f"--sandbox docker: {exc} Start Docker with scripts/docker-up (as root), or run "
            "sandboxes as local processes (--sandbox local)."
        ) from None
    plan = plan_image(default_checkout(), default_cache_dir(), python=sys.executable)
    if progress is not None and not all(step.present for step in plan.steps):
        progress("building kit's runtime image (the first time takes ~2 min)")
    image = await asyncio.to_thread(apply_image, plan, progress or (lambda _: None))
    return DockerSandboxProvider(
        root,
        bundles,
        image.tag,
        host_id=host_id,
        client=client,
        store_retry_s=settings.store_retry_s,
        store_deadline_s=settings.store_deadline_s,
    )
