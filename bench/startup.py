"""Start-up: how long a developer waits for a local host, ``kit dev`` against ``wrangler dev``.

    .venv/bin/python bench/startup.py            # --runs 5

Each run starts from nothing kept (a fresh state dir; for wrangler a fresh ``--persist-to``
and home) and times from the ``exec`` until ``GET /healthz`` answers 200:

- **kit dev**: ``kit dev --port 0 --no-watch`` on the bundled example agent, as a user runs
  it (the bundle built, the emulator, the gateway, the fork server and the sandbox pool
  started in the background); the URL from its banner.
- **wrangler dev**: ``wrangler dev --local`` on bench/do_host (a Worker and a Durable
  Object, containers off; tools from scripts/setup-workers), as bench/host.py starts it.

Prints p50 / p95 / min per host and the ratio of the p50s. Loopback only; every wait is
bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from host_targets import do_target

ROOT = Path(__file__).resolve().parents[1]
KIT = str(Path(sys.executable).parent / "kit")
START_TIMEOUT_S = 120.0


async def _healthy(http: httpx.AsyncClient, url: str, deadline: float) -> None:
    """Return once ``url/healthz`` answers 200 (tries every 5 ms until ``deadline``)."""
    while True:
        try:
            if (await http.get(f"{url}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url}/healthz never answered 200")
        await asyncio.sleep(0.005)


async def kit_dev_start(work: Path) -> float:
    """Seconds from exec of ``kit dev`` to its /healthz answering."""
    env = {**os.environ, "KIT_STATE_DIR": str(work / "state")}
    env.pop("ANTHROPIC_API_KEY", None)
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        KIT, "dev", "--port", "0", "--no-watch", cwd=work, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = ""
        async with asyncio.timeout(START_TIMEOUT_S):
            while not url:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise SystemExit("kit dev exited before printing its banner")
                if m := re.search(r"sessions\s+(http://\S+)/v1/sessions", line):
                    url = m.group(1)
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            await _healthy(http, url, t0 + START_TIMEOUT_S)
        return time.monotonic() - t0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def wrangler_dev_start(work: Path) -> float:
    """Seconds from exec of ``wrangler dev`` (bench/do_host) to its /healthz answering."""
    t0 = time.monotonic()
    async with do_target(work, direct=False) as running:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            await _healthy(http, running.url, t0 + START_TIMEOUT_S)
        return time.monotonic() - t0


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "min": ordered[0]}


async def run(runs: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {"kit dev": [], "wrangler dev": []}
    with tempfile.TemporaryDirectory(prefix="kit-bench-start-") as tmp:
        await wrangler_dev_start(_fresh(Path(tmp), "warm-wrangler"))  # its first bundle
        for n in range(runs):  # alternate, so background load falls on both alike
            samples["kit dev"].append(await kit_dev_start(_fresh(Path(tmp), f"kit{n}")))
            samples["wrangler dev"].append(await wrangler_dev_start(_fresh(Path(tmp), f"w{n}")))
    return {name: summary(values) for name, values in samples.items()}


def _fresh(tmp: Path, name: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="starts of each host")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    results = asyncio.run(run(max(1, args.runs)))
    kit, wrangler = results["kit dev"], results["wrangler dev"]
    print(f"command: .venv/bin/python bench/startup.py --runs {args.runs}")
    print("| host | start → /healthz p50 s | p95 s | min s |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['p50']:.2f} | {r['p95']:.2f} | {r['min']:.2f} |")
    print(f"ratio kit dev / wrangler dev (p50): {kit['p50'] / wrangler['p50']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
