"""The README's promises that a new user runs as written."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from kit.cli.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "client.py"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


async def run_example(env: dict[str, str], question: str) -> str:
    """Run examples/client.py as the README says; its output (it must exit 0)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        question,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_the_readme_shows_the_client_example_file_whole() -> None:
    """The README's Python client is examples/client.py, character for character."""
    assert EXAMPLE.read_text() in python_blocks((ROOT / "README.md").read_text())


async def test_the_client_example_runs_as_written(stack: Stack) -> None:
    """Run as the README says against a running host: it prints the order's facts."""
    env = {**os.environ, "KIT_URL": stack.url, "KIT_API_TOKEN": stack.api_token}
    text = await run_example(env, "Where is my order 1042?")
    assert "[tool] Skill" in text
    assert "[tool] Bash" in text
    answer = text.rsplit("[tool] Bash", 1)[1]
    assert "shipped" in answer
    assert "1Z999AA10123456784" in answer


async def test_the_client_example_finds_kit_dev_by_its_state_dir(stack: Stack) -> None:
    """Without KIT_URL it reads dev.json from KIT_STATE_DIR, as `kit chat` does."""
    env = {k: v for k, v in os.environ.items() if k not in ("KIT_URL", "KIT_API_TOKEN")}
    env["KIT_STATE_DIR"] = str(stack.settings.state_dir)
    assert (await run_example(env, "hello")).startswith("session ")
