"""``kit new NAME``: scaffold an agent project from the bundled template."""

from __future__ import annotations

from pathlib import Path

from kit.bundle.config import NAME_RE
from kit.bundle.errors import ConfigError

TEMPLATE = Path(__file__).parent / "templates" / "agent"
_SKIP = {"__pycache__", ".pytest_cache", ".kit"}


def scaffold(name: str, parent: Path) -> Path:
    """Create ``parent/name`` from the template, with ``{{name}}`` filled in."""
    if not NAME_RE.match(name):
        raise ConfigError(
            f"Agent name {name!r}: use 1-64 characters of a-z, 0-9 and '-' "
            "(not starting or ending with '-'), e.g. `kit new support-bot`."
        )
    dest = parent / name
    if dest.exists():
        raise ConfigError(f"{dest} already exists; pick another name or remove it.")
    files = [p for p in sorted(TEMPLATE.rglob("*")) if p.is_file() and not _SKIP & set(p.parts)]
    for src in files:
        out = dest / src.relative_to(TEMPLATE)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        try:
            out.write_text(data.decode("utf-8").replace("{{name}}", name), encoding="utf-8")
        except UnicodeDecodeError:
            out.write_bytes(data)
        out.chmod(src.stat().st_mode & 0o777)
    return dest
