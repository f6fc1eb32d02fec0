"""kit.toml and SKILL.md validation: one line naming the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.bundle import ConfigError, load_project
from kit.cli.settings import EXAMPLE_PROJECT


def _project(tmp_path: Path, toml: str, skill: str | None = None) -> Path:
    (tmp_path / "kit.toml").write_text(toml)
    (tmp_path / "prompt.md").write_text("Be helpful.")
    if skill is not None:
        (tmp_path / "skills" / "greet").mkdir(parents=True)
        (tmp_path / "skills" / "greet" / "SKILL.md").write_text(skill)
    return tmp_path


def test_example_project_loads() -> None:
    """The bundled example is a valid project with its two skills."""
    project = load_project(EXAMPLE_PROJECT)
    assert project.agent.name == "support-bot"
    assert [s.name for s in project.skills] == ["order-lookup", "returns-policy"]


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        (
            "[agent]\nname = 'ok'\nmax_turn = 3\n",
            "unknown key agent.max_turn; allowed: allowed_tools, description, max_turns, model, name, prompt",
        ),
        ("[agent]\nname = 'Bad Name'\n", "agent.name must be 1-64 characters"),
        (
            "[agent]\nname = 'ok'\n[sandbox]\ntier = 'huge'\n",
            "sandbox.tier 'huge' is not a tier; allowed: lite, basic",
        ),
        (
            "[agent]\nname = 'ok'\nmax_turns = 0\n",
            "agent.max_turns must be an integer from 1 to 1000",
        ),
        (
            "[agent]\nname = 'ok'\nallowed_tools = 'Bash'\n",
            "agent.allowed_tools must be a list of strings",
        ),
        (
            "[agent]\nname = 'ok'\nprompt = 'missing.md'\n",
            "agent.prompt names missing.md, which does not exist",
        ),
        (
            "[agent]\nname = 'ok'\nprompt = '../../etc/passwd'\n",
            "agent.prompt must be inside the project folder",
        ),
        ("[agents]\nname = 'ok'\n", "unknown table [agents]; allowed: agent, sandbox, dev"),
        ("[agent\nname = 'ok'\n", "not valid TOML"),
        (
            "[agent]\nname = 'ok'\n[sandbox]\nidle_timeout = -5\n",
            "sandbox.idle_timeout must be whole seconds",
        ),
    ],
)
def test_broken_config_is_one_clear_line(tmp_path: Path, toml: str, needle: str) -> None:
    """Each mistake is reported in one line that names kit.toml and the fix."""
    with pytest.raises(ConfigError) as info:
        load_project(_project(tmp_path, toml))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "kit.toml") in message
    assert needle in message


@pytest.mark.parametrize(
    ("skill", "needle"),
    [
        ("no frontmatter", "must start with YAML frontmatter"),
        (
            "---\nname: other\ndescription: x\n---\n",
            "frontmatter name must equal the folder name 'greet'",
        ),
        ("---\nname: greet\n---\n", "frontmatter description is required"),
        ("---\nname: greet\ndescription: x\n", "frontmatter is not closed"),
    ],
)
def test_broken_skill_names_the_file(tmp_path: Path, skill: str, needle: str) -> None:
    """A bad SKILL.md is reported with its path."""
    with pytest.raises(ConfigError) as info:
        load_project(_project(tmp_path, "[agent]\nname = 'ok'\n", skill))
    assert "SKILL.md" in str(info.value)
    assert needle in str(info.value)


def test_missing_kit_toml_says_how_to_start(tmp_path: Path) -> None:
    """No kit.toml → a message pointing at `kit new` and --project."""
    with pytest.raises(ConfigError, match="kit new NAME"):
        load_project(tmp_path)


def test_folded_description_is_read(tmp_path: Path) -> None:
    """Multi-line (folded) frontmatter descriptions are joined."""
    skill = "---\nname: greet\ndescription: >\n  Says hello\n  to people.\n---\nbody\n"
    project = load_project(_project(tmp_path, "[agent]\nname = 'ok'\n", skill))
    assert project.skills[0].description == "Says hello to people."
