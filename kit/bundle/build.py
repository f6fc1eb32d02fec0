"""Content-addressed bundles: the skills as a Claude Code plugin plus the agent's config.

A bundle is a folder named by its digest::

    <root>/<digest>/
      kit-bundle.json            manifest: format, agent config, skills, sandbox (tier,
                                 idle timeout, egress allowlist when not empty), limits
                                 (the [limits] keys set, when any), web (the page's
                                 session_url, when set), file digests
      .claude-plugin/plugin.json {"name": "kit", ...}: the skills load as plugin "kit"
      skills/<name>/...          copied from the project

The same bytes are what ``kit dev`` runs and what ``kit deploy`` ships. The runtime calls
:func:`open_bundle`, which verifies every file against the manifest before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kit.bundle.allowlist import parse_rule
from kit.bundle.config import AgentConfig, Project, parse_mail_address, parse_session_url
from kit.bundle.errors import BundleError, ConfigError, EgressRuleError
from kit.bundle.limits import DEFAULT_LIMITS, Limits

FORMAT = 1
MANIFEST = "kit-bundle.json"
PLUGIN_NAME = "kit"
_SKIP_DIRS = {"__pycache__", ".git", ".pytest_cache", ".mypy_cache", "node_modules"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
MAX_BUNDLE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class Bundle:
    """A built, verified bundle on disk."""

    path: Path
    digest: str
    agent: AgentConfig
    skills: tuple[str, ...]
    tier: str
    idle_timeout_s: int
    egress: tuple[str, ...] = ()
    """The agent's egress allowlist (``kit.toml`` ``[sandbox] egress``); see
    :mod:`kit.bundle.allowlist`."""
    limits: Limits = DEFAULT_LIMITS
    """What the host's model proxy lets the agent spend (``kit.toml`` ``[limits]``)."""
    web_session_url: str | None = None
    """Where a deployed host's chat page gets a session (``kit.toml`` ``[web]
    session_url``); None: it gets none there."""
    mail_address: str | None = None
    """The agent's mail address (``kit.toml`` ``[mail] address``); None: none set."""

    @property
    def plugin_dir(self) -> Path:
        """The folder to pass as a local plugin (``--plugin-dir``)."""
        return self.path


def build_bundle(project: Project, root: Path) -> Bundle:
    """Build ``project`` into ``root/<digest>`` (reused when it already exists)."""
    files = _collect(project)
    agent = asdict(project.agent)
    skills = [s.name for s in project.skills]
    plugin = {
        "name": PLUGIN_NAME,
        "version": "1.0.0",
        "description": project.agent.description or f"Skills of the {project.agent.name} agent.",
    }
    plugin_bytes = _canon(plugin)
    digests = {rel: _sha256(src.read_bytes()) for rel, src in files.items()}
    digests[".claude-plugin/plugin.json"] = _sha256(plugin_bytes)
    sandbox: dict[str, Any] = {
        "tier": project.sandbox.tier,
        "idle_timeout_s": project.sandbox.idle_timeout_s,
    }
    if project.sandbox.egress:  # absent when empty: such bundles keep their digests
        sandbox["egress"] = list(project.sandbox.egress)
    body: dict[str, Any] = {
        "format": FORMAT,
        "agent": agent,
        "skills": skills,
        "sandbox": sandbox,
        "files": dict(sorted(digests.items())),
    }
    limits = project.limits.to_manifest()
    if limits:  # absent when nothing is set: such bundles keep their digests
        body["limits"] = limits
    if project.web_session_url is not None:  # likewise
        body["web"] = {"session_url": project.web_session_url}
    if project.mail_address is not None:  # likewise
        body["mail"] = {"address": project.mail_address}
    digest = _sha256(_canon(body))
    manifest = {**body, "digest": digest}
    root.mkdir(parents=True, exist_ok=True)
    final = root / digest[:32]
    if _reusable(final, digest):
        return open_bundle(final)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        for rel, src in files.items():
            _write(tmp / rel, src.read_bytes(), os.access(src, os.X_OK))
        _write(tmp / ".claude-plugin" / "plugin.json", plugin_bytes)
        _write(tmp / MANIFEST, _canon(manifest))
        os.chmod(tmp, DIR_MODE)
        if os.path.lexists(final):  # not this bundle's bytes, or not its modes: set aside
            os.rename(final, tempfile.mkdtemp(prefix=".stale-", dir=root))
        try:
            tmp.rename(final)
        except OSError:
            if not _reusable(final, digest):  # another build's, done meanwhile
                raise
    finally:
        for leftover in [tmp, *root.glob(".stale-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
    return open_bundle(final)


FILE_MODE, EXEC_MODE, DIR_MODE = 0o644, 0o755, 0o755
"""A bundle's modes, set explicitly (never the umask's): readable by the sandbox user, and
writable by no one but the user who built it."""


def _write(dest: Path, data: bytes, executable: bool = False) -> None:
    for folder in reversed([p for p in dest.parents if not p.exists()]):
        folder.mkdir()
        os.chmod(folder, DIR_MODE)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchmod(fd, EXEC_MODE if executable else FILE_MODE)


def _reusable(path: Path, digest: str) -> bool:
    """Whether ``path`` is the bundle ``digest``, intact, every entry this user's with a
    bundle's mode (a bundle an older kit wrote under umask 0 or 077 is not)."""
    try:
        if open_bundle(path).digest != digest:
            return False
    except BundleError:
        return False
    uid = os.geteuid()
    for folder, dirs, names in os.walk(path):
        for name in [*dirs, *names, ""]:
            st = os.lstat(os.path.join(folder, name)) if name else os.lstat(folder)
            mode = stat.S_IMODE(st.st_mode)
            want = (DIR_MODE,) if stat.S_ISDIR(st.st_mode) else (FILE_MODE, EXEC_MODE)
            if st.st_uid != uid or mode not in want or stat.S_ISLNK(st.st_mode):
                return False
    return True


def open_bundle(path: Path) -> Bundle:
    """Read and verify a built bundle; :class:`BundleError` when anything does not match."""
    manifest_path = path / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"{manifest_path}: cannot read the bundle manifest ({exc}); rebuild it."
        ) from None
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"{manifest_path}: bundle format {manifest.get('format')!r}; this kit reads {FORMAT}."
        )
    body = {k: v for k, v in manifest.items() if k != "digest"}
    digest = manifest.get("digest")
    if _sha256(_canon(body)) != digest:
        raise BundleError(
            f"{manifest_path}: the manifest does not match its digest; rebuild the bundle."
        )
    # The folder's name is the digest: a manifest consistent with itself but not that name
    # was written by someone else (a forged agent config, egress, limits), not built here.
    if not isinstance(digest, str) or path.name != digest[:32]:
        raise BundleError(
            f"{manifest_path}: the bundle's folder is not named by its digest; rebuild it."
        )
    listed = {MANIFEST, *manifest["files"]}
    for folder, _dirs, names in os.walk(path):
        for name in names:
            rel = Path(folder, name).relative_to(path).as_posix()
            if rel not in listed:  # a skill or file slipped in would be loaded too
                raise BundleError(
                    f"{path / rel}: not listed in the bundle's manifest; rebuild the bundle."
                )
    for rel, want in manifest["files"].items():
        file = path / rel
        try:
            if file.is_symlink():
                raise OSError
            got = _sha256(file.read_bytes())
        except OSError:
            raise BundleError(
                f"{file}: listed in the bundle but missing; rebuild the bundle."
            ) from None
        if got != want:
            raise BundleError(f"{file}: changed since the bundle was built; rebuild the bundle.")
    a = manifest["agent"]
    agent = AgentConfig(
        name=a["name"],
        description=a["description"],
        system_prompt=a["system_prompt"],
        allowed_tools=tuple(a["allowed_tools"]),
        max_turns=a["max_turns"],
        model=a["model"],
    )
    sandbox = manifest["sandbox"]
    egress = tuple(sandbox.get("egress", ()))  # bundles built before the key: none
    for entry in egress:
        try:
            parse_rule(entry)
        except (EgressRuleError, TypeError, AttributeError) as exc:
            problem = exc.problem if isinstance(exc, EgressRuleError) else exc
            raise BundleError(
                f"{manifest_path}: egress entry {entry!r} is not valid ({problem}); rebuild the"
                " bundle."
            ) from None
    try:
        limits = Limits.from_manifest(manifest.get("limits", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f"{manifest_path}: limits are not valid ({exc}); rebuild the bundle."
        ) from None
    web = manifest.get("web", {})  # bundles built before the key, or without it: none
    if not isinstance(web, dict):
        raise BundleError(f"{manifest_path}: web is not a table; rebuild the bundle.")
    try:
        session_url = parse_session_url(str(manifest_path), web.get("session_url"))
    except ConfigError as exc:
        raise BundleError(f"{exc} Rebuild the bundle.") from None
    mail = manifest.get("mail", {})
    try:
        if not isinstance(mail, dict):
            raise ConfigError(f"{manifest_path}: mail is not a table.")
        mail_address = (
            None
            if mail.get("address") is None
            else parse_mail_address(f"{manifest_path}: mail.address", mail["address"])
        )
    except ConfigError as exc:
        raise BundleError(f"{exc} Rebuild the bundle.") from None
    return Bundle(
        path=path,
        digest=manifest["digest"],
        agent=agent,
        skills=tuple(manifest["skills"]),
        tier=sandbox["tier"],
        idle_timeout_s=sandbox["idle_timeout_s"],
        egress=egress,
        limits=limits,
        web_session_url=session_url,
        mail_address=mail_address,
    )


def _collect(project: Project) -> dict[str, Path]:
    files: dict[str, Path] = {}
    total = 0
    for skill in project.skills:
        for dirpath, dirnames, filenames in os.walk(skill.path):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if name.endswith(_SKIP_SUFFIXES):
                    continue
                if src.is_symlink():
                    raise BundleError(
                        f"{src}: symlinks are not bundled; copy the file into the skill instead."
                    )
                total += src.stat().st_size
                if total > MAX_BUNDLE_BYTES:
                    raise BundleError(
                        f"{project.root}: skills exceed {MAX_BUNDLE_BYTES // 2**20} MiB; "
                        "move large data out of skills/."
                    )
                rel = "skills/" + src.relative_to(skill.path.parent).as_posix()
                files[rel] = src
    return files


def _canon(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
