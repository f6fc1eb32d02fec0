"""What a runtime needs to serve one session, handed to it on stdin as one JSON object.

Nothing here is the real API key: ``model_token`` is a per-session token the host's model
proxy swaps for the real key, and ``runtime_token`` authenticates the host to the runtime.
Passing them on stdin keeps them out of ``/proc/<pid>/environ`` and the command line.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from kit.errors import KitError


class RuntimeConfigError(KitError):
    """The runtime was started with a configuration it cannot use."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Start-up settings of one runtime process."""

    session_id: str
    bundle_dir: Path
    workspace: Path
    home: Path
    tmp_dir: Path
    store_url: str
    listen: str
    """``unix:/path/to.sock`` or ``tcp:HOST:PORT``."""
    model_base_url: str
    model_unix_socket: str | None
    model_token: str
    runtime_token: str
    cli_path: str | None = None

    @classmethod
    def from_json(cls, raw: str) -> RuntimeConfig:
        """Parse the start-up JSON; :class:`RuntimeConfigError` names what is missing."""
        try:
            obj: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise RuntimeConfigError(f"Runtime config on stdin is not JSON: {exc}.") from None
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - obj.keys())
        if missing:
            raise RuntimeConfigError(f"Runtime config is missing {', '.join(missing)}.")
        kwargs = {k: v for k, v in obj.items() if k in names}
        for key in ("bundle_dir", "workspace", "home", "tmp_dir"):
            kwargs[key] = Path(kwargs[key])
        return cls(**kwargs)

    def to_json(self) -> str:
        """Encode for a runtime's stdin."""
        return json.dumps({f.name: _plain(getattr(self, f.name)) for f in fields(self)})


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value
