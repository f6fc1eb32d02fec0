"""One CPU-bound skill under two tiers: how much the tier's CPU share slows it.

    .venv/bin/python bench/tiers.py [--runs 3] [--tiers lite standard-2]

Each tier gets its own `kit dev` stack (the test agent at that tier); each run is one turn
whose Bash tool runs a fixed pure-Python loop in the sandbox and prints its own wall time.
Prints the median time per tier and the ratio of the first tier's to the second's (lite is
1/16 vCPU, standard-2 is 1 vCPU: about 16x expected where the CPU quota is enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
from pathlib import Path

from kit.cli.settings import DevSettings
from kit.cli.stack import run_stack
from kit.client import SessionClient, create_session
from kit.tiers import get_tier

BURN = (
    "python3 -c 'import time; t = time.perf_counter(); sum(i * i for i in range(20_000_000)); "
    'print("cpu-seconds-wall", round(time.perf_counter() - t, 3))\''
)


def write_agent(root: Path, tier: str) -> Path:
    """An agent whose every turn runs :data:`BURN` in Bash and reports its output."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "kit.toml").write_text(
        '[agent]\nname = "burner"\nprompt = "prompt.md"\nallowed_tools = ["Bash"]\n'
        f'[sandbox]\ntier = "{tier}"\n'
    )
    (root / "prompt.md").write_text("You burn CPU.\n")
    (root / "scenarios").mkdir(exist_ok=True)
    command = BURN.replace("\\", "\\\\").replace('"', '\\"')
    (root / "scenarios" / "burn.toml").write_text(
        '[[rule]]\nname = "burn"\n[[rule.step]]\ntool = "Bash"\n'
        f'input = {{ command = "{command}", description = "burn" }}\n'
        '[[rule.step]]\ntext = "Burned: {tool_result}"\n'
    )
    return root


TIMING = re.compile(r"cpu-seconds-wall (\d+(?:\.\d+)?)")


async def time_tier(tier: str, runs: int, root: Path) -> list[float]:
    """Wall seconds of the CPU-bound tool, ``runs`` times, in one session at ``tier``."""
    project = write_agent(root / tier / "agent", tier)
    times: list[float] = []
    settings = DevSettings(project_dir=project, state_dir=root / tier / "state", port=0)
    async with run_stack(settings) as stack:
        if stack.provider.unenforced:
            print(f"note: {stack.provider.unenforced}")
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            for _ in range(runs):
                text = ""
                async for event in client.turn("burn cpu please"):
                    text += str(event.data.get("text", ""))
                found = TIMING.search(text)
                if found is None:
                    raise RuntimeError(f"no timing in the reply: {text!r}")
                times.append(float(found.group(1)))
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tiers", nargs=2, default=["lite", "standard-2"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kit-bench-tiers-"))
    os.chmod(root, 0o755)  # sandboxes run as another user
    medians = []
    for tier in args.tiers:
        times = await time_tier(tier, args.runs, root)
        median = statistics.median(times)
        medians.append(median)
        vcpu = get_tier(tier).vcpu
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{tier:12s} {vcpu:7.4f} vCPU  median {median:7.2f} s  (runs: {runs})")
    print(
        f"ratio {args.tiers[0]} / {args.tiers[1]}: {medians[0] / medians[1]:.1f}x "
        f"(share ratio {get_tier(args.tiers[1]).vcpu / get_tier(args.tiers[0]).vcpu:.1f}x)"
    )
    print(
        f"reproduce: .venv/bin/python bench/tiers.py --runs {args.runs} --tiers {' '.join(args.tiers)}"
    )


if __name__ == "__main__":
    asyncio.run(main())
