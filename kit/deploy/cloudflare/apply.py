"""Carrying out a Cloudflare deploy with wrangler: write the build folder
(:func:`write_build`), check it offline (:func:`dry_run`), read the Worker's secret names
(:func:`secret_names`), do the plan's steps (:func:`apply`), or take it all down
(:func:`destroy`).

The build folder (``<state>/cloudflare/<worker>/``) holds the generated ``wrangler.jsonc``
(``main`` is the shim's ``src/index.ts`` by absolute path: the shim's folder is never
written), the image's ``Dockerfile`` and ``web/``, the chat page's files (the Worker's
static assets, copied from ``kit/web``); wrangler runs there.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from kit.deploy.cloudflare.plan import OUTDIR, Desired, Plan, StepKind
from kit.deploy.cloudflare.target import CONFIG_HEADER, PAGE, CloudflareTarget
from kit.deploy.cloudflare.wrangler import Wrangler
from kit.deploy.errors import DeployError, WranglerError
from kit.private import DIR_MODE, write_private
from kit.web import WEB_DIR

WORKERS_DEV_URL = re.compile(r"https://[a-z0-9][a-z0-9.-]*\.workers\.dev\b")

Progress = Callable[[str], None]


def write_build(desired: Desired) -> None:
    """Write the wrangler config and the Dockerfile into the build folder (0700)."""
    desired.build_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    desired.build_dir.chmod(DIR_MODE)
    text = CONFIG_HEADER + json.dumps(desired.config, indent=2) + "\n"
    write_private(desired.config_path, text)
    write_private(desired.dockerfile_path, desired.dockerfile)
    write_page(desired.page_dir)


def write_page(folder: Path) -> None:
    """Copy the chat page's files (:data:`~kit.deploy.cloudflare.target.PAGE`, nothing else
    of ``kit/web``) into ``folder``, which then holds exactly them: the Worker's assets."""
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for stale in list(folder.iterdir()):
        if stale.name not in PAGE and not stale.is_dir():
            stale.unlink()
    for name in PAGE:
        write_private(folder / name, (WEB_DIR / name).read_text(encoding="utf-8"))


async def dry_run(desired: Desired, wrangler: Wrangler) -> str:
    """Write the build folder and have wrangler bundle the Worker into ``<build>/dist``
    without deploying it (``--containers-rollout=none``: no Docker build, no network);
    wrangler's output."""
    write_build(desired)
    return await wrangler.run(
        "deploy",
        "--dry-run",
        "--containers-rollout=none",
        "--outdir",
        str(desired.build_dir / OUTDIR),
        "-c",
        str(desired.config_path),
    )


async def secret_names(wrangler: Wrangler, worker: str, config: Path) -> frozenset[str] | None:
    """The names of the Worker's secrets; None when there is no such Worker."""
    try:
        out = await wrangler.run("secret", "list", "--format", "json", "-c", str(config))
    except WranglerError as exc:
        if _not_found(exc, worker):
            return None
        raise
    listed = _json_in(out, "secret list")
    return frozenset(str(s["name"]) for s in listed if isinstance(s, dict) and "name" in s)


async def apply(
    steps: Plan, desired: Desired, wrangler: Wrangler, progress: Progress = lambda _: None
) -> str | None:
    """Do the plan's steps in order; the Worker's ``workers.dev`` URL from wrangler's
    output (None when it printed none: no workers.dev subdomain on the account)."""
    config = str(desired.config_path)
    url = None
    for step in steps.steps:
        progress(f"{step.kind.value}: {step.subject}")
        if step.kind in (StepKind.WRITE_CONFIG, StepKind.WRITE_DOCKERFILE, StepKind.WRITE_PAGE):
            write_build(desired)
        elif step.kind is StepKind.PUT_SECRET:
            assert step.secret is not None
            value = desired.secrets[step.secret]
            await wrangler.run("secret", "put", step.secret, "-c", config, stdin=value)
        elif step.kind is StepKind.DEPLOY:
            out = await wrangler.run("deploy", "-c", config, on_line=progress)
            url = workers_dev_url(out, desired.target.worker)
    return url


def workers_dev_url(output: str, worker: str) -> str | None:
    """The Worker's URL in ``wrangler deploy``'s output (``https://<worker>.<sub>.workers.dev``)."""
    for found in WORKERS_DEV_URL.findall(output):
        if found.startswith(f"https://{worker}."):
            return str(found)
    return None


@contextlib.asynccontextmanager
async def _named(wrangler: Wrangler, worker: str) -> AsyncIterator[tuple[Wrangler, str]]:
    """wrangler in a throwaway folder whose config names only ``worker`` (so no other
    wrangler config, here or in a folder above, is picked up), and that config's path."""
    with tempfile.TemporaryDirectory(prefix="kit-wrangler-") as folder:
        config = Path(folder) / "wrangler.jsonc"
        config.write_text(json.dumps({"name": worker}))
        yield Wrangler(wrangler.executable, wrangler.env, Path(folder)), str(config)


async def destroy(
    target: CloudflareTarget,
    wrangler: Wrangler,
    *,
    dry_run: bool = False,
    progress: Progress = lambda _: None,
) -> list[str]:
    """Delete the Worker (with its Durable Objects and secrets) and the container
    application kit named for it (``wrangler delete`` leaves that running and billing);
    what went, or with ``dry_run`` what would go."""
    async with _named(wrangler, target.worker) as (named, config):
        found = []
        exists = await secret_names(named, target.worker, Path(config)) is not None
        if exists:
            found.append(f"Worker {target.worker} (its Durable Objects and secrets)")
        listed = _json_in(await named.run("containers", "list", "--json", "-c", config), "list")
        apps = [
            str(app["id"])
            for app in listed
            if isinstance(app, dict) and app.get("name") == target.container_app and "id" in app
        ]
        found += [f"container application {target.container_app} ({app})" for app in apps]
        if dry_run:
            return found
        if exists:
            progress(f"wrangler delete {target.worker}")
            await named.run("delete", target.worker, "-c", config)
        for app in apps:
            progress(f"wrangler containers delete {app}")
            await named.run("containers", "delete", app, "-c", config)
    return found


def _not_found(exc: WranglerError, worker: str) -> bool:
    return f'Worker "{worker}"' in exc.output and "not found" in exc.output


def _json_in(output: str, what: str) -> list[Any]:
    """The JSON array wrangler printed (after any notice lines)."""
    start = output.find("[")
    try:
        found = json.loads(output[start:]) if start >= 0 else None
    except ValueError:
        found = None
    if not isinstance(found, list):
        raise DeployError(f"wrangler {what} printed no JSON list: {output[-300:]!r}")
    return found
