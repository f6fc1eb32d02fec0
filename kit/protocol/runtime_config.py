"""What a runtime needs to serve one session: one JSON object in a file.

Every sandbox provider writes this file where the runtime can read it and names it in the
environment (``KIT_RUNTIME_CONFIG``); the runtime reads it once and deletes it
(:func:`kit.runtime.config.load`). A provider maps its sandbox spec to this object with
:func:`kit.host.sandbox.runtime_config`, the one mapping every provider shares.

Nothing here is the real API key: ``model_token`` is a per-session token the host's model
proxy swaps for the real key, ``egress_token`` admits the sandbox to the host's egress
proxy, ``runtime_token`` authenticates the host to the runtime, and ``store_token`` (if
any) admits it to its session's transcript store. A file the runtime
deletes keeps them out of ``/proc/<pid>/environ`` and the command line; the runtime is not
dumpable, so the agent's tools, which run as its user, cannot read its memory either (the
model and egress tokens they do get: docs/security.md §9).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from kit.protocol.errors import SessionProtocolError


class RuntimeConfigError(SessionProtocolError):
    """The runtime was started with a configuration it cannot use."""


CONFIG_ENV = "KIT_RUNTIME_CONFIG"
"""The environment variable naming the config file."""
GATE_ENV = "KIT_RUNTIME_GATE"
"""Set to ``stdin`` by a provider that must confine the runtime's process after it started
(the local provider joins it to its cgroups): the runtime then waits for one line on stdin
before it reads its config and runs anything of the agent's."""


STORE_RETRY_S = 45.0
"""Default ``store_retry_s``: under the SDK's 60 s limit on one transcript write."""
STORE_DEADLINE_S = 120.0
"""Default ``store_deadline_s``."""
MAX_STORE_RETRY_S = 50.0


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
    store_retry_s: float = STORE_RETRY_S
    """How long one transcript write waits out a store outage before its entries are held
    in memory for back-fill (at most 50 s: the SDK gives a write 60 s)."""
    store_deadline_s: float = STORE_DEADLINE_S
    """How long in all a turn's ``result`` may wait for its transcript to reach the store;
    past it the turn ends with ``store`` ``gave_up`` and ``error`` ``turn_failed``."""
    egress_url: str | None = None
    """The host's egress proxy (:mod:`kit.host.egress`) as the sandbox reaches it:
    ``unix:/path`` (the runtime forwards a loopback port to it) or ``http://host:port``;
    None: the sandbox gets no proxy settings (no way out but the model)."""
    egress_token: str | None = None
    """This sandbox's egress proxy token; required with ``egress_url``."""
    bundle_digest: str | None = None
    """The bundle's sha256: the runtime refuses to start a bundle that is not this one."""
    store_token: str | None = None
    """The transcript store's own token, where it is not ``model_token``: a ``do+https://``
    store's, minted by the Cloudflare shim's SessionDO for this sandbox. None: the store
    takes ``model_token`` (kit's hosts' ``kit+http://`` store)."""

    def __post_init__(self) -> None:
        if bool(self.egress_url) != bool(self.egress_token):
            raise RuntimeConfigError(
                "egress_url and egress_token go together: set both (the sandbox may "
                "use the host's egress proxy) or neither."
            )
        if self.egress_url and not self.egress_url.startswith(("unix:/", "http://")):
            raise RuntimeConfigError(
                f"egress_url must be unix:/path or http://host:port, not {self.egress_url!r}."
            )
        retry, deadline = self.store_retry_s, self.store_deadline_s
        if not all(isinstance(v, int | float) and v > 0 for v in (retry, deadline)):
            raise RuntimeConfigError(
                f"store_retry_s and store_deadline_s must be positive numbers of seconds, "
                f"got {retry!r} and {deadline!r}."
            )
        if retry > MAX_STORE_RETRY_S:
            raise RuntimeConfigError(
                f"store_retry_s is {retry} s; keep it at most {MAX_STORE_RETRY_S:.0f} s "
                "(the Agent SDK abandons a transcript write after 60 s)."
            )
        if deadline < retry:
            raise RuntimeConfigError(
                f"store_deadline_s ({deadline} s) must be at least store_retry_s ({retry} s)."
            )

    @property
    def store_auth(self) -> str:
        """The token the runtime sends its transcript store."""
        return self.store_token or self.model_token

    @classmethod
    def from_json(cls, raw: str) -> RuntimeConfig:
        """Parse the start-up JSON; :class:`RuntimeConfigError` names what is missing."""
        try:
            obj: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise RuntimeConfigError(f"The runtime config is not JSON: {exc}.") from None
        if not isinstance(obj, dict):
            raise RuntimeConfigError("The runtime config must be one JSON object.")
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
        """Encode for the runtime's config file."""
        return json.dumps({f.name: _plain(getattr(self, f.name)) for f in fields(self)})


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value
