"""The scenario format as data: rules, steps, checks, and :class:`ScenarioError`.

:class:`ScenarioError` is an :class:`~emulator.model.errors.OfflineModelError` (the
package's tree is drawn in :mod:`emulator.model.errors`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from emulator.model.errors import OfflineModelError

JsonValue: TypeAlias = str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"] | None
"""A value that survives ``json.dumps``: what a tool's ``input`` may hold."""

DEFAULT_CHUNK_CHARS = 24
"""Size, in characters, of the text deltas a step streams unless it sets ``chunk_chars``."""


class ScenarioError(OfflineModelError):
    """A scenario file is missing, unreadable or does not follow the format."""


@dataclass(frozen=True)
class ApiError:
    """An HTTP error a step replies with instead of a message, to rehearse API failures."""

    status: int
    type: str
    message: str
    should_retry: bool = False
    """Sent as the ``x-should-retry`` header, which the CLI honours. Off by default: replies
    are stateless, so a retry would only meet the same error (after minutes of back-off)."""


@dataclass(frozen=True)
class Step:
    """One model reply within a rule: text, then optionally one tool call; or an error."""

    text: str | None = None
    tool: str | None = None
    input: dict[str, JsonValue] = field(default_factory=dict)
    delay_ms: int = 0
    chunk_chars: int = DEFAULT_CHUNK_CHARS
    chunk_delay_ms: int = 0
    error: ApiError | None = None


@dataclass(frozen=True)
class Rule:
    """A matcher (at most one of ``match``, ``contains``, ``turn``) and the steps to reply."""

    name: str
    steps: tuple[Step, ...]
    match: re.Pattern[str] | None = None
    contains: str | None = None
    turn: int | None = None
    origin: str = ""
    """Where the rule was defined, e.g. ``scenarios/support.toml: rule 2``."""

    @property
    def reads_text(self) -> bool:
        """Whether the rule looks at the user text (``match`` or ``contains``)."""
        return self.match is not None or self.contains is not None

    def matches(self, user_text: str, turn: int) -> tuple[str, ...] | None:
        """Return the match groups (``match[0]`` first) if the rule applies, else ``None``.

        A ``contains`` rule gives the matched substring as ``match[0]``; a ``turn`` rule and
        a fallback rule give the whole user text.
        """
        if self.match is not None:
            found = self.match.search(user_text)
            if found is None:
                return None
            return (found[0], *(group or "" for group in found.groups()))
        if self.contains is not None:
            found = re.search(re.escape(self.contains), user_text, re.IGNORECASE)
            return None if found is None else (found[0],)
        if self.turn is not None and self.turn != turn:
            return None
        return (user_text,)


@dataclass(frozen=True)
class Check:
    """A scripted conversation ``kit test`` runs through the whole stack."""

    name: str
    say: str
    expect_tools: tuple[str, ...] | None = None
    """None: any tools; a tuple (even empty): exactly these tools, in order."""
    expect_reply: str | None = None


@dataclass(frozen=True)
class Scenario:
    """The rules and checks of one scenario file."""

    path: Path
    rules: tuple[Rule, ...] = ()
    checks: tuple[Check, ...] = ()
