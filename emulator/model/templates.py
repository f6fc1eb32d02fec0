"""Reply templates: ``str.format``-style placeholders, restricted to a fixed set of names.

A template is the scenario author's text; it is formatted, never the user's text. Only
these fields exist (``{{`` and ``}}`` stand for literal braces)::

    {user}          the user's text for this turn
    {match[N]}      group N of the rule's regex (0 = the whole match; "" when missing)
    {tool_result}   the text of the most recent tool result that counts as a tool round
    {skill_dir}     the folder of the skill the most recent Skill call ran

Attribute access, positional fields and nested format specs are refused, so a template can
never reach into Python objects. :func:`check_template` raises :class:`TemplateError` with a
sentence saying what is allowed; the scenario loader wraps it with the file and rule.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from emulator.model.errors import OfflineModelError

FIELDS = ("user", "match[N]", "tool_result", "skill_dir")
"""The placeholder names a template may use, as shown in error messages."""

_MATCH_FIELD = re.compile(r"match\[(\d{1,3})\]")
_FORMATTER = string.Formatter()


class TemplateError(OfflineModelError):
    """A template uses a placeholder or format that does not exist."""


@dataclass(frozen=True)
class TemplateContext:
    """The values a template may refer to."""

    user: str = ""
    match: tuple[str, ...] = ()
    tool_result: str = ""
    skill_dir: str = ""
    _by_name: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {"user": self.user, "tool_result": self.tool_result, "skill_dir": self.skill_dir}
        object.__setattr__(self, "_by_name", by_name)

    def value(self, field_name: str) -> str:
        """Return the value of one placeholder, or raise :class:`TemplateError`."""
        if field_name in self._by_name:
            return self._by_name[field_name]
        group = _MATCH_FIELD.fullmatch(field_name)
        if group is not None:
            index = int(group[1])
            return self.match[index] if index < len(self.match) else ""
        if field_name == "match":
            raise TemplateError("use {match[0]} for the whole match and {match[1]} for group 1")
        shown = "{}" if field_name == "" else "{" + field_name + "}"
        raise TemplateError(
            f"unknown placeholder {shown}; allowed placeholders are "
            + ", ".join("{" + name + "}" for name in FIELDS)
            + " (write {{ and }} for literal braces)"
        )


def render(template: str, context: TemplateContext) -> str:
    """Format ``template`` with ``context``; raise :class:`TemplateError` if it is malformed."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"{exc} (write {{{{ and }}}} for literal braces)") from exc
    out: list[str] = []
    for literal, field_name, spec, conversion in parts:
        out.append(literal)
        if field_name is None:
            continue
        value = context.value(field_name)
        if spec and ("{" in spec or "}" in spec):
            raise TemplateError(
                f"nested fields in the format spec of {{{field_name}}} are not supported"
            )
        try:
            converted = _FORMATTER.convert_field(value, conversion)
            out.append(_FORMATTER.format_field(converted, spec or ""))
        except ValueError as exc:
            raise TemplateError(f"bad format for {{{field_name}}}: {exc}") from exc
    return "".join(out)


_DUMMY = TemplateContext(
    user="user text", match=("m0", "m1"), tool_result="result", skill_dir="/skills/x"
)


def check_template(template: str) -> None:
    """Raise :class:`TemplateError` unless ``template`` renders with every allowed field."""
    render(template, _DUMMY)
