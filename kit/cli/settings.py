"""Settings of ``kit dev`` and friends, read once at the edge into a frozen object.

=====================  ==========================  =====================================
setting                flag / environment          default
=====================  ==========================  =====================================
project                ``--project DIR``           the folder with kit.toml in or above
                                                   the current one, else the bundled
                                                   ``skills/support-bot`` example
host                   ``--host``                  ``127.0.0.1``
port                   ``--port``                  ``8787`` (``0`` picks a free port)
state dir              ``KIT_STATE_DIR``           ``<project>/.kit``
model                  ``ANTHROPIC_API_KEY``       unset → the offline model (emulator);
                                                   set → the real Messages API
upstream               ``KIT_MODEL_UPSTREAM``      ``https://api.anthropic.com``
sandbox user           ``KIT_SANDBOX_USER``        ``nobody`` when run as root
=====================  ==========================  =====================================

Flags win over the environment; nothing below ``kit.cli`` reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kit.bundle import CONFIG_FILE

ANTHROPIC_API = "https://api.anthropic.com"
DEFAULT_PORT = 8787
EXAMPLE_PROJECT = Path(__file__).resolve().parents[2] / "skills" / "support-bot"


@dataclass(frozen=True)
class DevSettings:
    """Everything ``kit dev`` needs, resolved."""

    project_dir: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    upstream_url: str = ANTHROPIC_API
    force_offline_model: bool = False
    """Use the offline model even with an API key (tests of the key-swapping proxy)."""
    sandbox_user: str | None = "nobody"

    @property
    def offline(self) -> bool:
        """Whether the emulator's offline model answers."""
        return self.force_offline_model or not self.api_key


def find_project(start: Path) -> Path:
    """The nearest folder at or above ``start`` with a kit.toml, else the bundled example."""
    for folder in (start, *start.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    return EXAMPLE_PROJECT


def dev_settings(
    *,
    project: Path | None,
    host: str | None,
    port: int | None,
    environ: Mapping[str, str] = os.environ,
    cwd: Path | None = None,
) -> DevSettings:
    """Resolve flags and environment into :class:`DevSettings`."""
    project_dir = (project or find_project(cwd or Path.cwd())).resolve()
    state = environ.get("KIT_STATE_DIR")
    return DevSettings(
        project_dir=project_dir,
        state_dir=Path(state).resolve() if state else project_dir / ".kit",
        host=host or "127.0.0.1",
        port=DEFAULT_PORT if port is None else port,
        api_key=environ.get("ANTHROPIC_API_KEY") or None,
        upstream_url=environ.get("KIT_MODEL_UPSTREAM") or ANTHROPIC_API,
        sandbox_user=environ.get("KIT_SANDBOX_USER", "nobody") or None,
    )
