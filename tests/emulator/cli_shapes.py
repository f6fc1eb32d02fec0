"""Requests in the shapes the bundled CLI sends the offline model, for unit tests.

Captured from ``GET /_emulator/requests`` on the real stack (claude-agent-sdk 0.2.187,
CLI 2.1.330): the texts the CLI adds are verbatim (long ones cut short), and so is where it
puts them. :class:`Chat` builds a conversation one model call at a time the way the CLI
does: a first prompt with a reminder block and a ``role: "system"`` entry after it, later
prompts as plain strings, a ``Skill`` result followed by the skill's body the first time a
session runs it and by a short note after that, and on resume after a sandbox died the
interrupted call's result and the *No response requested.* message the CLI adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emulator.model import Rule
from emulator.model.replies import Reply, choose_reply
from emulator.model.scenarios import load_scenario_file

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "skills" / "support-bot" / "scenarios" / "support.toml"
SCAFFOLD = ROOT / "kit" / "cli" / "templates" / "agent" / "scenarios" / "hello.toml"
BUNDLE = "/srv/bundles/55af37d1/skills"
"""Where skills live in the sandbox, as the CLI names them in a skill's body."""

REMINDER = {
    "type": "text",
    "text": "<system-reminder>\nAttribution for git commits and pull requests you create "
    "from here on (...):\n- End git commit messages with:\n...\n</system-reminder>\n",
}
ENVIRONMENT = {
    "role": "system",
    "content": "# Environment\nYou have been invoked in the following environment: \n"
    " - Primary working directory: /srv/sandboxes/s1/workspace\n",
}
NO_RESPONSE = "No response requested."
"""The assistant message the CLI adds on resume when the transcript ends on a user message."""
CALL_INTERRUPTED = (
    "[Tool call interrupted: the session ended before this call's result was recorded, so "
    "its outcome is unknown. Check whether it took effect before relying on it or running "
    "it again.]"
)
"""The result the CLI gives, on resume, a tool call whose result never reached the store."""
TOOL_REJECTED = (
    "The user doesn't want to proceed with this tool use. The tool use was rejected (eg. if "
    "it was a file edit, the new_string was NOT written to the file). STOP what you are doing "
    "and wait for the user to tell you how to proceed. Correction to the text above: this "
    "call was stopped while running, not refused before it ran. (...)"
)
"""The result of a tool call the user interrupted."""
INTERRUPTED = "[Request interrupted by user]\n"
INTERRUPTED_FOR_TOOL = "[Request interrupted by user for tool use]\n"

TOOL_OUTPUT = {
    'lookup.py" 1042': "Order 1042: shipped on 2026-11-18 via UPS, tracking 1Z999AA10123456784; "
    "items: 1 x Ridgeline Rain Jacket (navy, M), 2 x Merino Trail Socks; total $185.00.",
    'eligibility.py" 1038': "Order 1038, as of 2026-11-22: returnable until 2026-12-10 "
    "(delivered 2026-11-10, 12 days ago; 18 days left).",
    "--email dana.whitfield@example.com": "Customer Dana Whitfield "
    "<dana.whitfield@example.com>: 3 orders\nOrder 1033: delivered on 2026-10-11 (...)",
    "returns-policy/references/policy.md": "1\t# Acme Outfitters returns and refunds policy\n"
    "2\t\n3\t## The return window\n(...) within 5 business days (...)",
    'hello.py" world': "Hello, world! This reply came from the hello skill's script.",
}
"""What the example agents' tools print, keyed by a piece of the command or path."""


def rules_of(*paths: Path) -> list[Rule]:
    """The rules of scenario files, in order."""
    return [rule for path in paths for rule in load_scenario_file(path).rules]


def skill_body(skill: str) -> str:
    """The text block the CLI sends after a skill's first ``Skill`` result in a session."""
    name = skill.removeprefix("kit:")
    return f"Base directory for this skill: {BUNDLE}/{name}\n\n# {name}\n\nRun the script (...)\n"


def already_loaded(skill: str) -> str:
    """The text block the CLI sends after later ``Skill`` results of the same skill."""
    return f"Skill /{skill} is already loaded above; instructions unchanged."


def tool_output(name: str, tool_input: dict[str, Any]) -> str:
    """The example agents' tool output for a call (Read gives the file's numbered lines)."""
    key = str(tool_input.get("command", tool_input.get("file_path", "")))
    for piece, output in TOOL_OUTPUT.items():
        if piece in key:
            return output
    return f"(no canned output for {name} {tool_input})"


class Chat:
    """A conversation as the CLI sends it, grown by asking ``choose_reply`` for each reply."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self.messages: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        """Add a prompt: the session's first carries a reminder, later ones are strings."""
        if self.messages:
            self.messages.append({"role": "user", "content": text})
        else:
            prompt = {"role": "user", "content": [REMINDER, {"type": "text", "text": text}]}
            self.messages += [prompt, ENVIRONMENT]

    def step(self, *, run_tool: bool = True) -> Reply:
        """One model call: add the reply, and the tool's result unless ``run_tool`` is false."""
        reply = choose_reply(self.messages, self.rules)
        content: list[dict[str, Any]] = []
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        if reply.tool is not None:
            tool = {"id": reply.tool.id, "name": reply.tool.name, "input": reply.tool.input}
            content.append({"type": "tool_use", **tool})
        self.messages.append({"role": "assistant", "content": content})
        if reply.tool is not None and run_tool:
            self.messages.append({"role": "user", "content": self._result(reply)})
        return reply

    def finish(self, limit: int = 10) -> list[Reply]:
        """Model calls until one calls no tool (at most ``limit``)."""
        replies = [self.step()]
        while replies[-1].tool is not None and len(replies) < limit:
            replies.append(self.step())
        return replies

    def turn(self, text: str) -> list[Reply]:
        """Say ``text`` and run the turn to its end."""
        self.say(text)
        return self.finish()

    def resume(self, kept: int, recovery: str) -> None:
        """What the CLI sends after a sandbox died when only the first ``kept`` messages
        reached the store: a result for a call left without one, *No response requested.*,
        then the runtime's ``recovery`` prompt."""
        del self.messages[kept:]
        last = self.messages[-1]
        blocks = last["content"] if isinstance(last["content"], list) else []
        calls = [b for b in blocks if b.get("type") == "tool_use"]
        if last["role"] == "assistant" and calls:
            result = {"type": "tool_result", "content": CALL_INTERRUPTED, "is_error": True}
            self.messages.append(
                {"role": "user", "content": [{**result, "tool_use_id": calls[0]["id"]}]}
            )
        if self.messages[-1]["role"] == "user":
            self.messages.append(
                {"role": "assistant", "content": [{"type": "text", "text": NO_RESPONSE}]}
            )
        self.say(recovery)

    def _result(self, reply: Reply) -> list[dict[str, Any]]:
        assert reply.tool is not None
        if reply.tool.name != "Skill":
            output = tool_output(reply.tool.name, reply.tool.input)
            return [
                {
                    "type": "tool_result",
                    "tool_use_id": reply.tool.id,
                    "content": output,
                    "is_error": False,
                }
            ]
        skill = str(reply.tool.input["skill"])
        seen = any(
            isinstance(block, dict) and block.get("text") == skill_body(skill)
            for message in self.messages
            if isinstance(message["content"], list)
            for block in message["content"]
        )
        return [
            {
                "type": "tool_result",
                "tool_use_id": reply.tool.id,
                "content": f"Launching skill: {skill}",
            },
            {"type": "text", "text": already_loaded(skill) if seen else skill_body(skill)},
        ]
