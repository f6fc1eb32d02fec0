"""The three hosts bench/host.py drives: start them, find their processes, stop them.

``kit_target`` runs bench/kit_host.py (one kit session host process); ``do_target`` runs
``wrangler dev --local`` on bench/do_host (installing its tools with scripts/setup-workers
when they are missing) and tells the DO's workerd from the proxy workerd wrangler puts in
front of it; ``shim_target`` runs the shim (worker_shim/) in ``wrangler dev`` as ``kit dev
--target cloudflare`` does (:mod:`kit.cli.wrangler`), its containers synthetic runtimes
behind kit's container emulator (bench/shim_containers.py). Each yields a
:class:`Running`: where to reach the host, which processes are it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from emulator.containers.serve import TOKEN_ENV
from kit.cli.errors import CliError
from kit.cli.wrangler import (
    keep_reading,
    ready_url,
    run_wrangler_dev,
    shim_wrangler,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
KIT_HOST = ROOT / "bench" / "kit_host.py"
SHIM_CONTAINERS = ROOT / "bench" / "shim_containers.py"
DO_DIR = ROOT / "bench" / "do_host"
SETUP_WORKERS = ROOT / "scripts" / "setup-workers"
START_TIMEOUT_S = 120.0
"""The longest wait for a host to come up (wrangler's first start bundles the Worker)."""
NODE_MIN = (22, 12)
"""wrangler 4.160+ refuses older Node."""


class BenchError(Exception):
    """The run cannot go on: a host misbehaved (gap, duplicate, error frame) or did not start."""


@dataclass
class Running:
    """A host that is up: where to reach it and which processes are it."""

    name: str
    url: str
    api_token: str
    host_pids: list[int]
    """The host itself (kit's process; the DO's workerd)."""
    helper_pids: list[int] = field(default_factory=list)
    """Processes in front of it (wrangler's node and its proxy workerd)."""
    versions: dict[str, str] = field(default_factory=dict)
    runtime_pids: list[int] = field(default_factory=list)
    """Processes outside the host that run its sandboxes (the shim's container emulator
    with its synthetic runtimes); kit's and the DO's run inside the host."""


# --- processes ------------------------------------------------------------------------------


def _proc_status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pids: list[int]) -> tuple[float, float]:
    """(current, peak) resident memory of ``pids`` together, MiB."""
    now = sum(_proc_status_kib(p, "VmRSS") for p in pids)
    peak = sum(_proc_status_kib(p, "VmHWM") for p in pids)
    return now / 1024, peak / 1024


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids``."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """Every live process below ``root``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    for _ in range(10_000):
        if not todo:
            break
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def listening_ports(pid: int) -> set[int]:
    """The TCP ports ``pid`` listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _stop(proc: asyncio.subprocess.Process, group: bool) -> None:
    """SIGTERM (the whole group when ``group``), then SIGKILL after 15 s."""
    if proc.returncode is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 15)
            return
        except TimeoutError:
            continue


# --- targets --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _bench_process(
    args: list[str], env: dict[str, str] | None = None
) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """Run one of the bench's Python servers (bench/kit_host.py, bench/shim_containers.py):
    (its pid, the JSON line it prints once it listens); at the end, close its stdin (it
    stops there) and wait for it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        if not line:
            raise BenchError(f"{args[0]} exited before it listened (see its stderr above).")
        yield proc.pid, json.loads(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            await _stop(proc, group=False)


@contextlib.asynccontextmanager
async def kit_target(
    work: Path, profile: Path | None, durability: str, log: str = "do"
) -> AsyncIterator[Running]:
    """Start bench/kit_host.py (one kit session host process)."""
    token = "kit-api-" + secrets.token_urlsafe(24)
    state = work / "kit-state"
    state.mkdir()
    args = [str(KIT_HOST), "--state", str(state), "--api-token", token]
    if profile is not None:
        args += ["--profile", str(profile)]
    args += ["--log", log, "--durability", durability]
    async with _bench_process(args) as (pid, info):
        yield Running(
            "kit",
            info["url"],
            token,
            [pid],
            versions={"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
            | {"event log": log, "durability": durability},
        )


def workers_tools() -> tuple[Path, Path]:
    """(node, wrangler.js) for the DO host, installed by scripts/setup-workers if missing."""
    wrangler = DO_DIR / "node_modules" / "wrangler" / "bin" / "wrangler.js"
    if not wrangler.is_file():
        print(f"bench: installing the DO host's tools with {SETUP_WORKERS}", file=sys.stderr)
        done = subprocess.run([str(SETUP_WORKERS)], check=False)
        if done.returncode != 0 or not wrangler.is_file():
            raise BenchError(f"{SETUP_WORKERS} failed; run it by hand to see why.")
    local = DO_DIR / "node_modules" / ".bin" / "node"
    node = local if local.exists() else Path(shutil.which("node") or "node")
    try:
        out = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        version = tuple(int(x) for x in out.strip().lstrip("v").split(".")[:2])
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise BenchError(f"Cannot run {node}: {exc}. Run {SETUP_WORKERS}.") from exc
    if version < NODE_MIN:
        raise BenchError(
            f"{node} is Node {out.strip()}; wrangler needs {NODE_MIN[0]}.{NODE_MIN[1]} or newer. "
            f"Run {SETUP_WORKERS} (it installs Node 22 from npm into bench/do_host/node_modules)."
        )
    return node, wrangler


@contextlib.asynccontextmanager
async def do_target(work: Path, direct: bool) -> AsyncIterator[Running]:
    """Start ``wrangler dev --local`` on bench/do_host, bound to 127.0.0.1, containers off."""
    node, wrangler = workers_tools()
    token = "kit-api-" + secrets.token_urlsafe(24)
    port, inspector = free_port(), free_port()
    home = work / "wrangler-home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),  # wrangler writes ~/.config/.wrangler
        "XDG_CONFIG_HOME": str(home / ".config"),
        "WRANGLER_SEND_METRICS": "false",
        "WRANGLER_SEND_ERROR_REPORTS": "false",
        "CLOUDFLARE_CF_FETCH_ENABLED": "false",
        "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    args = [
        str(node),
        str(wrangler),
        "dev",
        "--local",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--inspector-ip",
        "127.0.0.1",
        "--inspector-port",
        str(inspector),
        "--show-interactive-dev-session=false",
        "--enable-containers=false",
        "--persist-to",
        str(work / "do-state"),
        "--var",
        f"API_TOKEN:{token}",
    ]
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=DO_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # wrangler and its workerd processes: one group to stop
    )
    tail: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        url = await asyncio.wait_for(ready_url(stdout, tail), START_TIMEOUT_S)

        drain = asyncio.create_task(keep_reading(stdout, tail, keep=50))
        running = _do_processes(proc.pid, url, token, port, node, wrangler)
        if direct:
            running.url = await _direct_url(running.host_pids)
        yield running
    except (TimeoutError, BenchError, CliError) as exc:
        raise BenchError(
            f"wrangler dev did not come up ({exc}); its output:\n" + "\n".join(tail)
        ) from exc
    finally:
        await _stop(proc, group=True)
        if drain is not None:
            drain.cancel()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _workerds(root: int, port: int) -> tuple[list[int], list[int]]:
    """(the host's workerd, wrangler's proxy workerd: the one on the public ``port``)
    among the processes below wrangler's ``root``."""
    workerds = [p for p in descendants(root) if _comm(p) == "workerd"]
    proxy = [p for p in workerds if port in listening_ports(p)]
    host = [p for p in workerds if p not in proxy]
    if not host:  # one workerd serves both (another wrangler): count it as the host
        host, proxy = proxy, []
    return host, proxy


def _wrangler_versions(node: Path, wrangler_js: Path) -> dict[str, str]:
    """node's, wrangler's and (the one wrangler runs: its own, else the hoisted one)
    workerd's versions."""
    package = wrangler_js.parent.parent
    versions = {
        "node": subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "wrangler": json.loads((package / "package.json").read_text())["version"],
    }
    for workerd in (package / "node_modules" / "workerd", package.parent / "workerd"):
        if (workerd / "package.json").is_file():
            versions["workerd"] = json.loads((workerd / "package.json").read_text())["version"]
            break
    return versions


def _do_processes(
    root: int, url: str, token: str, port: int, node: Path, wrangler: Path
) -> Running:
    """Tell the DO's workerd from wrangler's proxy workerd (the one on the public port)."""
    host, proxy = _workerds(root, port)
    versions = _wrangler_versions(node, wrangler)
    return Running("do", url, token, host, [root, *proxy], versions)


async def _direct_url(host_pids: list[int]) -> str:
    """The DO workerd's own entry (wrangler's proxy skipped): the port answering /healthz."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        for pid in host_pids:
            for port in sorted(listening_ports(pid)):
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    answer = await http.get(f"http://127.0.0.1:{port}/healthz")
                    if answer.status_code == 200 and answer.json() == {"ok": True}:
                        return f"http://127.0.0.1:{port}"
    raise BenchError("found no port of the DO's workerd that answers /healthz")


@contextlib.asynccontextmanager
async def shim_target(work: Path) -> AsyncIterator[Running]:
    """Start the shim in ``wrangler dev`` as ``kit dev --target cloudflare`` does
    (:func:`kit.cli.wrangler.run_wrangler_dev`: offline, on 127.0.0.1, containers off,
    secrets in a 0600 ``.dev.vars`` removed at exit), its containers served by
    bench/shim_containers.py (kit's container emulator, synthetic runtimes)."""
    try:
        wrangler = shim_wrangler()
    except CliError as exc:
        raise BenchError(str(exc)) from None
    token = "kit-api-" + secrets.token_urlsafe(24)
    emulator_token = secrets.token_urlsafe(32)
    port = free_port()
    env = {**os.environ, TOKEN_ENV: emulator_token}
    async with _bench_process([str(SHIM_CONTAINERS)], env) as (containers_pid, containers):
        config = write_config(
            work / "shim",
            name="kit-bench-shim",
            tier="lite",
            variables={
                "KIT_WORKER_URL": f"http://127.0.0.1:{port}",
                "KIT_MODEL_UPSTREAM": "http://127.0.0.1:9",  # never called: no model
                "KIT_CONTAINER_EMULATOR": containers["url"],
            },
            secrets={
                "KIT_API_TOKEN": token,
                "ANTHROPIC_API_KEY": "bench-never-used",
                "KIT_CONTAINER_EMULATOR_TOKEN": emulator_token,
            },
        )
        try:
            async with run_wrangler_dev(config, port=port, persist=work / "shim-state") as dev:
                host, proxy = _workerds(dev.pid, port)
                local_node = wrangler.parent / "node"
                node = local_node if local_node.exists() else Path(shutil.which("node") or "node")
                yield Running(
                    "shim",
                    dev.url,
                    token,
                    host,
                    [dev.pid, *proxy],
                    _wrangler_versions(node, wrangler.resolve())
                    | {"python": platform.python_version()},
                    runtime_pids=[containers_pid],
                )
        except CliError as exc:
            raise BenchError(str(exc)) from None
