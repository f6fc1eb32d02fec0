"""kit.toml and SKILL.md validation: one line naming the file, the key and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit.bundle import ConfigError, build_bundle, load_project
from kit.bundle.tools import CLI_TOOLS
from kit.cli.settings import EXAMPLE_PROJECT
from kit.cli.stack import run_stack
from tests.conftest import stack_settings


def _project(tmp_path: Path, toml: str, skill: str | None = None) -> Path:
    tmp_path.mkdir(exist_ok=True)
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
        (
            "[agents]\nname = 'ok'\n",
            "unknown table [agents]; allowed: agent, sandbox, limits, web, mail, dev",
        ),
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


def _egress_toml(value: str) -> str:
    return f"[agent]\nname = 'ok'\n[sandbox]\negress = {value}\n"


def test_egress_allowlist_is_read(tmp_path: Path) -> None:
    """Host names, *. wildcards and IPv4 addresses, each with or without a port, load as
    written; without the key the allowlist is empty."""
    entries = [
        "api.github.com",
        "*.pypi.org",
        "127.0.0.1:8080",
        "Git.Example.com:22",
        "files.pythonhosted.org:443",
        "*.internal.example:65535",
    ]
    project = load_project(_project(tmp_path, _egress_toml(json.dumps(entries))))
    assert project.sandbox.egress == tuple(entries)
    assert load_project(_project(tmp_path, "[agent]\nname = 'ok'\n")).sandbox.egress == ()


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('"api.github.com"', "sandbox.egress must be a list of strings"),
        ("[443]", "sandbox.egress must be a list of strings"),
        ('[""]', "entry '' is empty"),
        ('["  "]', "entry '  ' is empty"),
        ('["https://api.github.com"]', "is a URL; write the host alone"),
        ('["api.github.com/repos"]', "has a path or other URL parts"),
        ('["user@api.github.com"]', "has a path or other URL parts"),
        ('["api.github.com:0"]', "has a port that is not a number from 1 to 65535"),
        ('["api.github.com:65536"]', "has a port that is not a number from 1 to 65535"),
        ('["api.github.com:"]', "has a port that is not a number from 1 to 65535"),
        ('["api.github.com:+80"]', "has a port that is not a number from 1 to 65535"),
        ('["[::1]:443"]', "looks like an IPv6 address"),
        ('["::1"]', "looks like an IPv6 address"),
        ('["api github.com"]', "contains spaces"),
        ('["*"]', "is not a host name or an IPv4 address"),
        ('["api.*.com"]', "is not a host name or an IPv4 address"),
        ('["-bad-.example"]', "is not a host name or an IPv4 address"),
        ('["127.1"]', "is not a host name or an IPv4 address"),
        ('["256.0.0.1"]', "is not a host name or an IPv4 address"),
        ('["*.com"]', "is a wildcard over a whole top-level domain or an address"),
        ('["*.10.0.0.1"]', "is a wildcard over a whole top-level domain or an address"),
    ],
)
def test_bad_egress_entry_is_one_clear_line(tmp_path: Path, value: str, needle: str) -> None:
    """Each bad allowlist value is refused in one line naming kit.toml, sandbox.egress, what
    is wrong and every allowed form."""
    with pytest.raises(ConfigError) as info:
        load_project(_project(tmp_path, _egress_toml(value)))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "kit.toml") in message
    assert "sandbox.egress" in message
    assert needle in message
    assert "a *. wildcard (*.pypi.org)" in message
    assert ":port from 1 to 65535" in message


async def test_bad_egress_changes_no_stored_state(kit_tmp: Path) -> None:
    """`kit dev` on a project with a bad allowlist fails before it writes anything: a state
    dir holding an earlier build is left exactly as it was."""
    project = _project(kit_tmp / "proj", _egress_toml('["api.github.com"]'))
    state = kit_tmp / "state"
    build_bundle(load_project(project), state / "bundles")
    before = sorted((p.relative_to(state), p.stat().st_mtime_ns) for p in state.rglob("*"))
    (project / "kit.toml").write_text(_egress_toml('["https://api.github.com"]'))
    with pytest.raises(ConfigError, match=r"sandbox\.egress entry"):
        async with run_stack(stack_settings(state, project)):
            pass
    assert sorted((p.relative_to(state), p.stat().st_mtime_ns) for p in state.rglob("*")) == before


def _tools_toml(value: str) -> str:
    return f"[agent]\nname = 'ok'\nallowed_tools = {value}\n"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('["skill", "bash"]', '"skill" is not a tool (names are case-sensitive); did you mean "Skill"?'),
        ('["Skill", "BASH"]', '"BASH" is not a tool (names are case-sensitive); did you mean "Bash"?'),
        ('["Bsh"]', '"Bsh" is not a tool of the CLI; did you mean "Bash"?'),
        ('["Frobnicate"]', '"Frobnicate" is not a tool of the CLI.'),
        ('["Task"]', '"Task" is an old name; did you mean "Agent"?'),
        ('["Bash(git:*)"]', '"Bash(git:*)" is a permission rule, and kit allows whole tools'),
        ('["Read", "Bash(git:*)"]', 'neither gives the agent Bash nor limits it): use "Bash".'),
        ('["mcp__github__create_issue"]', "is an MCP tool, and kit.toml configures no MCP servers"),
        ('["DeferredToolPlaceholder"]', '"DeferredToolPlaceholder" is not a tool of the CLI.'),
    ],
)  # fmt: skip
def test_a_bad_tool_name_is_one_clear_line(tmp_path: Path, value: str, needle: str) -> None:
    """Wrong case, unknown names, old names, permission rules and MCP names in allowed_tools
    are refused in one line naming kit.toml, the key, the entry, the fix and every tool."""
    with pytest.raises(ConfigError) as info:
        load_project(_project(tmp_path, _tools_toml(value)))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'kit.toml'}: agent.allowed_tools entry ")
    assert needle in message
    assert message.endswith(f"Allowed: {', '.join(CLI_TOOLS)}.")


def test_the_clis_tool_names_load(tmp_path: Path) -> None:
    """Every tool name of the bundled CLI is accepted as written; the default is Skill."""
    project = load_project(_project(tmp_path, _tools_toml(json.dumps(list(CLI_TOOLS)))))
    assert project.agent.allowed_tools == CLI_TOOLS
    assert load_project(_project(tmp_path, "[agent]\nname = 'ok'\n")).agent.allowed_tools == (
        "Skill",
    )


async def test_a_bad_tool_name_changes_no_stored_state(kit_tmp: Path) -> None:
    """`kit dev` on a project whose allowed_tools names no tool fails before it writes
    anything: a state dir holding an earlier build is left exactly as it was."""
    project = _project(kit_tmp / "proj", _tools_toml('["Skill", "Bash"]'))
    state = kit_tmp / "state"
    build_bundle(load_project(project), state / "bundles")
    before = sorted((p.relative_to(state), p.stat().st_mtime_ns) for p in state.rglob("*"))
    (project / "kit.toml").write_text(_tools_toml('["skill", "bash"]'))
    with pytest.raises(ConfigError, match=r'allowed_tools entry "skill"'):
        async with run_stack(stack_settings(state, project)):
            pass
    assert sorted((p.relative_to(state), p.stat().st_mtime_ns) for p in state.rglob("*")) == before


def _web_toml(value: str) -> str:
    return f"[agent]\nname = 'ok'\n[web]\nsession_url = {value}\n"


def test_the_pages_session_url_is_read(tmp_path: Path) -> None:
    """``[web] session_url`` is kept as written: https anywhere, http at a loopback name."""
    for url in (
        "https://app.example.com/kit-session?x=1",
        "http://127.0.0.1:9000/s",
        "https://App.Example.COM.:8443/a;b,c/%20?q='x'",
        "http://localhost:9000",
    ):
        project = load_project(_project(tmp_path, _web_toml(json.dumps(url))))
        assert project.web_session_url == url
    assert load_project(_project(tmp_path, "[agent]\nname = 'ok'\n")).web_session_url is None


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("3", "must be a URL"),
        ('"app.example.com/kit-session"', "is not a URL"),
        ('"ftp://app.example.com/"', "is not a URL"),
        ('"https://app.example.com:99999/"', "is not a URL"),
        ('"http://app.example.com/kit-session"', "must be https"),
        ('"http://10.0.0.1/kit-session"', "must be https"),
        ('"https://me:pw@app.example.com/"', "no user, password or #fragment"),
        ('"https://app.example.com/#x"', "no user, password or #fragment"),
        # What the page's Content-Security-Policy names (connect-src) must be one origin:
        # nothing that ends the directive, adds a source or breaks the header.
        ('"https://app.example.com; script-src *"', "space, control or non-ASCII"),
        ('"https://app.example.com;report-uri=x/"', "by a DNS name or an IPv4 address"),
        ('"https://app.example.com *"', "space, control or non-ASCII"),
        ('"https://app.example.com\\n/kit-session"', "space, control or non-ASCII"),
        ('"https://app.example.com\\t/kit-session"', "space, control or non-ASCII"),
        ('"https://caf\u00e9.example/"', "space, control or non-ASCII"),
        ('"https://app.example.com\'/"', "by a DNS name or an IPv4 address"),
        ('"https://app_x.example.com/"', "by a DNS name or an IPv4 address"),
        ('"https://app.example.com:/kit-session"', "by a DNS name or an IPv4 address"),
        ('"http://[::1]:9000/kit-session"', "by a DNS name or an IPv4 address"),
    ],
)
def test_a_bad_session_url_is_one_clear_line(tmp_path: Path, value: str, needle: str) -> None:
    """A session URL the page must not use is refused in one line naming kit.toml, the key
    and an example."""
    with pytest.raises(ConfigError) as caught:
        load_project(_project(tmp_path, _web_toml(value)))
    message = str(caught.value)
    assert needle in message
    assert "web.session_url" in message
    assert "kit.toml" in message
    assert "\n" not in message


def _mail_toml(value: str) -> str:
    return f"[agent]\nname = 'ok'\n[mail]\naddress = {value}\n"


def test_the_mail_address_is_read_and_carried_in_the_bundle(tmp_path: Path) -> None:
    """``[mail] address`` is lower-cased, kept in the manifest, read back from the bundle;
    without it the manifest has no ``mail`` key, so older bundles keep their digests."""
    project = load_project(_project(tmp_path, _mail_toml('"Support.Team@Example.COM"')))
    assert project.mail_address == "support.team@example.com"
    bundle = build_bundle(project, tmp_path / "bundles")
    assert bundle.mail_address == "support.team@example.com"
    manifest = json.loads((bundle.path / "kit-bundle.json").read_text())
    assert manifest["mail"] == {"address": "support.team@example.com"}
    plain = load_project(_project(tmp_path, "[agent]\nname = 'ok'\n"))
    assert plain.mail_address is None
    plain_bundle = build_bundle(plain, tmp_path / "bundles2")
    assert "mail" not in json.loads((plain_bundle.path / "kit-bundle.json").read_text())
    assert plain_bundle.mail_address is None


@pytest.mark.parametrize(
    "value",
    [
        '"support+x@example.com"',
        '"support"',
        '"@example.com"',
        '"support@"',
        '"support@-bad.example"',
        '"sup port@example.com"',
        '"support@example.com\\r\\nBcc: x@evil.test"',
        "42",
        '"support@exa_mple.com"',
    ],
)
def test_a_bad_mail_address_is_one_clear_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"mail.address .* name@example.com"):
        load_project(_project(tmp_path, _mail_toml(value)))
