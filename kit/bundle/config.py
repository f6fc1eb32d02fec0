"""Loading an agent project: ``kit.toml``, the prompt file and the skills.

``kit.toml`` (every key optional except ``agent.name``)::

    [agent]
    name = "support-bot"           # a-z, 0-9 and "-", at most 64 characters
    description = "…"
    prompt = "prompt.md"           # system prompt file, relative to kit.toml
    allowed_tools = ["Skill", "Bash", "Read"]   # default: ["Skill"]; the bundled CLI's tool
                                   # names as it spells them (kit.bundle.tools.CLI_TOOLS):
                                   # "bash" or "Frobnicate" is refused with the name meant.
                                   # Whole tools only: a permission rule such as
                                   # "Bash(git:*)" is refused (the runtime passes the list
                                   # to the CLI as `tools` too, which drops such an entry,
                                   # leaving the agent without Bash), and so is any
                                   # "mcp__…" name (kit.toml configures no MCP servers).
    max_turns = 12                 # default: 16
    model = "claude-sonnet-4-5"    # default: the CLI's default model

    [sandbox]
    tier = "basic"                 # a name from kit.tiers (default "standard-1")
    idle_timeout = 600             # seconds without a turn before the sandbox stops
    egress = ["api.github.com", "*.pypi.org", "127.0.0.1:8080"]
                                   # where the sandbox may connect through the host's egress
                                   # proxy (default: nowhere but the model). Each entry is a
                                   # host name, a "*." wildcard (subdomains only, not the bare
                                   # domain) or an IPv4 address, with an optional ":port"
                                   # (1-65535; without one: 443 and 80). See docs/egress.md.

    [limits]                       # spend limits at the host's model proxy; see
    models = ["claude-sonnet-4*"]  # kit.bundle.limits for every key and default (by
    turn_tokens = 500000           # default only a per-turn ceiling of 4,000,000 tokens);
    session_usd = 20               # agent.model must be allowed (and priced, with a USD limit)

    [web]
    session_url = "https://app.example.com/kit-session"
                                   # where a deployed host's chat page gets a session: an
                                   # endpoint of yours that you protect and that calls
                                   # POST /v1/sessions with the API token (docs/web.md).
                                   # https (http only at a loopback address), a DNS
                                   # name or IPv4 address, printable ASCII; without it,
                                   # a deployed page can only rejoin sessions it was linked
                                   # to. kit dev's page gets sessions on its own.

    [mail]
    address = "support@example.com"
                                   # the agent's mail address: mail to it (or to
                                   # local+TOKEN@domain, the address its replies come from)
                                   # reaches the agent, one session per thread
                                   # (docs/email.md). Without it, kit dev uses
                                   # NAME@localhost and deployments take no mail.

    [dev]
    scenarios = ["scenarios"]      # files or folders of offline-model scenarios

Errors are :class:`~kit.bundle.errors.ConfigError` with one line naming the file, the key
and what is allowed. Unknown keys are errors too, so a typo never goes unnoticed.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kit.bundle.allowlist import ALLOWED_FORMS, parse_rule
from kit.bundle.errors import ConfigError, EgressRuleError
from kit.bundle.limits import DEFAULT_LIMITS, Limits, parse_limits
from kit.bundle.tools import CLI_TOOLS, tool_problem
from kit.loopback import is_loopback_host
from kit.tiers import get_tier, tier_names

CONFIG_FILE = "kit.toml"
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
DEFAULT_TOOLS = ("Skill",)
DEFAULT_MAX_TURNS = 16
DEFAULT_IDLE_TIMEOUT_S = 600
MAX_PROMPT_CHARS = 200_000

_ALLOWED: dict[str, set[str]] = {
    "agent": {"name", "description", "prompt", "allowed_tools", "max_turns", "model"},
    "sandbox": {"tier", "idle_timeout", "egress"},
    "limits": set(),  # its keys are checked by parse_limits
    "web": {"session_url"},
    "mail": {"address"},
    "dev": {"scenarios"},
}


@dataclass(frozen=True)
class AgentConfig:
    """What the runtime needs to run the agent."""

    name: str
    description: str
    system_prompt: str
    allowed_tools: tuple[str, ...]
    max_turns: int
    model: str | None


@dataclass(frozen=True)
class SandboxConfig:
    """How big the agent's sandbox is, how long it may idle and where it may connect."""

    tier: str
    idle_timeout_s: int
    egress: tuple[str, ...] = ()
    """The egress allowlist as written (see :mod:`kit.bundle.allowlist`); empty: no way
    out but the model proxy."""


@dataclass(frozen=True)
class Skill:
    """One skill folder with a valid ``SKILL.md``."""

    name: str
    description: str
    path: Path


@dataclass(frozen=True)
class Project:
    """An agent project as loaded from disk."""

    root: Path
    agent: AgentConfig
    sandbox: SandboxConfig
    scenarios: tuple[Path, ...]
    skills: tuple[Skill, ...]
    limits: Limits = DEFAULT_LIMITS
    """``[limits]``: what the host's model proxy lets the agent spend."""
    web_session_url: str | None = None
    """``[web] session_url``: where a deployed host's chat page gets a session (None: it
    gets none; kit dev's page gets them on its own)."""
    mail_address: str | None = None
    """``[mail] address``: the agent's mail address (None: kit dev uses
    ``NAME@localhost``; deployments take no mail)."""


def load_project(root: Path) -> Project:
    """Load and validate the project whose ``kit.toml`` is in ``root``."""
    root = root.resolve()
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path}: not found; run `kit new NAME` to create a project, "
            "or pass --project DIR pointing at a folder with a kit.toml."
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}).") from None
    where = str(path)
    for table, value in raw.items():
        if table not in _ALLOWED:
            raise ConfigError(
                f"{where}: unknown table [{table}]; allowed: agent, sandbox, limits, web, mail, dev."
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {table} must be a table ([{table}]).")
        for key in value:
            if table != "limits" and key not in _ALLOWED[table]:
                allowed = ", ".join(sorted(_ALLOWED[table]))
                raise ConfigError(f"{where}: unknown key {table}.{key}; allowed: {allowed}.")
    agent_raw: dict[str, Any] = raw.get("agent", {})
    sandbox_raw: dict[str, Any] = raw.get("sandbox", {})
    dev_raw: dict[str, Any] = raw.get("dev", {})
    agent = _agent(root, where, agent_raw)
    sandbox = _sandbox(where, sandbox_raw)
    limits = parse_limits(where, raw.get("limits", {}), agent.model)
    scenarios = tuple(
        root / p for p in _str_list(where, "dev.scenarios", dev_raw.get("scenarios", ["scenarios"]))
    )
    web_url = parse_session_url(where, raw.get("web", {}).get("session_url"))
    mail = raw.get("mail", {}).get("address")
    mail_address = None if mail is None else parse_mail_address(f"{where}: mail.address", mail)
    return Project(
        root, agent, sandbox, scenarios, load_skills(root / "skills"), limits, web_url, mail_address
    )


_MAIL_LOCAL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_MAIL_DOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def parse_mail_address(where: str, value: object) -> str:
    """An agent's mail address, lower-cased: ``local@domain`` with no ``+`` (kit adds
    ``+TOKEN`` per thread). Raises :class:`ConfigError` naming the fix."""
    addr = value.strip().lower() if isinstance(value, str) else ""
    local, at, domain = addr.partition("@")
    if not at or not _MAIL_LOCAL.fullmatch(local) or not _MAIL_DOMAIN.fullmatch(domain):
        shown = repr(value)[:200]
        raise ConfigError(
            f"{where} {shown} is not an address kit can use: write it as name@example.com "
            "(letters, digits, '.', '_' or '-' before the @, no '+': kit adds +TOKEN per thread)."
        )
    return addr


def _agent(root: Path, where: str, raw: dict[str, Any]) -> AgentConfig:
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"{where}: agent.name must be 1-64 characters of a-z, 0-9 and '-' "
            f"(not starting or ending with '-'), got {name!r}."
        )
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: agent.description must be a string.")
    prompt = ""
    if "prompt" in raw:
        rel = raw["prompt"]
        if not isinstance(rel, str) or not rel:
            raise ConfigError(f'{where}: agent.prompt must be a file name such as "prompt.md".')
        prompt_path = (root / rel).resolve()
        if not prompt_path.is_relative_to(root):
            raise ConfigError(f"{where}: agent.prompt must be inside the project folder.")
        if not prompt_path.is_file():
            raise ConfigError(f"{where}: agent.prompt names {rel}, which does not exist.")
        prompt = _utf8(prompt_path)
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(f"{prompt_path}: longer than {MAX_PROMPT_CHARS} characters.")
    tools = tuple(_str_list(where, "agent.allowed_tools", raw.get("allowed_tools", DEFAULT_TOOLS)))
    for entry in tools:
        problem = tool_problem(entry)
        if problem is not None:
            raise ConfigError(
                f"{where}: agent.allowed_tools entry {problem} Allowed: {', '.join(CLI_TOOLS)}."
            )
    max_turns = raw.get("max_turns", DEFAULT_MAX_TURNS)
    if not _positive_int(max_turns) or max_turns > 1000:
        raise ConfigError(f"{where}: agent.max_turns must be an integer from 1 to 1000.")
    model = raw.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ConfigError(f'{where}: agent.model must be a model name such as "claude-sonnet-4-5".')
    return AgentConfig(name, description, prompt, tools, max_turns, model)


def _sandbox(where: str, raw: dict[str, Any]) -> SandboxConfig:
    from kit.tiers import DEFAULT_TIER

    tier = raw.get("tier", DEFAULT_TIER)
    try:
        if not isinstance(tier, str):
            raise KeyError(tier)
        tier = get_tier(tier).name
    except KeyError:
        raise ConfigError(
            f"{where}: sandbox.tier {tier!r} is not a tier; allowed: {', '.join(tier_names())}."
        ) from None
    idle = raw.get("idle_timeout", DEFAULT_IDLE_TIMEOUT_S)
    if not _positive_int(idle) or idle > 6 * 3600:
        raise ConfigError(
            f"{where}: sandbox.idle_timeout must be whole seconds from 1 to 21600 (6 h)."
        )
    return SandboxConfig(tier=tier, idle_timeout_s=idle, egress=_egress(where, raw))


def _egress(where: str, raw: dict[str, Any]) -> tuple[str, ...]:
    value = raw.get("egress", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f'{where}: sandbox.egress must be a list of strings such as ["api.github.com"]; '
            f"allowed in each: {ALLOWED_FORMS}."
        )
    for entry in value:
        try:
            parse_rule(entry)
        except EgressRuleError as exc:
            raise ConfigError(
                f"{where}: sandbox.egress entry {entry!r} {exc.problem}; allowed: {ALLOWED_FORMS}."
            ) from None
    return tuple(value)


_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_SESSION_URL = re.compile(
    r"(https?)://([a-z0-9-]+(?:\.[a-z0-9-]+)*\.?(?::[0-9]{1,5})?)(?:[/?#][\x21-\x7e]*)?",
    re.ASCII | re.IGNORECASE,
)
"""A session URL whose origin a Content-Security-Policy source can name: ``http(s)://``, a
DNS name or IPv4 address (CSP's host-char: letters, digits, ``-``), an optional port, then
printable ASCII only. worker_shim/src/web.ts ``SESSION_URL`` is the same expression."""


def session_url_origin(url: str) -> str | None:
    """The lower-cased ``scheme://host[:port]`` of ``url`` as the page's CSP names it in
    ``connect-src``; None when ``url`` is not one :data:`_SESSION_URL` matches (nothing is
    added then: no text that ends the directive, adds a source or breaks the header)."""
    match = _SESSION_URL.fullmatch(url)
    return None if match is None else f"{match[1]}://{match[2]}".lower()


def parse_session_url(where: str, value: object) -> str | None:
    """``[web] session_url``: an https URL (http only at a loopback address), no user, no
    fragment; None when absent. :class:`ConfigError` (starting with ``where``) otherwise."""
    if value is None:
        return None
    hint = 'such as "https://app.example.com/kit-session"'
    if not isinstance(value, str) or len(value) > 2000:
        raise ConfigError(f"{where}: web.session_url must be a URL {hint}.")
    if not _PRINTABLE.fullmatch(value):
        raise ConfigError(
            f"{where}: web.session_url {value[:200]!r} holds a space, control or non-ASCII "
            f"character: percent-encode it (a host name in its xn-- form); {hint}."
        )
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        host = None
    if host is None or parts.scheme not in ("https", "http"):
        raise ConfigError(f"{where}: web.session_url {value[:200]!r} is not a URL {hint}.")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise ConfigError(
            f"{where}: web.session_url must hold no user, password or #fragment (the page "
            f"sends your login's cookies along); {hint}."
        )
    if session_url_origin(value) is None:
        raise ConfigError(
            f"{where}: web.session_url {value[:200]!r} must name its host by a DNS name or an "
            f"IPv4 address (letters, digits, '-' and '.') and any port by its digits: the "
            f"page's Content-Security-Policy names that origin; {hint}."
        )
    if parts.scheme == "http" and not is_loopback_host(host, subdomains=True):
        raise ConfigError(
            f"{where}: web.session_url must be https (http only at a loopback address such "
            f"as 127.0.0.1): the session token it answers must not cross a network in clear."
        )
    return value


def _str_list(where: str, key: str, value: object) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings.")
    return list(value)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_skills(skills_dir: Path) -> tuple[Skill, ...]:
    """Every ``skills/<name>/SKILL.md`` under ``skills_dir``, validated, sorted by name."""
    if not skills_dir.is_dir():
        return ()
    skills = []
    for child in sorted(skills_dir.iterdir()):
        if not child.is_dir() or child.name.startswith((".", "_")):
            continue
        skill_md = child / "SKILL.md"
        if not skill_md.is_file():
            raise ConfigError(f"{child}: a skill folder needs a SKILL.md; add one or remove it.")
        meta = parse_frontmatter(skill_md)
        name = meta.get("name", "")
        if name != child.name or not NAME_RE.match(name):
            raise ConfigError(
                f"{skill_md}: frontmatter name must equal the folder name {child.name!r} and be "
                f"1-64 characters of a-z, 0-9 and '-', got {name!r}."
            )
        description = meta.get("description", "")
        if not description or len(description) > 1024:
            raise ConfigError(
                f"{skill_md}: frontmatter description is required and at most 1024 characters "
                "(it is all the model sees before it uses the skill)."
            )
        skills.append(Skill(name, description, child))
    return tuple(skills)


def _utf8(path: Path) -> str:
    """A text file of the project, or a :class:`ConfigError` saying it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8."
        ) from None


def parse_frontmatter(path: Path) -> dict[str, str]:
    """The ``key: value`` pairs of a SKILL.md's YAML frontmatter (flat scalars only)."""
    text = _utf8(path)
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ConfigError(
            f"{path}: must start with YAML frontmatter ('---', name, description, '---')."
        )
    meta: dict[str, str] = {}
    key: str | None = None
    for line in lines[1:]:
        if line.strip() == "---":
            return {k: v.strip() for k, v in meta.items()}
        if key and line[:1] in (" ", "\t"):
            meta[key] = (meta[key] + " " + line.strip()).strip()
            continue
        if ":" not in line:
            if line.strip():
                raise ConfigError(f"{path}: cannot read frontmatter line {line!r}.")
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        value = value.strip()
        if value in (">", "|", ">-", "|-"):
            value = ""
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        meta[key] = value
    raise ConfigError(f"{path}: frontmatter is not closed with a '---' line.")
