"""The tools the bundled Claude Code CLI knows: what ``agent.allowed_tools`` may name.

The runtime passes ``allowed_tools`` to the SDK as both ``tools`` (which tools exist for the
agent) and ``allowed_tools`` (which run without asking). The CLI drops any ``tools`` entry it
does not know, silently: ``["skill", "bash"]`` leaves the agent with no tools at all, and a
permission rule such as ``Bash(git:*)`` leaves it without Bash. So ``kit.toml`` is checked
against this list when it loads (:func:`tool_problem`).

How the list was obtained (claude-agent-sdk 0.2.187, bundled CLI 2.1.330): the CLI was
pointed at kit's offline model (``emulator.model``) and asked one question, and the tool
names of the ``/v1/messages`` request it sent were read from ``/_emulator/requests``: the
``tools`` array plus the deferred tools the CLI names in its system message (those it loads
through ``ToolSearch``). Once with no ``tools`` restriction, which gives the default tools;
once with ``tools`` set to every capitalised string constant in the CLI binary (about 800;
the CLI keeps only real tool names), which adds the tools that exist but are off by default
(``Glob``, ``Grep``, ``TaskCreate``, ``TaskGet``, ``TaskList``, ``TaskUpdate``).
``DeferredToolPlaceholder`` is left out: the CLI's own marker, never called. Old names the
CLI still maps to a tool (``Task`` → ``Agent``, ``KillShell`` → ``TaskStop``) are found by
asking with each alone; kit wants the current name. The slow test
``tests/bundle/test_tools.py`` asks the real CLI again and fails when the list drifts: update
both constants from its message when the SDK is upgraded.
"""

from __future__ import annotations

import difflib

CLI_TOOLS: tuple[str, ...] = (
    "Agent",
    "Bash",
    "CronCreate",
    "CronDelete",
    "CronList",
    "Edit",
    "EnterWorktree",
    "ExitWorktree",
    "Glob",
    "Grep",
    "ListAgents",
    "Monitor",
    "NotebookEdit",
    "Read",
    "ReportFindings",
    "ScheduleWakeup",
    "SendMessage",
    "Skill",
    "TaskCreate",
    "TaskGet",
    "TaskList",
    "TaskStop",
    "TaskUpdate",
    "ToolSearch",
    "WebFetch",
    "WebSearch",
    "Workflow",
    "Write",
)
"""Every tool name the bundled CLI accepts in ``tools``, sorted."""

OLD_NAMES: dict[str, str] = {"Task": "Agent", "KillShell": "TaskStop"}
"""Names the CLI still maps to a current tool; kit asks for the current one."""

MCP_PREFIX = "mcp__"


def tool_problem(entry: str) -> str | None:
    """What is wrong with ``entry`` as an ``allowed_tools`` name, with the fix, as a sentence
    about it (``"bash" is not a tool…``); None if it is a tool."""
    if entry in CLI_TOOLS:
        return None
    quoted = f'"{entry}"'
    if entry.startswith(MCP_PREFIX):
        return (
            f"{quoted} is an MCP tool, and kit.toml configures no MCP servers, so the agent "
            "would not have it: remove it."
        )
    base, paren, _ = entry.partition("(")
    if paren and entry.endswith(")"):
        fix = f'use "{base}"' if base in CLI_TOOLS else "name a whole tool"
        return (
            f"{quoted} is a permission rule, and kit allows whole tools (the CLI drops such an "
            f"entry: it neither gives the agent {base or 'the tool'} nor limits it): {fix}."
        )
    if entry in OLD_NAMES:
        return f'{quoted} is an old name; did you mean "{OLD_NAMES[entry]}"?'
    same = [t for t in CLI_TOOLS if t.lower() == entry.lower()]
    close = same or difflib.get_close_matches(entry, CLI_TOOLS, n=1, cutoff=0.75)
    what = "is not a tool (names are case-sensitive)" if same else "is not a tool of the CLI"
    return f'{quoted} {what}; did you mean "{close[0]}"?' if close else f"{quoted} {what}."
