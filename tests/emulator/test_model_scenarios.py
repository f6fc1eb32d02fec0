"""Scenario files: loading, every validation error, and reloading edited files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from emulator.model import ScenarioError, ScenarioSource, load_scenario_file
from kit.errors import KitError

SUPPORT = """
[[rule]]
name = "order lookup"
match = 'order\\s*#?(\\d+)'

[[rule.step]]
text = "Let me look up order {match[1]}."
tool = "Skill"
input = { skill = "order-lookup" }

[[rule.step]]
tool = "Bash"
input = { command = "python3 {skill_dir}/scripts/lookup.py {match[1]}", description = "Look up" }

[[rule.step]]
text = "Here is what I found:\\n\\n{tool_result}"
delay_ms = 200
chunk_chars = 8

[[rule]]
contains = "refund"
[[rule.step]]
error = { status = 529 }

[[rule]]
turn = 2
[[rule.step]]
text = "Second turn."

[[check]]
name = "looks up an order"
say = "Where is my order 1042?"
expect_tools = ["Skill", "Bash"]
expect_reply = "shipped"
"""


def write(folder: Path, name: str, text: str) -> Path:
    """Write one scenario file and return its path."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_rules_steps_and_checks(tmp_path: Path) -> None:
    """A valid file becomes rules with matchers, steps with defaults, and checks."""
    scenario = load_scenario_file(write(tmp_path, "support.toml", SUPPORT))
    lookup, refund, second = scenario.rules
    assert lookup.name == "order lookup"
    assert lookup.match is not None
    assert lookup.match.flags & re.IGNORECASE
    assert [step.tool for step in lookup.steps] == ["Skill", "Bash", None]
    assert lookup.steps[0].input == {"skill": "order-lookup"}
    assert (lookup.steps[0].chunk_chars, lookup.steps[2].chunk_chars) == (24, 8)
    assert lookup.steps[2].delay_ms == 200
    assert refund.name == "rule 2"
    assert refund.contains == "refund"
    error = refund.steps[0].error
    assert error is not None
    assert (error.status, error.type, error.should_retry) == (529, "overloaded_error", False)
    assert second.turn == 2
    (check,) = scenario.checks
    assert check.say == "Where is my order 1042?"
    assert check.expect_tools == ("Skill", "Bash")
    assert check.expect_reply == "shipped"


def test_matchers(tmp_path: Path) -> None:
    """regex groups, case-insensitive substrings, turn numbers and fallbacks all match."""
    text = """
[[rule]]
match = 'order (\\d+)(x)?'
[[rule.step]]
text = "a"
[[rule]]
contains = "REFUND"
[[rule.step]]
text = "b"
[[rule]]
turn = 3
[[rule.step]]
text = "c"
[[rule]]
[[rule.step]]
text = "d"
"""
    regex, contains, turn, fallback = load_scenario_file(write(tmp_path, "m.toml", text)).rules
    assert regex.matches("ORDER 12 please", 1) == ("ORDER 12", "12", "")
    assert regex.matches("nothing", 1) is None
    assert contains.matches("I want a Refund now", 1) == ("Refund",)
    assert contains.matches("no", 1) is None
    assert turn.matches("hi", 3) == ("hi",)
    assert turn.matches("hi", 2) is None
    assert fallback.matches("anything", 9) == ("anything",)


def test_the_documented_error_message(tmp_path: Path) -> None:
    """The unknown-key error reads exactly like the documented example."""
    path = write(
        tmp_path,
        "support.toml",
        '[[rule]]\n[[rule.step]]\ntext = "t"\n'
        '[[rule]]\nname = "order lookup"\nmach = "x"\n[[rule.step]]\ntext = "t"\n',
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(path)
    assert str(caught.value) == (
        f'{path}: rule 2 ("order lookup"): unknown key "mach"; '
        "allowed keys are name, match, contains, turn, step."
    )
    assert isinstance(caught.value, KitError)


STEP = '[[rule.step]]\ntext = "ok"\n'

BAD_FILES = [
    ("rules = 1\n", 'unknown top-level key "rules"; allowed keys are rule, check.'),
    ("rule = 1\n", '"rule" must be an array of tables, written [[rule]]; got 1.'),
    ("[[rule]]\n", "rule 1: has no steps; add at least one [[rule.step]] table."),
    ("[[rule]]\nname = 3\n" + STEP, 'rule 1: "name" must be a string, not 3.'),
    (
        "[[rule]]\nturn = 'one'\n" + STEP,
        '"turn" must be a whole number of at least 1, not the string "one".',
    ),
    ("[[rule]]\nturn = 0\n" + STEP, '"turn" must be a whole number of at least 1, not 0.'),
    ("[[rule]]\nturn = true\n" + STEP, '"turn" must be a whole number of at least 1, not true.'),
    ("[[rule]]\nmatch = '(unclosed'\n" + STEP, '"match" is not a valid Python regular expression'),
    ("[[rule]]\ncontains = ''\n" + STEP, '"contains" must not be empty'),
    (
        "[[rule]]\nname = 'x'\nmatch = 'a'\ncontains = 'b'\n" + STEP,
        "rule 1 (\"x\"): has both 'match' and 'contains'; a rule takes at most one of match, "
        "contains, turn",
    ),
    ("[[rule]]\nstep = [1]\n", '"step" must be an array of tables, written [[rule.step]]'),
    (
        "[[rule]]\n[[rule.step]]\ntexts = 'x'\n",
        'rule 1, step 1: unknown key "texts"; allowed keys are text, tool, input,',
    ),
    ("[[rule]]\n[[rule.step]]\ndelay_ms = 5\n", 'rule 1, step 1: has neither "text" nor "tool"'),
    (
        "[[rule]]\n[[rule.step]]\ntext = 'a'\ninput = { a = 1 }\n",
        'has "input" but no "tool"; add tool = "<ToolName>".',
    ),
    ("[[rule]]\n[[rule.step]]\ntool = 'Bash'\ninput = 'ls'\n", '"input" must be a table'),
    ("[[rule]]\n[[rule.step]]\ntool = ''\n", '"tool" must name a tool'),
    (
        "[[rule]]\n[[rule.step]]\ntext = 'hi {name}'\n",
        '"text": unknown placeholder {name}; allowed placeholders are '
        "{user}, {match[N]}, {tool_result}, {skill_dir}",
    ),
    (
        "[[rule]]\n[[rule.step]]\ntool = 'Bash'\ninput = { a = { b = ['{oops}'] } }\n",
        'rule 1, step 1: "input.a.b[0]": unknown placeholder {oops}',
    ),
    (
        "[[rule]]\n[[rule.step]]\ntool = 'T'\ninput = { at = 1979-05-27 }\n",
        '"input.at" is a date; tool input holds strings',
    ),
    (
        "[[rule]]\n[[rule.step]]\ntool = 'T'\ninput = { n = nan }\n",
        '"input.n" is nan, which JSON cannot carry.',
    ),
    (
        "[[rule]]\n[[rule.step]]\ntext = 'a'\ndelay_ms = -1\n",
        '"delay_ms" must be a whole number from 0 to 600000, not -1.',
    ),
    (
        "[[rule]]\n[[rule.step]]\ntext = 'a'\nchunk_chars = 0\n",
        '"chunk_chars" must be a whole number from 1 to 100000, not 0.',
    ),
    (
        "[[rule]]\n[[rule.step]]\nerror = 529\n",
        "step 1: error: must be a table, e.g. error = { status = 529",
    ),
    (
        "[[rule]]\n[[rule.step]]\nerror = { type = 'x' }\n",
        "error: needs a status, e.g. status = 529.",
    ),
    (
        "[[rule]]\n[[rule.step]]\nerror = { status = 200 }\n",
        '"status" must be a whole number from 400 to 599, not 200.',
    ),
    (
        "[[rule]]\n[[rule.step]]\nerror = { status = 500, retry = 1 }\n",
        'error: unknown key "retry"; allowed keys are status, type, message, should_retry.',
    ),
    (
        "[[rule]]\n[[rule.step]]\nerror = { status = 500, should_retry = 1 }\n",
        '"should_retry" must be true or false, not 1.',
    ),
    (
        "[[rule]]\n[[rule.step]]\ntext = 'a'\nerror = { status = 500 }\n",
        'a step with "error" replies with that error only',
    ),
    ("[[check]]\nname = 'c'\n", 'check 1 ("c"): needs "say", the message to send'),
    ("[[check]]\nsay = ''\n", 'check 1: needs "say"'),
    (
        "[[check]]\nsay = 'hi'\nexpect_tools = 'Bash'\n",
        '"expect_tools" must be an array of tool names',
    ),
    (
        "[[check]]\nsay = 'hi'\nexpect = 'x'\n",
        'check 1: unknown key "expect"; allowed keys are name, say, expect_tools, expect_reply.',
    ),
    ("[[rule]\n", "is not valid TOML"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_FILES)
def test_each_mistake_is_a_scenario_error(tmp_path: Path, text: str, fragment: str) -> None:
    """Every kind of mistake is a ScenarioError naming the file, the place and the fix."""
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert fragment in message


def test_unreadable_files_are_scenario_errors(tmp_path: Path) -> None:
    """A missing file, a folder or bytes that are not UTF-8 are ScenarioErrors too."""
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario_file(tmp_path / "missing.toml")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ScenarioError, match="is not UTF-8"):
        load_scenario_file(tmp_path / "binary.toml")
    with pytest.raises(ScenarioError, match="cannot be read"):
        load_scenario_file(tmp_path)


def test_source_orders_folder_files_by_name(tmp_path: Path) -> None:
    """A folder stands for its *.toml files in name order; dotfiles and others are skipped."""
    folder = tmp_path / "scenarios"
    folder.mkdir()
    write(folder, "b.toml", '[[rule]]\nname = "b"\n' + STEP)
    write(folder, "a.toml", '[[rule]]\nname = "a"\n' + STEP + '[[check]]\nsay = "hi"\n')
    write(folder, ".#a.toml", "broken [")
    write(folder, "notes.txt", "broken [")
    extra = write(tmp_path, "extra.toml", '[[rule]]\nname = "extra"\n' + STEP)
    source = ScenarioSource.from_paths([folder, extra])
    assert [rule.name for rule in source.rules()] == ["a", "b", "extra"]
    assert [check.say for check in source.checks()] == ["hi"]


def test_source_reloads_a_file_when_it_changes(tmp_path: Path) -> None:
    """An edited file is re-read on the next call; a new file in a folder appears."""
    path = write(tmp_path, "s.toml", '[[rule]]\nname = "old"\n' + STEP)
    source = ScenarioSource.from_paths([tmp_path])
    assert [rule.name for rule in source.rules()] == ["old"]
    write(tmp_path, "s.toml", '[[rule]]\nname = "new"\n' + STEP)
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))
    write(tmp_path, "t.toml", '[[rule]]\nname = "added"\n' + STEP)
    assert [rule.name for rule in source.rules()] == ["new", "added"]
    (tmp_path / "t.toml").unlink()
    assert [rule.name for rule in source.rules()] == ["new"]


def test_source_reports_a_broken_edit(tmp_path: Path) -> None:
    """An edit that breaks a file surfaces as a ScenarioError on the next call."""
    path = write(tmp_path, "s.toml", '[[rule]]\nname = "old"\n' + STEP)
    source = ScenarioSource.from_paths([path])
    write(tmp_path, "s.toml", '[[rule]]\nnme = "typo"\n' + STEP)
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))
    with pytest.raises(ScenarioError, match='unknown key "nme"'):
        source.rules()


def test_source_fails_fast(tmp_path: Path) -> None:
    """A missing path or a broken file fails when the source is made, not at the first reply."""
    with pytest.raises(ScenarioError, match="no such scenario file or folder"):
        ScenarioSource.from_paths([tmp_path / "nope"])
    write(tmp_path, "bad.toml", "[[rule]]\n")
    with pytest.raises(ScenarioError, match="has no steps"):
        ScenarioSource.from_paths([tmp_path])


def test_empty_source_has_nothing() -> None:
    """ScenarioSource.empty() has no rules and no checks."""
    source = ScenarioSource.empty()
    assert (source.rules(), source.checks(), source.paths) == ([], [], ())
