"""Reply templates: the fixed set of placeholders, and the errors for everything else."""

from __future__ import annotations

import pytest

from emulator.model.templates import TemplateContext, TemplateError, check_template, render

CONTEXT = TemplateContext(
    user="Where is order 1042?",
    match=("order 1042", "1042"),
    tool_result="shipped",
    skill_dir="/skills/orders",
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("You said: {user}", "You said: Where is order 1042?"),
        ("{match[0]} / {match[1]}", "order 1042 / 1042"),
        ("Result: {tool_result}", "Result: shipped"),
        ("python3 {skill_dir}/scripts/x.py", "python3 /skills/orders/scripts/x.py"),
        ("{{literal}} {user!r:.6}", "{literal} 'Where"),
        ("no placeholders", "no placeholders"),
    ],
)
def test_render_fills_each_placeholder(template: str, expected: str) -> None:
    """Every allowed placeholder, conversion and format spec renders like str.format."""
    assert render(template, CONTEXT) == expected


def test_missing_match_group_is_empty() -> None:
    """A regex group the rule's pattern does not have renders as an empty string."""
    assert render("[{match[7]}]", CONTEXT) == "[]"


def test_user_content_is_never_formatted() -> None:
    """Braces in the user's text come out verbatim: only the template is formatted."""
    context = TemplateContext(user="{tool_result} {0} {user.__class__}")
    assert render("{user}", context) == "{tool_result} {0} {user.__class__}"


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{nope}", "unknown placeholder {nope}; allowed placeholders are {user}"),
        ("{user.__class__}", "unknown placeholder {user.__class__}"),
        ("{0}", "unknown placeholder {0}"),
        ("{}", "unknown placeholder {}"),
        ("{match}", "use {match[0]}"),
        ("{user!x}", "bad format for {user}"),
        ("{user:d}", "bad format for {user}"),
        ("{user:{user}}", "nested fields"),
        ("unclosed {user", "literal braces"),
        ("stray }", "literal braces"),
    ],
)
def test_bad_templates_are_refused(template: str, fragment: str) -> None:
    """A placeholder outside the fixed set, or a malformed one, is a TemplateError."""
    with pytest.raises(TemplateError) as caught:
        check_template(template)
    assert fragment in str(caught.value)
