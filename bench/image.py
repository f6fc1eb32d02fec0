"""The runtime image: its size, its build time, how fast a container of it is ready, and how
much memory the example agent takes in it per tier.

    .venv/bin/python bench/image.py                       # --starts 10 --tiers lite basic standard-1
    .venv/bin/python bench/image.py --cold                # also time a build from nothing

Needs Docker (``scripts/docker-up``) and root (the base image is made with debootstrap).

- **build**: ``cold`` (``--cold``: no base image, no cached wheels; pip's own HTTP cache may be
  warm), ``source change`` (base and wheels cached, kit's wheel and the image rebuilt) and
  ``no change`` (the tag exists: planned and skipped).
- **start**: ``docker run -d`` of the image (``--network none``, read-only root, no CPU limit,
  as ``bench/sandbox_start.py`` gives its sandboxes ``standard-4``), its config in a mounted
  file (``KIT_RUNTIME_CONFIG``), until its health probe says ready (the runtime imported,
  its CLI booted, the agent ready).
- **tiers**: one container per tier with the tier's memory (no swap), CPUs and a pids limit;
  the runtime starts, then runs one real turn of ``skills/support-bot`` (a Skill and a Bash
  tool call) against the offline model served on a unix socket mounted into the container.
  ``charge`` is the cgroup's ``memory.max_usage_in_bytes`` (v1; ``memory.peak`` on v2): every
  byte charged to the container, page cache included. ``resident`` is the peak, sampled every
  20 ms, of the cgroup's anonymous plus mapped-file memory: what the processes held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from emulator.model import ScenarioSource
from emulator.model import create_app as create_model_app
from kit.bundle import Bundle, build_bundle, load_project
from kit.cli.image import default_cache_dir, default_checkout
from kit.cli.settings import EXAMPLE_PROJECT
from kit.deploy.image import BaseRecipe, apply_image, plan_image, source_files
from kit.host.runtime_client import RuntimeClient, wait_ready
from kit.ids import new_session_id
from kit.protocol.runtime_api import TURNS_PATH, RuntimeEvent, TurnRequest
from kit.protocol.runtime_config import CONFIG_ENV, RuntimeConfig
from kit.tiers import get_tier

UID = 10001
PIDS_LIMIT = 512
TURN_TEXT = "Can I still return order 1042?"


@dataclass
class Run:
    """One container's figures."""

    started_ms: float
    """Until ``docker run -d`` returned: the container is running."""
    ready_ms: float | None
    turn_ms: float | None
    charge_bytes: int
    resident_bytes: int
    outcome: str


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def build_figures(cold: bool) -> tuple[str, list[tuple[str, float]]]:
    """The image's tag and size, and build times (s) with what was cached."""
    checkout, cache = default_checkout(), default_cache_dir()
    times: list[tuple[str, float]] = []
    if cold:
        plan = plan_image(checkout, cache)
        subprocess.run(["docker", "rmi", "-f", BaseRecipe().tag], capture_output=True, check=False)
        with tempfile.TemporaryDirectory(prefix="kit-bench-cache-") as empty:
            plan = plan_image(checkout, Path(empty))
            times.append(("cold: debootstrap, wheels, image", apply_image(plan).seconds))
    # A source change: build a copy of the checkout with one more file in kit/.
    with tempfile.TemporaryDirectory(prefix="kit-bench-src-") as tmp:
        copy = Path(tmp)
        for rel in source_files(checkout):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkout / rel, copy / rel)
        (copy / "kit" / "_bench_marker.py").write_text(f"# {secrets.token_hex(8)}\n")
        changed = apply_image(plan_image(copy, cache))
        times.append(("source change: kit's wheel and the image", changed.seconds))
        subprocess.run(["docker", "rmi", "-f", changed.tag], capture_output=True, check=False)
    image = apply_image(plan_image(checkout, cache))
    began = time.perf_counter()
    again = apply_image(plan_image(checkout, cache))
    assert not again.built
    times.append(("no change: planned, tag found, skipped", time.perf_counter() - began))
    return f"{image.tag} ({image.size_bytes / 1e6:.0f} MB)", times


def _session_dirs(work: Path) -> tuple[str, dict[str, Path]]:
    sid = new_session_id()
    dirs = {name: work / sid / name for name in ("workspace", "home", "tmp", "run")}
    for path in dirs.values():
        path.mkdir(parents=True)
        os.chown(path, UID, UID)
    os.chmod(work / sid, 0o755)
    return sid, dirs


def _cgroup_file(cid: str, v1: str, v2: str) -> Path | None:
    for path in (
        Path(f"/sys/fs/cgroup/memory/docker/{cid}/{v1}"),
        Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/{v2}"),
    ):
        if path.exists():
            return path
    return None


def _resident(cid: str) -> int:
    stat = _cgroup_file(cid, "memory.stat", "memory.stat")
    if stat is None:
        return 0
    with contextlib.suppress(OSError):
        fields = dict(line.split() for line in stat.read_text().splitlines())
        if "total_rss" in fields:  # v1
            return int(fields["total_rss"]) + int(fields["total_mapped_file"])
        return int(fields.get("anon", 0)) + int(fields.get("file_mapped", 0))
    return 0


async def run_container(
    image: str,
    bundle: Bundle,
    work: Path,
    *,
    tier: str | None,
    model: tuple[Path, str] | None,
    timeout_s: float,
) -> Run:
    """Start one runtime container; with ``model`` (socket, key) also run one turn."""
    sid, dirs = _session_dirs(work)
    sock = dirs["run"] / "runtime.sock"
    config = RuntimeConfig(
        session_id=sid,
        bundle_dir=bundle.path,
        workspace=dirs["workspace"],
        home=dirs["home"],
        tmp_dir=dirs["tmp"],
        store_url="memory://",
        listen=f"unix:{sock}",
        model_base_url="http://localhost",
        model_unix_socket=str(model[0]) if model else None,
        model_token=model[1] if model else "bench",
        runtime_token="bench",
    )
    config_path = dirs["run"] / "config.json"
    config_path.write_text(config.to_json())
    os.chown(config_path, UID, UID)
    mounts = [f"{bundle.path}:{bundle.path}:ro"] + [f"{p}:{p}" for p in dirs.values()]
    if model:
        mounts.append(f"{model[0]}:{model[0]}")
    limits = ["--pids-limit", str(PIDS_LIMIT)]
    if tier:
        t = get_tier(tier)
        memory = f"{t.memory_mib}m"
        limits += ["--memory", memory, "--memory-swap", memory, "--cpus", f"{t.vcpu:g}"]
    name = f"kit-bench-{sid[:13]}"
    argv = [
        "docker",
        "run",
        "-d",
        "-e",
        f"{CONFIG_ENV}={config_path}",
        "--name",
        name,
        "--network",
        "none",
    ]
    argv += ["--read-only", "--tmpfs", "/tmp", "--user", f"{UID}:{UID}", "--label", "kit.bench=1"]
    argv += [arg for m in mounts for arg in ("-v", m)] + limits + [image]
    began = time.perf_counter()
    cid = await _docker(*argv[1:])
    started = (time.perf_counter() - began) * 1000
    ready = turn = None
    resident, outcome = 0, "timeout"
    peak = [0]

    async def sample() -> None:
        for _ in range(int(timeout_s / 0.02)):
            peak[0] = max(peak[0], _resident(cid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        health = await wait_ready(RuntimeClient(f"unix:{sock}", "bench"), lambda: True, timeout_s)
        if health is None:
            outcome = "exited before ready"
        else:
            ready, outcome = (time.perf_counter() - began) * 1000, "ready"
            if model:
                async with asyncio.timeout(timeout_s):
                    turn, outcome = await _one_turn(sock)
    except TimeoutError:
        pass
    finally:
        charge_file = _cgroup_file(cid, "memory.max_usage_in_bytes", "memory.peak") if cid else None
        charge = int(charge_file.read_text()) if charge_file else 0
        sampler.cancel()
        resident = peak[0]
        await _docker("kill", name)
        if await _docker("inspect", "--format", "{{.State.OOMKilled}}", name) == "true":
            outcome = "OOM-killed"
        await _docker("rm", "-f", name)
    return Run(started, ready, turn, charge, resident, outcome)


async def _docker(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return out.decode().strip()


async def _one_turn(sock: Path) -> tuple[float, str]:
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    began = time.perf_counter()
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://runtime", timeout=None) as client,
        client.stream(
            "POST",
            TURNS_PATH,
            content=TurnRequest("t1", TURN_TEXT).to_json(),
            headers={"authorization": "Bearer bench"},
        ) as response,
    ):
        last = "no result"
        async for line in response.aiter_lines():
            if line.strip():
                event = RuntimeEvent.from_line(line)
                if event.kind in ("result", "error"):
                    last = "turn ok" if event.kind == "result" else f"turn error {event.data}"
                    break
    return (time.perf_counter() - began) * 1000, last


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--tiers", nargs="*", default=["lite", "basic", "standard-1"])
    parser.add_argument("--cold", action="store_true", help="also time a build from nothing")
    parser.add_argument("--skip-build", action="store_true", help="only starts and tiers")
    args = parser.parse_args()
    if not args.skip_build:
        described, times = build_figures(args.cold)
        print(f"image {described}")
        print("| build | seconds |\n|---|---|")
        for label, seconds in times:
            print(f"| {label} | {seconds:.1f} |")
    image = apply_image(plan_image(default_checkout(), default_cache_dir())).tag
    with tempfile.TemporaryDirectory(prefix="kit-bench-image-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        bundle = build_bundle(load_project(EXAMPLE_PROJECT), work / "bundles")
        if args.starts:
            runs = [
                await run_container(image, bundle, work, tier=None, model=None, timeout_s=120)
                for _ in range(args.starts)
            ]
            ready = [r.ready_ms for r in runs if r.ready_ms is not None]
            started = [r.started_ms for r in runs]
            print(f"\ncontainer start, ms; {args.starts} starts ({len(ready)} ready)")
            print("| to | p50 | p95 | mean |\n|---|---|---|---|")
            for label, values in (("container started", started), ("runtime ready", ready)):
                if values:
                    print(
                        f"| {label} | {statistics.median(values):.0f} | "
                        f"{_pct(values, 0.95):.0f} | {statistics.fmean(values):.0f} |"
                    )
        if args.tiers:
            await _tiers(image, bundle, work, args.tiers)


async def _tiers(image: str, bundle: Bundle, work: Path, tiers: list[str]) -> None:
    key = "kit-bench-" + secrets.token_urlsafe(12)
    app = create_model_app(
        ScenarioSource.from_paths(list(load_project(EXAMPLE_PROJECT).scenarios)), api_key=key
    )
    model_sock = work / "model" / "model.sock"
    model_sock.parent.mkdir()
    os.chmod(model_sock.parent, 0o755)
    server = uvicorn.Server(uvicorn.Config(app, uds=str(model_sock), log_level="warning"))
    serving = asyncio.create_task(server.serve())
    for _ in range(500):
        if model_sock.exists():
            break
        await asyncio.sleep(0.01)
    model_sock.chmod(0o666)
    print(f"\nexample agent per tier: start, then one turn ({TURN_TEXT!r})")
    print("| tier | memory | vCPU | ready ms | turn ms | charge MiB | resident MiB | outcome |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for name in tiers:
            t = get_tier(name)
            r = await run_container(
                image, bundle, work, tier=name, model=(model_sock, key), timeout_s=600
            )
            print(
                f"| {name} | {t.memory_mib} MiB | {t.vcpu:g} | "
                f"{r.ready_ms or 0:.0f} | {r.turn_ms or 0:.0f} | {r.charge_bytes / 2**20:.0f} | "
                f"{r.resident_bytes / 2**20:.0f} | {r.outcome} |"
            )
    finally:
        server.should_exit = True
        await serving


if __name__ == "__main__":
    asyncio.run(main())
