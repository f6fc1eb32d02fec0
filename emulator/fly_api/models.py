"""The emulator's state: apps, machines, leases and events, and how each is shown as JSON.

Shapes follow the vendored spec (``Machine``, ``App``, ``MachineEvent``, ``StrippedLease``)
and the live API where it differs (the wrapped lease; reference/fly.md §1).
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(now: float | None = None) -> str:
    """A 26-character ULID (48 bits of milliseconds, 80 random): Fly's version and event ids."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def machine_id() -> str:
    """A new machine id: 14 hex digits, like Fly's."""
    return secrets.token_hex(7)


def rfc3339(unix: float) -> str:
    """Unix seconds as Fly writes timestamps (``2024-05-01T10:00:00Z``)."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class State(enum.StrEnum):
    """A machine's states (reference/fly.md §6)."""

    CREATED = "created"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    UPDATING = "updating"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    FAILED = "failed"


PERSISTENT = frozenset(
    {State.CREATED, State.STARTED, State.STOPPED, State.SUSPENDED, State.FAILED, State.DESTROYED}
)
"""The states ``/wait?state=settled`` accepts."""
LISTED_STATES = frozenset({"created", "started", "stopped", "suspended"})
"""What the ``state=`` filter of List Machines accepts."""


@dataclass
class Lease:
    """A machine lease: whoever holds ``nonce`` may mutate the machine until ``expires_at``."""

    nonce: str
    owner: str
    description: str
    expires_at: int
    version: str

    def live(self, now: float) -> bool:
        """Whether the lease still binds at unix time ``now``."""
        return now < self.expires_at

    def wrapped(self) -> dict[str, Any]:
        """The live API's lease answer (fly-go ``MachineLease``)."""
        return {
            "status": "success",
            "data": {
                "nonce": self.nonce,
                "expires_at": self.expires_at,
                "owner": self.owner,
                "description": self.description,
                "version": self.version,
            },
        }

    def stripped(self) -> dict[str, Any]:
        """``StrippedLease``: what listings show (no nonce)."""
        return {"owner": self.owner, "expires_at": self.expires_at, "description": self.description}


@dataclass
class Event:
    """One ``MachineEvent``."""

    id: str
    type: str
    status: str
    source: str
    timestamp: int
    request: dict[str, Any] | None = None

    def json(self) -> dict[str, Any]:
        """The spec's ``MachineEvent``."""
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "source": self.source,
            "timestamp": self.timestamp,
        }
        if self.request is not None:
            body["request"] = self.request
        return body


@dataclass
class Machine:
    """One machine and everything the API keeps about it."""

    id: str
    app: str
    name: str
    region: str
    config: dict[str, Any]
    version: str
    created_at: float
    updated_at: float
    private_ip: str
    state: State = State.CREATED
    versions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    lease: Lease | None = None
    op: int = 0
    """Bumped by every lifecycle request; a background step whose op is stale gives way."""
    restarts: int = 0
    run: int = 0
    alive: bool = False
    waiters: int = 0
    """How many ``/wait`` calls are waiting on this machine now."""
    """Whether the current run is up (launched, not yet exited or killed)."""
    """Counts launches; an exit of an older run changes no state."""
    changed: anyio.Event = field(default_factory=anyio.Event)
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def metadata(self) -> dict[str, str]:
        """``config.metadata`` (made if absent)."""
        meta: dict[str, str] = self.config.setdefault("metadata", {})
        return meta

    def set_state(self, state: State, now: float) -> None:
        """Move to ``state`` and wake every ``/wait``."""
        self.state = state
        self.updated_at = now
        self.notify()

    def notify(self) -> None:
        """Wake every ``/wait`` on this machine."""
        self.changed.set()
        self.changed = anyio.Event()

    def add_event(
        self, type: str, status: str, now: float, *, source: str = "flyd", request: Any = None
    ) -> Event:
        """Record an event (kept newest last) and wake waiters."""
        event = Event(ulid(now), type, status, source, int(now * 1000), request)
        self.events.append(event)
        del self.events[:-200]
        self.notify()
        return event

    def json(self, *, now: float, include_lease: bool = False, summary: bool = False) -> Any:
        """The spec's ``Machine``."""
        image = str(self.config.get("image", ""))
        repository, _, tag = image.partition(":")
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": str(self.state),
            "region": self.region,
            "instance_id": self.version,
            "version": self.version,
            "private_ip": self.private_ip,
            "image_ref": {
                "registry": "",
                "repository": repository,
                "tag": tag or "latest",
                "digest": "",
                "labels": {},
            },
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "host_status": "ok",
        }
        if not summary:
            body["config"] = self.config
            body["events"] = [e.json() for e in reversed(self.events[-10:])]
            body["checks"] = []
        if include_lease and self.lease is not None and self.lease.live(now):
            body["lease"] = self.lease.stripped()
        return body


@dataclass
class App:
    """One app: its machines, secrets and IP assignments."""

    id: str
    name: str
    org_slug: str
    network: str
    created_at: float
    machines: dict[str, Machine] = field(default_factory=dict)
    secrets: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    """name → (value, created_at, updated_at)."""
    secrets_version: int = 0
    ips: list[dict[str, Any]] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        """The spec's ``App``."""
        live = [m for m in self.machines.values() if m.state != State.DESTROYED]
        return {
            "id": self.id,
            "name": self.name,
            "status": "deployed" if live else "pending",
            "network": self.network,
            "machine_count": len(live),
            "volume_count": 0,
            "organization": {"name": self.org_slug, "slug": self.org_slug},
        }
