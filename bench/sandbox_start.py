"""How long a local sandbox takes to start, by isolation mode.

    .venv/bin/python bench/sandbox_start.py                 # --starts 20 --modes off auto bwrap

Each sample is ``LocalSandboxProvider.start`` for a new session until the runtime's health
probe says ready (the runtime imported, its CLI booted, the agent ready), then a stop. ``off`` runs
sandboxes unconfined; ``auto`` confines them in namespaces from the fork server (as root);
``bwrap`` starts a fresh interpreter under bubblewrap. The example agent at ``standard-4``
(a CPU quota that never binds on a small machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from emulator.sandbox import LocalSandboxProvider
from kit.bundle import build_bundle, load_project
from kit.cli.settings import EXAMPLE_PROJECT
from kit.host.sandbox import Endpoint, SandboxSpec
from kit.ids import new_session_id


async def measure(mode: str, starts: int, work: Path) -> tuple[str, list[float]]:
    """``starts`` start times (ms) under isolation ``mode``; the mode the provider chose."""
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), work / "bundles")
    provider = LocalSandboxProvider(
        work / f"sandboxes-{mode}", bundles=work / "bundles", isolation=mode
    )
    times = []
    try:
        await provider.settled()
        for _ in range(starts):
            spec = SandboxSpec(
                session_id=new_session_id(),
                tier="standard-4",
                bundle_digest=bundle.digest,
                store_url="memory://",
                model=Endpoint("http://localhost", "bench"),
                runtime_token="bench",
                idle_timeout_s=60,
            )
            began = time.perf_counter()
            sandbox = await provider.start(spec)
            times.append((time.perf_counter() - began) * 1000)
            await sandbox.stop()
    finally:
        await provider.close()
    return provider.isolation or "none", times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["off", "auto", "bwrap"])
    args = parser.parse_args()
    print(f"sandbox start to ready, ms; {args.starts} starts per mode")
    print("| KIT_SANDBOX_ISOLATION | confined by | p50 | p95 | mean |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="kit-bench-start-") as tmp:
        os.chmod(tmp, 0o755)  # the sandbox user must reach it
        for mode in args.modes:
            chosen, times = await measure(mode, args.starts, Path(tmp))
            print(
                f"| {mode} | {chosen} | {statistics.median(times):.0f} | "
                f"{_pct(times, 0.95):.0f} | {statistics.fmean(times):.0f} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
