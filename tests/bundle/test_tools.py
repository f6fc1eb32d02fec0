"""kit's list of tool names against the bundled CLI itself: it fails when the SDK upgrade
adds, removes or renames a tool (then update kit/bundle/tools.py from its message)."""

from __future__ import annotations

import mmap
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import claude_agent_sdk
import httpx
import pytest
from claude_agent_sdk import ClaudeAgentOptions, query

from emulator.model import ScenarioSource, create_app
from kit.bundle.tools import CLI_TOOLS, OLD_NAMES
from tests.conftest import serve_on_loopback

pytestmark = pytest.mark.slow

PLACEHOLDER = "DeferredToolPlaceholder"
"""The CLI's own marker that keeps deferred loading on; never a tool to allow."""
DEFERRED = re.compile(r"deferred tools are now available via ToolSearch[^\n]*\n((?:\w+\n)+)")
CONSTANT = re.compile(rb'[A-Za-z_$]{1,3}="([A-Z][A-Za-z]{2,30})"')
"""A short minified name assigned a capitalised string: where the CLI keeps tool names."""


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [str(block.get("text", "")) for block in content if isinstance(block, dict)]


async def _offered(url: str, home: Path, tools: Sequence[str] | None) -> set[str]:
    """Tool names in the CLI's request: its ``tools`` array and the deferred tools it
    lists for ToolSearch (``tools``: None asks with no restriction)."""
    options = ClaudeAgentOptions(
        cwd=str(home),
        env={
            "ANTHROPIC_BASE_URL": url,
            "ANTHROPIC_API_KEY": "placeholder",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "HOME": str(home),
            "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "TMPDIR": str(home / "tmp"),
        },
        setting_sources=[],
        permission_mode="dontAsk",
        max_turns=1,
        tools=None if tools is None else list(tools),
        allowed_tools=list(tools or []),
    )
    async with httpx.AsyncClient(headers={"x-api-key": "placeholder"}) as http:
        await http.delete(f"{url}/_emulator/requests")
        with anyio.fail_after(120):
            async for _ in query(prompt="hello", options=options):
                pass
        seen = (await http.get(f"{url}/_emulator/requests")).json()
    body = next(r["body"] for r in reversed(seen) if r["path"].endswith("/v1/messages"))
    names = {str(t["name"]) for t in body.get("tools", [])}
    for message in body["messages"]:
        for text in _texts(message["content"]):
            for found in DEFERRED.finditer(text):
                names |= set(found.group(1).split())
    return names - {PLACEHOLDER}


def _binary_constants() -> set[str]:
    cli = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    with cli.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return {m.group(1).decode() for m in CONSTANT.finditer(data)}


async def test_the_bundled_cli_knows_exactly_these_tools(kit_tmp: Path) -> None:
    """The CLI's default tools are all in CLI_TOOLS; asked with every capitalised constant in
    its binary, it keeps exactly CLI_TOOLS; each old name gives its current tool; and
    wrong-case, permission-rule and MCP entries give the agent no tool at all (why kit.toml
    refuses them)."""
    (kit_tmp / "tmp").mkdir()
    scenario = kit_tmp / "scenario.toml"
    scenario.write_text('[[rule]]\n[[rule.step]]\ntext = "ok"\n')
    async with serve_on_loopback(
        create_app(ScenarioSource.from_paths([scenario]), api_key="placeholder")
    ) as url:
        default = await _offered(url, kit_tmp, None)
        assert default <= set(CLI_TOOLS), f"new default tools: {sorted(default - set(CLI_TOOLS))}"
        candidates = _binary_constants() | set(CLI_TOOLS)
        known = await _offered(url, kit_tmp, sorted(candidates))
        assert known == set(CLI_TOOLS), f"the CLI's tools are now {sorted(known)}"
        for old, new in OLD_NAMES.items():
            assert await _offered(url, kit_tmp, [old]) == {new}
        assert await _offered(url, kit_tmp, ["skill", "Bash(git:*)", "mcp__x__y"]) == set()
