"""Apps, machine records, leases, metadata, secrets and IP assignments: the state the API
keeps besides the lifecycle (which ``emulator.fly_api.backend`` runs).

Names of apps are global, as on Fly (``name_taken``). Secrets are kept with their values
but answered only by name and digest.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import secrets as random
from typing import TYPE_CHECKING, Any

from emulator.fly_api.errors import NAME_TAKEN, ApiError, bad_request, not_found
from emulator.fly_api.models import (
    LISTED_STATES,
    App,
    Lease,
    Machine,
    State,
    machine_id,
    rfc3339,
    ulid,
)

if TYPE_CHECKING:
    from emulator.fly_api.backend import FlyBackend

PRIVATE_NETS = 250
"""Machines' private addresses are 127.X.0.1, 127.X.0.2, … (all loopback), X drawn at
random per emulator from 2…251, so two emulators on one host (a leftover rehearsal's
machines on the host network, tests side by side) do not take each other's addresses."""


def private_base() -> ipaddress.IPv4Address:
    """A fresh 127.X.0.0 for one emulator's machines."""
    return ipaddress.IPv4Address(f"127.{2 + random.randbelow(PRIVATE_NETS)}.0.0")


DEFAULT_LEASE_TTL_S = 30
MAX_EVENTS = 50
DEFAULT_EVENTS = 20
MAX_LIST_LIMIT = 1000


class AppRegistry:
    """Every app of the emulator, by name."""

    def __init__(self, backend: FlyBackend) -> None:
        self._backend = backend
        self._apps: dict[str, App] = {}
        self._cursors: dict[str, list[str]] = {}
        self._idempotency: dict[str, str] = {}
        self._next_ip = 1
        self._private_base = private_base()

    def all(self) -> list[App]:
        """Every app."""
        return list(self._apps.values())

    def get(self, name: str) -> App:
        """The app called ``name``; 404 otherwise."""
        app = self._apps.get(name)
        if app is None:
            raise not_found(f"app {name!r} not found")
        return app

    # -- apps ------------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> App:
        """Apps_create: 422 ``name_taken`` when the (global) name exists; a retry with the
        same ``idempotency_key`` (and the same name, or none) answers the first app."""
        name, key = body.get("name"), body.get("idempotency_key")
        if isinstance(key, str) and key in self._idempotency:
            first = self._idempotency[key]
            if name not in (None, "", first):
                raise ApiError(
                    422, f"idempotency_key was used to create app {first!r}, not {name!r}"
                )
            if first in self._apps:
                return self._apps[first]
        if not isinstance(name, str) or not name:
            raise ApiError(422, "name: can't be blank; send {name, org_slug}")
        if not all(c.isalnum() or c == "-" for c in name) or name != name.lower():
            raise ApiError(422, f"name {name!r}: use lowercase letters, digits and dashes")
        if name in self._apps:
            raise ApiError(422, "Name has already been taken", status=NAME_TAKEN)
        org = body.get("org_slug") or "personal"
        app = App(
            id=random.token_hex(8),
            name=name,
            org_slug=str(org),
            network=str(body.get("network") or ""),
            created_at=self._backend.now(),
        )
        self._apps[name] = app
        if isinstance(key, str) and key:
            self._idempotency[key] = name
        return app

    def delete(self, name: str) -> list[Machine]:
        """Apps_delete: forget the app, destroying its machines; the machines being
        destroyed."""
        app = self.get(name)
        doomed = [m for m in app.machines.values() if m.state != State.DESTROYED]
        for m in doomed:
            self._backend.destroy(m)
        del self._apps[name]
        return doomed

    def find(self, org_slug: str | None) -> list[App]:
        """Apps_list, filtered by org."""
        return [a for a in self._apps.values() if org_slug in (None, "", a.org_slug)]

    # -- machines --------------------------------------------------------------------------

    def new_machine(self, app: App, body: dict[str, Any]) -> Machine:
        """A machine record from a CreateMachineRequest (not launched here)."""
        config = _config(body)
        now = self._backend.now()
        name = body.get("name") or f"machine-{random.token_hex(4)}"
        if any(m.name == name and m.state != State.DESTROYED for m in app.machines.values()):
            raise ApiError(409, f"a machine named {name!r} already exists in app {app.name}")
        version = ulid(now)
        # Fly's 6PN address stands for "reachable by the app's other machines"; here each
        # machine gets its own loopback address, which a machine on the host network can
        # bind and every other process on this host can reach.
        ip = self._private_base + self._next_ip
        self._next_ip += 1
        m = Machine(
            id=machine_id(),
            app=app.name,
            name=str(name),
            region=str(body.get("region") or "iad"),
            config=config,
            version=version,
            created_at=now,
            updated_at=now,
            private_ip=str(ip),
        )
        m.versions.append((version, copy.deepcopy(config)))
        m.add_event("launch", "created", now, source="user")
        app.machines[m.id] = m
        self._backend.machines[m.id] = m
        return m

    def new_version(self, m: Machine, body: dict[str, Any]) -> None:
        """Apply an UpdateMachineRequest's full config: a new version (409 when
        ``current_version`` is stale; ``name``/``region`` may not change)."""
        current = body.get("current_version")
        if current and current != m.version:
            raise ApiError(
                409,
                f"machine {m.id} is at version {m.version}, not {current}: get it again and "
                "resend the update with its current version",
            )
        for key in ("region", "name"):
            if body.get(key) and body[key] != getattr(m, key):
                raise bad_request(f"{key} of machine {m.id} cannot change on update")
        m.config = _config(body)
        m.version = ulid(self._backend.now())
        m.versions.append((m.version, copy.deepcopy(m.config)))
        del m.versions[:-20]

    def list_machines(self, app: App, query: dict[str, str]) -> tuple[list[Machine], str | None]:
        """Machines_list with its filters; the page and the next cursor (None on the last)."""
        states = {s for s in (query.get("state") or "").split(",") if s}
        unknown = states - LISTED_STATES
        if unknown:
            raise bad_request(
                f"invalid state filter {sorted(unknown)}: use created, started, stopped, suspended"
            )
        wanted = {k[len("metadata.") :]: v for k, v in query.items() if k.startswith("metadata.")}
        include_deleted = query.get("include_deleted") == "true"
        region = query.get("region")
        found = [
            m
            for m in app.machines.values()
            if (include_deleted or m.state != State.DESTROYED)
            and (not states or str(m.state) in states)
            and (not region or m.region == region)
            and all(m.metadata.get(k) == v for k, v in wanted.items())
        ]
        if not query.get("limit"):
            if query.get("cursor"):
                raise bad_request("cursor requires limit")
            return found, None
        limit = _int(query["limit"], "limit")
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise bad_request(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        ids = [m.id for m in found]
        cursor = query.get("cursor")
        if cursor:
            remaining = self._cursors.pop(cursor, None)
            if remaining is None:
                raise bad_request("invalid or expired cursor: list again from the first page")
            ids = [i for i in remaining if i in app.machines]
        page, rest = ids[:limit], ids[limit:]
        next_cursor = None
        if rest:
            next_cursor = random.token_urlsafe(12)
            self._cursors[next_cursor] = rest
        return [app.machines[i] for i in page], next_cursor

    # -- leases ----------------------------------------------------------------------------

    def take_lease(
        self, m: Machine, ttl: int, description: str, nonce: str | None, owner: str
    ) -> Lease:
        """Machines_create_lease: a new lease, or a refresh by its holder; 409 when held."""
        now = self._backend.now()
        if ttl <= 0:
            raise bad_request("ttl must be a positive number of seconds")
        held = m.lease if m.lease is not None and m.lease.live(now) else None
        if held is not None:
            if nonce != held.nonce:
                raise held_error(m)
            held.expires_at = int(now) + ttl
            held.description = description or held.description
            return held
        m.lease = Lease(random.token_hex(16), owner, description, int(now) + ttl, m.version)
        return m.lease

    def lease(self, m: Machine) -> Lease:
        """Machines_show_lease; 404 when no live lease."""
        if m.lease is None or not m.lease.live(self._backend.now()):
            raise not_found("lease not found")
        return m.lease

    def release(self, m: Machine, nonce: str | None) -> None:
        """Machines_release_lease: only with the nonce."""
        lease = self.lease(m)
        if nonce != lease.nonce:
            raise ApiError(
                409 if nonce else 400,
                "invalid lease nonce: send the nonce you were given in the "
                "fly-machine-lease-nonce header",
            )
        m.lease = None

    # -- metadata --------------------------------------------------------------------------

    def patch_metadata(self, m: Machine, body: dict[str, Any]) -> None:
        """Machines_update_metadata: null or "" removes; 412 on a stale machine_version."""
        changes = body.get("metadata")
        if not isinstance(changes, dict):
            raise bad_request("metadata: send an object of key: value (null removes the key)")
        version = body.get("machine_version")
        if version and version != m.version:
            raise ApiError(
                412,
                f"machine version {version} is not the current one ({m.version}): get the "
                "machine and retry with its version",
            )
        for key, value in changes.items():
            if value is not None and not isinstance(value, str):
                raise bad_request(f"metadata.{key}: values are strings (or null to remove)")
        for key, value in changes.items():
            if value in (None, ""):
                m.metadata.pop(key, None)
            else:
                m.metadata[key] = value
        m.notify()

    # -- secrets and IPs -------------------------------------------------------------------

    def set_secrets(self, app: App, values: dict[str, Any]) -> None:
        """Secrets_update: a value of null removes the secret."""
        now = self._backend.now()
        for name, value in values.items():
            if value is None:
                app.secrets.pop(name, None)
            elif not isinstance(value, str):
                raise bad_request(f"values.{name}: secret values are strings")
            else:
                created = app.secrets.get(name, (value, now, now))[1]
                app.secrets[name] = (value, created, now)
        app.secrets_version += 1

    def add_ip(self, app: App, body: dict[str, Any]) -> dict[str, Any]:
        """App_IPAssignments_create."""
        kind = body.get("type") or "v6"
        kinds = ("v4", "v6", "shared_v4", "private_v6", "egress_v4", "egress_v6")
        if kind not in kinds:
            raise bad_request(f"type {kind!r}: use one of {', '.join(kinds)}")
        n = len(app.ips) + 1
        ip = {
            "v4": f"198.51.100.{n}",
            "shared_v4": "198.51.100.254",
            "egress_v4": f"203.0.113.{n}",
        }.get(str(kind), str(ipaddress.IPv6Address("2001:db8::") + n))
        if kind == "private_v6":
            ip = str(ipaddress.IPv6Address("fdaa:0:1::") + n)
        entry: dict[str, Any] = {
            "ip": ip,
            "region": str(body.get("region") or "global"),
            "service_name": str(body.get("service_name") or ""),
            "shared": kind == "shared_v4",
            "egress": str(kind).startswith("egress"),
            "created_at": _now_text(self._backend.now()),
        }
        app.ips.append(entry)
        return entry


def secret_json(name: str, value: str, created: float, updated: float) -> dict[str, Any]:
    """An ``AppSecret`` without its value."""
    return {
        "name": name,
        "digest": hashlib.sha256(value.encode()).hexdigest()[:16],
        "created_at": _now_text(created),
        "updated_at": _now_text(updated),
    }


def _now_text(unix: float) -> str:
    return rfc3339(unix)


def held_error(m: Machine) -> ApiError:
    """Fly's refusal while someone else holds the machine's lease (the text flaps sends)."""
    assert m.lease is not None
    return ApiError(
        409,
        f"machine ID {m.id} lease currently held by {m.lease.owner}, "
        f"expires at {rfc3339(m.lease.expires_at)}",
    )


def _config(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("config")
    if not isinstance(config, dict):
        raise bad_request("config: send the machine's full config object")
    image = config.get("image")
    if not isinstance(image, str) or not image:
        raise bad_request("config.image: every machine needs an image")
    guest = config.get("guest") or {}
    if not isinstance(guest, dict):
        raise bad_request("config.guest: send {cpu_kind, cpus, memory_mb}")
    for key in ("cpus", "memory_mb"):
        if key in guest and (not isinstance(guest[key], int) or guest[key] <= 0):
            raise bad_request(f"config.guest.{key}: a positive integer")
    for entry in config.get("files") or []:
        if not isinstance(entry, dict) or not str(entry.get("guest_path", "")).startswith("/"):
            raise bad_request("config.files[].guest_path: an absolute path")
    return copy.deepcopy(config)


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
