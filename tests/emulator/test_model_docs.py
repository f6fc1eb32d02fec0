"""docs/scenarios.md stays true: its examples load, and the worked example plays as told."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from emulator.model import ScenarioError
from emulator.model.parse import parse_scenario
from emulator.model.replies import choose_reply

DOC = Path(__file__).resolve().parents[2] / "docs" / "scenarios.md"
TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
ERROR_LINES = re.search(
    r"For example:\n\n```\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL
)


@pytest.mark.parametrize("block", TOML_BLOCKS)
def test_every_toml_example_loads(block: str) -> None:
    """Each TOML block in the doc is a valid scenario file."""
    parse_scenario(tomllib.loads(block), Path("scenarios/support.toml"))


def test_worked_example_plays_as_described() -> None:
    """The worked example calls Skill, then Bash in the skill folder, then reports the result."""
    rules = parse_scenario(tomllib.loads(TOML_BLOCKS[0]), Path("support.toml")).rules
    prompt = {"role": "user", "content": "Where is my order 1042?"}
    first = choose_reply([prompt], rules)
    assert first.text == "Let me look up order 1042."
    assert first.tool is not None
    assert first.tool.name == "Skill"
    skill_body = {"type": "text", "text": "Base directory for this skill: /s/order-lookup\n\n..."}
    messages: list[Any] = [
        prompt,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "Skill"}]},
        {"role": "user", "content": [{"type": "tool_result", "content": "Launching"}, skill_body]},
    ]
    second = choose_reply(messages, rules)
    assert second.tool is not None
    assert second.tool.input["command"] == "python3 /s/order-lookup/scripts/lookup.py 1042"
    messages += [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "b", "name": "Bash"}]},
        {"role": "user", "content": [{"type": "tool_result", "content": "1042: shipped"}]},
    ]
    assert choose_reply(messages, rules).text == "Here is what I found:\n\n1042: shipped"


ERROR_EXAMPLES = {
    0: '[[rule]]\n[[rule.step]]\ntext="x"\n[[rule]]\nname = "order lookup"\nmach = 1\n',
    1: '[[rule]]\nname = "order lookup"\n[[rule.step]]\ntext = "x"\n'
    '[[rule.step]]\ntool = "Bash"\ninput = { command = "{dir}" }\n',
    2: '[[rule]]\n[[rule.step]]\ntext="x"\n[[rule]]\n[[rule.step]]\ntext="x"\n'
    '[[rule]]\nmatch = "a"\ncontains = "b"\n[[rule.step]]\ntext="x"\n',
    3: '[[rule]]\n[[rule.step]]\ntext = "x"\ninput = { a = 1 }\n',
    4: '[[check]]\nname = "looks up an order"\n',
}


@pytest.mark.parametrize(("index", "source"), sorted(ERROR_EXAMPLES.items()))
def test_documented_error_messages_are_real(index: int, source: str) -> None:
    """The error messages the doc quotes are the ones the loader gives."""
    assert ERROR_LINES is not None
    expected = ERROR_LINES.group(1).splitlines()[index]
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(tomllib.loads(source), Path("scenarios/support.toml"))
    assert str(caught.value) == expected
