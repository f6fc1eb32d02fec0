"""``kit test``: run a project's scenario checks through the whole local stack.

Each ``[[check]]`` in the project's scenario files gets a new session on a private
``kit dev`` stack (real sandbox process, real Claude Code CLI, offline model); the check
passes when the tools it names were called in that order and the final reply contains
its ``expect_reply``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emulator.model import ScenarioSource
from kit.bundle import load_project
from kit.cli.settings import DevSettings
from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session

CHECK_TIMEOUT_S = 120.0


@dataclass
class CheckResult:
    """How one check went."""

    name: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    reply: str = ""


@dataclass
class Report:
    """Every check's result."""

    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        """True when there was at least one check and all passed."""
        return bool(self.results) and all(r.ok for r in self.results)

    def summary(self) -> str:
        """One line per check, then a total."""
        lines = []
        for r in self.results:
            lines.append(f"{'PASS' if r.ok else 'FAIL'}  {r.name}")
            lines.extend(f"      {p}" for p in r.problems)
        if not self.results:
            lines.append("No [[check]] found in the project's scenario files.")
        passed = sum(r.ok for r in self.results)
        lines.append(f"{passed} passed, {len(self.results) - passed} failed")
        return "\n".join(lines)


def run_checks(project_dir: Path, *, sandbox_user: str | None = "nobody") -> Report:
    """Run every scenario check of the project at ``project_dir`` (blocking)."""
    return asyncio.run(run_checks_async(project_dir, sandbox_user=sandbox_user))


async def run_checks_async(project_dir: Path, *, sandbox_user: str | None = "nobody") -> Report:
    """Run every scenario check of the project at ``project_dir``."""
    project = load_project(project_dir)
    checks = ScenarioSource.from_paths(list(project.scenarios)).checks()
    state = Path(tempfile.mkdtemp(prefix="kit-test-"))  # run_stack sets its mode
    settings = DevSettings(
        project_dir=project.root,
        state_dir=state,
        port=0,
        force_offline_model=True,
        sandbox_user=sandbox_user,
    )
    try:
        async with run_stack(settings) as stack:
            results = [
                await _run_check(
                    stack, check.name, check.say, check.expect_tools, check.expect_reply
                )
                for check in checks
            ]
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return Report(results)


async def _run_check(
    stack: Stack, name: str, say: str, expect_tools: Sequence[str] | None, expect_reply: str | None
) -> CheckResult:
    info = await create_session(stack.url, stack.api_token)
    result = CheckResult(name=name, ok=False)
    texts: list[str] = []
    final = ""
    async with SessionClient(info.ws_url, info.token) as client:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                async for event in client.turn(say):
                    if event.kind == "tool_use":
                        result.tools.append(str(event.data.get("name")))
                    elif event.kind == "assistant":
                        texts.append(str(event.data.get("text", "")))
                    elif event.kind == "result":
                        final = str(event.data.get("text") or "")
                        if event.data.get("is_error"):
                            result.problems.append(f"the turn ended with an error: {final}")
                    elif event.kind == "sandbox" and event.data.get("state") == "failed":
                        result.problems.append(f"sandbox failed: {event.data.get('message')}")
                    elif event.kind == "error":
                        result.problems.append(
                            f"{event.data.get('code')}: {event.data.get('message')}"
                        )
        except TimeoutError:
            result.problems.append(f"no result within {CHECK_TIMEOUT_S:.0f} s")
    result.reply = final or (texts[-1] if texts else "")
    if expect_tools is not None and result.tools != list(expect_tools):
        result.problems.append(f"expected tools {list(expect_tools)}, got {result.tools}")
    if expect_reply is not None and expect_reply.lower() not in result.reply.lower():
        result.problems.append(
            f"expected the reply to contain {expect_reply!r}, got {result.reply[:200]!r}"
        )
    result.ok = not result.problems
    return result
