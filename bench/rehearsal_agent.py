"""What both deploy rehearsals' benchmarks share (bench/fly_rehearsal.py,
bench/cf_rehearsal.py): the agent they run (Bash, and an offline-model scenario with a
greeting, a slow tool to kill a sandbox in, and the answer of a turn resumed after a
sandbox stopped), and their table of figures."""

from __future__ import annotations

import statistics
from pathlib import Path

RECOVERED_REPLY = "Recovered and finished."

_SCENARIO = r"""
[[rule]]
name = "recovery"
contains = "Your sandbox stopped before you finished"
[[rule.step]]
text = "RECOVERED_REPLY"

[[rule]]
name = "hello"
contains = "hello"
[[rule.step]]
text = "HELLO_REPLY"

[[rule]]
name = "slow tool"
contains = "slow"
[[rule.step]]
text = "Working on it."
tool = "Bash"
input = { command = "echo started; sleep 5; echo done", description = "slow" }
[[rule.step]]
text = "Slow tool said: {tool_result}"
"""


def scenario(hello_reply: str) -> str:
    """The scenario, greeting with ``hello_reply``."""
    return _SCENARIO.replace("RECOVERED_REPLY", RECOVERED_REPLY).replace("HELLO_REPLY", hello_reply)


def write_agent(root: Path, hello_reply: str, tier: str = "basic") -> Path:
    """The agent's project in ``root``, on sandbox tier ``tier``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "kit.toml").write_text(
        '[agent]\nname = "bench-agent"\nprompt = "prompt.md"\nallowed_tools = ["Bash"]\n'
        f'max_turns = 6\n\n[sandbox]\ntier = "{tier}"\n'
    )
    (root / "prompt.md").write_text("You are a benchmark agent.\n")
    (root / "scenarios").mkdir(exist_ok=True)
    (root / "scenarios" / "bench.toml").write_text(scenario(hello_reply))
    return root


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values`` in ms (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] * 1000


def print_figures(runs: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, object]:
    """Print one row (ms: p50, p95, mean, n) per measure of ``runs`` (seconds) that any run
    has, in ``keys``' order; the same in seconds, for a JSON file."""
    print("| measure | p50 | p95 | mean | n |\n|---|---|---|---|---|")
    figures: dict[str, object] = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        if values:
            figures[key] = {"p50": pct(values, 50) / 1000, "p95": pct(values, 95) / 1000}
            print(
                f"| {key} | {pct(values, 50):.0f} | {pct(values, 95):.0f} | "
                f"{statistics.fmean(values) * 1000:.0f} | {len(values)} |"
            )
    return figures
