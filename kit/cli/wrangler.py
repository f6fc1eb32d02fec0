"""Run ``wrangler dev`` on the shim (``worker_shim/``) on loopback, offline: the wrangler (and
Node 22) scripts/setup-workers installs into ``worker_shim/node_modules`` (or ``KIT_WRANGLER``),
its files in a private folder, no metrics, error reports or update checks, containers off
(kit's container emulator serves them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kit.cli.errors import CliError
from kit.deploy.cloudflare.apply import write_page
from kit.deploy.cloudflare.deploy import load_shim
from kit.deploy.cloudflare.plan import PAGE_DIR
from kit.deploy.cloudflare.target import page_assets
from kit.deploy.cloudflare.wrangler import find_wrangler, offline_env, wrangler_env
from kit.deploy.errors import DeployError
from kit.private import write_private

SHIM_DIR = Path(__file__).resolve().parents[2] / "worker_shim"
START_LIMIT_S = 120.0
"""The longest wait for ``Ready on``: wrangler's first start bundles the Worker."""
STOP_LIMIT_S = 10.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
"""wrangler's colour and cursor codes, taken out of the lines kit keeps and may show."""


def free_port() -> int:
    """A port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(
    folder: Path, *, name: str, tier: str, variables: Mapping[str, str], secrets: Mapping[str, str]
) -> Path:
    """The shim's own wrangler config (its bindings, migrations, vars) for a local run in
    ``folder`` (private): named ``name``, its entry in worker_shim/, the chat page's files
    copied into ``folder/web`` as its assets (as a deploy ships them), ``variables`` added
    to its vars, ``secrets`` in ``.dev.vars`` (0600, next to the config, where wrangler dev
    reads them; never on a command line)."""
    try:
        shim = load_shim(SHIM_DIR)
    except DeployError as exc:
        raise CliError(str(exc)) from None
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    config = {k: v for k, v in shim.config.items() if k not in ("$schema", "dev")}
    base = config.get("vars")
    try:
        assets = page_assets(shim.config, folder / PAGE_DIR)
    except DeployError as exc:
        raise CliError(str(exc)) from None
    write_page(folder / PAGE_DIR)
    config.update(
        name=name,
        main=str(shim.main),
        assets=assets,
        vars={**(base if isinstance(base, dict) else {}), "KIT_SANDBOX_TIER": tier, **variables},
    )
    path = folder / "wrangler.json"
    write_private(path, json.dumps(config, indent=2) + "\n")
    write_private(
        folder / ".dev.vars", "".join(f"{k}={json.dumps(v)}\n" for k, v in secrets.items())
    )
    return path


def shim_wrangler() -> Path:
    """The wrangler that runs the shim; :class:`CliError` naming the fix when there is none
    (asked first, before anything is built or written)."""
    try:
        return find_wrangler(os.environ, SHIM_DIR)
    except DeployError as exc:
        raise CliError(str(exc)) from None


@dataclass(frozen=True)
class WranglerDev:
    """A running ``wrangler dev``: its URL, and its process (the leader of a process group
    that holds its workerd processes too)."""

    url: str
    pid: int


@contextlib.asynccontextmanager
async def wrangler_dev(config: Path, *, port: int, persist: Path) -> AsyncIterator[str]:
    """``wrangler dev`` of ``config`` on ``127.0.0.1:port``, its DO storage in ``persist``;
    yield its URL once it says ``Ready``; stop it (and its workerd) at the end."""
    async with run_wrangler_dev(config, port=port, persist=persist) as dev:
        yield dev.url


@contextlib.asynccontextmanager
async def run_wrangler_dev(config: Path, *, port: int, persist: Path) -> AsyncIterator[WranglerDev]:
    """:func:`wrangler_dev`, yielding its process too (bench/host.py measures it)."""
    wrangler = shim_wrangler()
    home = config.parent / "wrangler-home"
    home.mkdir(mode=0o700, exist_ok=True)
    # Offline: no credentials, no cf.json fetch, no npm update check; kit's secrets reach
    # the shim through .dev.vars only.
    env = offline_env(wrangler_env(os.environ, wrangler), home)
    proc = await asyncio.create_subprocess_exec(
        str(wrangler),
        "dev",
        "--config",
        str(config),
        "--local",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--inspector-ip",
        "127.0.0.1",
        "--inspector-port",
        str(free_port()),
        "--show-interactive-dev-session=false",
        "--enable-containers=false",
        "--persist-to",
        str(persist),
        cwd=config.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # wrangler and its workerd processes: one group to stop
    )
    tail: list[str] = []
    drain: asyncio.Task[None] | None = None
    assert proc.stdout is not None
    stdout = proc.stdout
    try:
        try:
            url = await asyncio.wait_for(ready_url(stdout, tail), START_LIMIT_S)
        except (TimeoutError, CliError) as exc:
            raise CliError(
                f"wrangler dev did not come up ({exc or 'timed out'}); its output:\n"
                + "\n".join(tail[-30:])
            ) from None

        if urlsplit(url).port != port:
            # The port was taken between kit choosing it and wrangler binding it: the shim's
            # vars (KIT_WORKER_URL) name a port that is not its own.
            raise CliError(
                f"wrangler dev came up on {url}, not on port {port} as kit asked (another "
                "program took that port meanwhile); run the command again."
            )
        drain = asyncio.create_task(keep_reading(stdout, tail))
        yield WranglerDev(url, proc.pid)
    finally:
        await _stop(proc)
        (config.parent / ".dev.vars").unlink(missing_ok=True)  # its secrets go with it
        if drain is not None:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)


async def ready_url(stdout: asyncio.StreamReader, tail: list[str]) -> str:
    """The URL of wrangler dev's ``Ready on`` line, each line read kept in ``tail``;
    :class:`CliError` when wrangler exits first."""
    for _ in range(100_000):
        raw = await stdout.readline()
        if not raw:
            raise CliError("wrangler exited")
        line = ANSI.sub("", raw.decode(errors="replace")).rstrip()
        tail.append(line)
        if "Ready on http://" in line:
            return "http://" + line.split("Ready on http://", 1)[1].split()[0]
    raise CliError("no 'Ready on' line")


async def keep_reading(stdout: asyncio.StreamReader, tail: list[str], keep: int = 200) -> None:
    """Read wrangler's output until it ends (so it never blocks on a full pipe), its last
    ``keep`` lines in ``tail``."""
    for _ in range(100_000_000):  # bounded by wrangler's output ending
        line = await stdout.readline()
        if not line:
            return
        tail.append(ANSI.sub("", line.decode(errors="replace")).rstrip())
        del tail[:-keep]


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to wrangler's process group, then SIGKILL to what is left of it (its workerd)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), STOP_LIMIT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
