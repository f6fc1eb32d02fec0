"""An offline stand-in for the Anthropic Messages API, answering from scripted scenarios.

``kit dev`` serves :func:`create_app` and points the agent's ``ANTHROPIC_BASE_URL`` at it
when no ``ANTHROPIC_API_KEY`` is set. Replies come from scenario files (TOML, described in
docs/scenarios.md), loaded through a :class:`ScenarioSource` that re-reads edited files.

Modules: ``templates`` (placeholders), ``schema`` (the scenario data types),
``parse`` (validation), ``scenarios`` (files and reloading), ``conversation`` (reading a
request's messages), ``replies`` (choosing a reply), ``sse`` (encoding it), ``app`` (HTTP
wiring).
"""

from emulator.model.app import create_app
from emulator.model.errors import OfflineModelError
from emulator.model.scenarios import ScenarioSource, load_scenario_file
from emulator.model.schema import ApiError, Check, Rule, Scenario, ScenarioError, Step

__all__ = [
    "ApiError",
    "Check",
    "OfflineModelError",
    "Rule",
    "Scenario",
    "ScenarioError",
    "ScenarioSource",
    "Step",
    "create_app",
    "load_scenario_file",
]
