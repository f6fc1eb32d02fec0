"""Run ``wrangler dev`` on the shim (``worker_shim/``) on loopback, offline: wrangler and Node
22 as scripts/setup-workers installs them into ``worker_shim/node_modules``, its files in a
private folder, no metrics or error reports, containers off (kit's container emulator
serves them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from kit.cli.errors import CliError
from kit.private import write_private

SHIM_DIR = Path(__file__).resolve().parents[2] / "worker_shim"
START_LIMIT_S = 120.0
"""The longest wait for ``Ready on``: wrangler's first start bundles the Worker."""
STOP_LIMIT_S = 10.0
NODE_MIN = (22, 12)
"""wrangler 4.160+ refuses older Node."""
SETUP = "scripts/setup-workers"


def shim_tools() -> tuple[Path, Path]:
    """(node, wrangler.js) in worker_shim/node_modules; :class:`CliError` naming the fix."""
    wrangler = SHIM_DIR / "node_modules" / "wrangler" / "bin" / "wrangler.js"
    if not wrangler.is_file():
        raise CliError(
            f"wrangler is not installed in {SHIM_DIR}: run {SETUP} (it installs wrangler, "
            "workerd and Node 22 from npm)."
        )
    local = SHIM_DIR / "node_modules" / ".bin" / "node"
    node = local if local.exists() else Path(shutil.which("node") or "node")
    try:
        out = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        version = tuple(int(x) for x in out.lstrip("v").split(".")[:2])
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise CliError(f"Cannot run {node}: {exc}. Run {SETUP}.") from None
    if version < NODE_MIN:
        raise CliError(f"{node} is Node {out}; wrangler needs 22.12 or newer: run {SETUP}.")
    return node, wrangler


def free_port() -> int:
    """A port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(
    folder: Path, *, name: str, tier: str, variables: Mapping[str, str], secrets: Mapping[str, str]
) -> Path:
    """The shim's wrangler config for a local run in ``folder`` (private): its Worker and
    DO from worker_shim/, ``variables`` as vars, ``secrets`` in ``.dev.vars`` (0600, next
    to the config, where wrangler dev reads them; never on a command line)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    config = {
        "name": name,
        "main": str(SHIM_DIR / "src" / "index.ts"),
        "compatibility_date": "2026-11-01",
        "durable_objects": {"bindings": [{"name": "SESSION", "class_name": "SessionDO"}]},
        "migrations": [{"tag": "v1", "new_sqlite_classes": ["SessionDO"]}],
        "vars": {"KIT_SANDBOX_TIER": tier, **variables},
    }
    path = folder / "wrangler.json"
    write_private(path, json.dumps(config, indent=2) + "\n")
    write_private(
        folder / ".dev.vars", "".join(f"{k}={json.dumps(v)}\n" for k, v in secrets.items())
    )
    return path


@contextlib.asynccontextmanager
async def wrangler_dev(config: Path, *, port: int, persist: Path) -> AsyncIterator[str]:
    """``wrangler dev`` of ``config`` on ``127.0.0.1:port``, its DO storage in ``persist``;
    yield its URL once it says ``Ready``; stop it (and its workerd) at the end."""
    node, wrangler = shim_tools()
    home = config.parent / "wrangler-home"
    home.mkdir(mode=0o700, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),  # wrangler writes ~/.config/.wrangler
        "XDG_CONFIG_HOME": str(home / ".config"),
        "WRANGLER_SEND_METRICS": "false",
        "WRANGLER_SEND_ERROR_REPORTS": "false",
        "CLOUDFLARE_CF_FETCH_ENABLED": "false",
        "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("CLOUDFLARE_API_TOKEN", "ANTHROPIC_API_KEY", "KIT_API_TOKEN"):
        env.pop(name, None)  # the shim gets what it needs from .dev.vars, nothing else
    proc = await asyncio.create_subprocess_exec(
        str(node),
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
            url = await asyncio.wait_for(_ready(stdout, tail), START_LIMIT_S)
        except (TimeoutError, CliError) as exc:
            raise CliError(
                f"wrangler dev did not come up ({exc or 'timed out'}); its output:\n"
                + "\n".join(tail[-30:])
            ) from None

        async def keep_draining() -> None:
            for _ in range(100_000_000):  # bounded by wrangler's output ending
                line = await stdout.readline()
                if not line:
                    return
                tail.append(line.decode(errors="replace").rstrip())
                del tail[:-200]

        drain = asyncio.create_task(keep_draining())
        yield url
    finally:
        await _stop(proc)
        if drain is not None:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)


async def _ready(stdout: asyncio.StreamReader, tail: list[str]) -> str:
    for _ in range(100_000):
        raw = await stdout.readline()
        if not raw:
            raise CliError("wrangler exited")
        line = raw.decode(errors="replace").rstrip()
        tail.append(line)
        if "Ready on http://" in line:
            return "http://" + line.split("Ready on http://", 1)[1].split()[0]
    raise CliError("no 'Ready on' line")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to wrangler's process group, then SIGKILL to what is left of it (its workerd)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), STOP_LIMIT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
