"""The agent both deploy rehearsals' benchmarks run (bench/fly_rehearsal.py,
bench/cf_rehearsal.py): Bash, and an offline-model scenario with a greeting, a slow tool
to kill a sandbox in, and the answer of a turn resumed after a sandbox stopped."""

from __future__ import annotations

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
