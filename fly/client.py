"""The Fly Machines API client: apps, machines, leases, metadata, exec, events, secrets and IP
assignments, typed. One client per process (it holds the connection pool)::

    async with FlyClient(token, base_url=fly.base_url(os.environ.get("FLY_API_HOSTNAME"))) as api:
        machine = await api.create_machine(app, config, region="ams")
        await api.wait(app, machine.id, "started", version=machine.version)

Behaviour Fly's spec does not state, handled here: ``/wait`` answers 408 when its own timeout
passes (re-issued until the caller's deadline); a lease answer is flat or wrapped in ``data``;
the lease nonce is sent on every mutation of a leased machine; ``exec`` answers 200 whatever
the exit code (checked); ``stop`` always sends a JSON body."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

from fly.errors import ExecFailed, FlyError, LeaseHeld, NotFound, WaitTimedOut
from fly.http import Wire
from fly.models import (
    App,
    ExecResult,
    IPAssignment,
    IPType,
    Lease,
    Machine,
    MachineConfig,
    MachineEvent,
    SecretInfo,
    Signal,
    StopSignal,
    WaitResult,
    WaitState,
)

WAIT_CALL_MAX_S = 55
"""The longest one ``/wait`` call asks Fly to hold (its proxy cuts at 60 s)."""
WAIT_PAUSE_S = 1.0
"""After a 408 that came back sooner than asked, before the next wait."""
MAX_PAGES = 1000
"""A bound on the pages one listing follows."""
LEASE_RETRY_S = 1.0


def _seg(value: str) -> str:
    """``value`` as one path segment: quoted, and never empty, ``.`` or ``..`` (which an
    HTTP client collapses: ``DELETE …/secrets/..`` would delete the app)."""
    if value in ("", ".", ".."):
        raise ValueError(f"{value!r} is not a name the Fly API can take")
    return quote(value, safe="")


class FlyClient(Wire):
    """Typed calls of the Machines API (see the module docstring). Every failure is a
    :class:`fly.FlyError`."""

    async def __aenter__(self) -> FlyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- apps -----------------------------------------------------------------------------

    async def create_app(
        self,
        name: str,
        org_slug: str,
        *,
        network: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Create app ``name`` in ``org_slug``; its id. Retried safely: the same
        ``idempotency_key`` (default: one per call) gets the same app, so a caller that lost
        the answer can run again with its key. :class:`fly.NameTaken` when the name is
        someone else's."""
        body: dict[str, Any] = {
            "name": name,
            "org_slug": org_slug,
            "idempotency_key": idempotency_key or uuid.uuid4().hex,
        }
        if network:
            body["network"] = network
        answer = await self.call("POST", "/v1/apps", body=body, safe=True)
        data = self.json(answer)
        return str(data.get("id", "")) if isinstance(data, dict) else ""

    async def get_app(self, name: str) -> App:
        """App ``name``; :class:`fly.NotFound` when there is none."""
        return App.parse(self.json(await self.call("GET", f"/v1/apps/{_seg(name)}")))

    async def find_app(self, name: str) -> App | None:
        """App ``name``, or None when there is none."""
        try:
            return await self.get_app(name)
        except NotFound:
            return None

    async def list_apps(self, org_slug: str) -> list[App]:
        """Every app of ``org_slug`` (following cursors)."""
        apps: list[App] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            params = {"org_slug": org_slug, "cursor": cursor, "limit": 100 if cursor else None}
            data = self.json(await self.call("GET", "/v1/apps", params=params))
            data = data if isinstance(data, dict) else {}
            apps.extend(App.parse(item) for item in _items(data.get("apps")))
            cursor = data.get("next_cursor") or None
            if not cursor or cursor in seen:
                break
            seen.add(cursor)
        return apps

    async def delete_app(self, name: str) -> None:
        """Delete app ``name`` with its machines and volumes (none left: no error)."""
        with contextlib.suppress(NotFound):
            await self.call("DELETE", f"/v1/apps/{_seg(name)}")

    # -- machines -------------------------------------------------------------------------

    def _machine(self, app: str, machine: str, tail: str = "") -> str:
        return f"/v1/apps/{_seg(app)}/machines/{_seg(machine)}{tail}"

    async def create_machine(
        self,
        app: str,
        config: MachineConfig,
        *,
        name: str | None = None,
        region: str | None = None,
        lease_ttl: int | None = None,
        skip_launch: bool = False,
        min_secrets_version: int | None = None,
    ) -> Machine:
        """Create (and, unless ``skip_launch``, boot) a machine. With ``lease_ttl`` it comes
        leased to the caller (``Machine.nonce``). :class:`fly.InsufficientCapacity`: try
        another region."""
        body: dict[str, Any] = {"config": config}
        for key, value in (
            ("name", name),
            ("region", region),
            ("lease_ttl", lease_ttl),
            ("min_secrets_version", min_secrets_version),
        ):
            if value is not None:
                body[key] = value
        if skip_launch:
            body["skip_launch"] = True
        answer = await self.call("POST", f"/v1/apps/{_seg(app)}/machines", body=body)
        return Machine.parse(self.json(answer))

    async def get_machine(self, app: str, machine: str, *, include_leases: bool = False) -> Machine:
        """One machine; :class:`fly.NotFound` when it does not exist."""
        params = {"include_leases": "true"} if include_leases else None
        answer = await self.call("GET", self._machine(app, machine), params=params)
        return Machine.parse(self.json(answer))

    async def list_machines(
        self,
        app: str,
        *,
        states: Iterable[str] = (),
        metadata: Mapping[str, str] | None = None,
        region: str | None = None,
        include_deleted: bool = False,
        page_size: int | None = None,
    ) -> list[Machine]:
        """The app's machines, filtered by state and ``metadata`` (all keys must match),
        following ``fly-next-cursor`` over every page."""
        params: dict[str, Any] = {"region": region, "limit": page_size}
        if states := ",".join((states,) if isinstance(states, str) else states):
            params["state"] = states
        if include_deleted:
            params["include_deleted"] = "true"
        for key, value in (metadata or {}).items():
            params[f"metadata.{key}"] = value
        machines: list[Machine] = []
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            answer = await self.call("GET", f"/v1/apps/{_seg(app)}/machines", params=params)
            data = self.json(answer)
            machines.extend(Machine.parse(item) for item in _items(data))
            cursor = answer.headers.get("fly-next-cursor")
            if not cursor or cursor in seen:
                break
            seen.add(cursor)
            params["cursor"] = cursor
        return machines

    async def update_machine(
        self,
        app: str,
        machine: str,
        config: MachineConfig,
        *,
        current_version: str | None = None,
        skip_launch: bool | None = None,
        min_secrets_version: int | None = None,
        nonce: str | None = None,
    ) -> Machine:
        """Replace the machine's whole config (a running machine restarts on it); a stale
        ``current_version`` is :class:`fly.Conflict`."""
        body: dict[str, Any] = {"config": config}
        if current_version:
            body["current_version"] = current_version
        if skip_launch is not None:
            body["skip_launch"] = skip_launch
        if min_secrets_version is not None:
            body["min_secrets_version"] = min_secrets_version
        answer = await self.call("POST", self._machine(app, machine), body=body, nonce=nonce)
        return Machine.parse(self.json(answer))

    async def start_machine(self, app: str, machine: str, *, nonce: str | None = None) -> None:
        """Start a stopped machine, or resume a suspended one (from its snapshot if Fly still
        has it, else a cold boot)."""
        await self.call("POST", self._machine(app, machine, "/start"), nonce=nonce)

    async def stop_machine(
        self,
        app: str,
        machine: str,
        *,
        signal: StopSignal | None = None,
        timeout_s: int | None = None,
        nonce: str | None = None,
    ) -> None:
        """Stop a machine: ``signal`` (Fly's default SIGINT), then a hard kill after
        ``timeout_s``. Its root filesystem is reset at the next start."""
        body: dict[str, Any] = {}
        if signal:
            body["signal"] = signal
        if timeout_s is not None:
            body["timeout"] = f"{timeout_s}s"
        await self.call("POST", self._machine(app, machine, "/stop"), body=body, nonce=nonce)

    async def suspend_machine(self, app: str, machine: str, *, nonce: str | None = None) -> None:
        """Suspend a machine (memory snapshot; the next start tries to resume it)."""
        await self.call("POST", self._machine(app, machine, "/suspend"), nonce=nonce)

    async def signal_machine(
        self, app: str, machine: str, signal: Signal, *, nonce: str | None = None
    ) -> None:
        """Send ``signal`` (``SIGTERM``, ``SIGKILL``…) to the machine's main process."""
        path = self._machine(app, machine, "/signal")
        await self.call("POST", path, body={"signal": signal}, nonce=nonce)

    async def delete_machine(
        self, app: str, machine: str, *, force: bool = False, nonce: str | None = None
    ) -> None:
        """Destroy a machine (``force`` kills it if it runs); already gone: no error."""
        params = {"force": "true"} if force else None
        with contextlib.suppress(NotFound):
            await self.call("DELETE", self._machine(app, machine), params=params, nonce=nonce)

    async def wait(
        self,
        app: str,
        machine: str,
        state: WaitState | Iterable[WaitState],
        *,
        version: str | None = None,
        timeout_s: float = 300.0,
    ) -> WaitResult:
        """Until the machine reaches ``state`` (at ``version``, when given): one ``/wait`` of
        at most 55 s after another until ``timeout_s``, then :class:`fly.WaitTimedOut`.
        Retries of failed calls stop at the same deadline."""
        states = state if isinstance(state, str) else ",".join(state)
        deadline = self._clock() + timeout_s
        path = self._machine(app, machine, "/wait")
        for _ in range(int(timeout_s / WAIT_PAUSE_S) + 2):
            asked = max(1, min(WAIT_CALL_MAX_S, int(deadline - self._clock())))
            params = {"state": states, "timeout": asked, "version": version}
            began = self._clock()
            answer = await self.call(
                "GET",
                path,
                params=params,
                expect=(200, 408),
                timeout_s=asked + 15,
                deadline=deadline,
            )
            if answer.status_code == 200:
                return WaitResult.parse(self.json(answer))
            if self._clock() + WAIT_PAUSE_S >= deadline:
                break
            if self._clock() - began < asked / 2:  # answered early: do not hammer
                await self._sleep(WAIT_PAUSE_S)
        raise WaitTimedOut(
            f"machine {machine} did not reach {states} in {timeout_s:g} s",
            status=408,
            method="GET",
            path=path,
        )

    async def list_events(
        self, app: str, machine: str, *, limit: int | None = None
    ) -> list[MachineEvent]:
        """The machine's latest events (Fly keeps the last few; ``limit`` ≤ 50)."""
        params = {"limit": limit} if limit else None
        answer = await self.call("GET", self._machine(app, machine, "/events"), params=params)
        return [MachineEvent.parse(item) for item in _items(self.json(answer))]

    async def exec(
        self,
        app: str,
        machine: str,
        command: list[str],
        *,
        timeout_s: int | None = None,
        check: bool = True,
        nonce: str | None = None,
    ) -> ExecResult:
        """Run ``command`` in the machine; with ``check`` a non-zero exit is
        :class:`fly.ExecFailed` (Fly itself answers 200)."""
        body: dict[str, Any] = {"command": command}
        if timeout_s is not None:
            body["timeout"] = timeout_s
        path = self._machine(app, machine, "/exec")
        answer = await self.call(
            "POST", path, body=body, timeout_s=(timeout_s or 60) + 15, nonce=nonce
        )
        result = ExecResult.parse(self.json(answer))
        if check and not result.ok:
            raise ExecFailed(
                f"`{' '.join(command)}` in machine {machine} "
                + (
                    f"exited {result.exit_code}"
                    if result.exit_code
                    else f"died of signal {result.exit_signal}"
                )
                + ": "
                f"{result.stderr.strip()[-300:]}",
                exit_code=result.exit_code,
                stdout=result.stdout,
                stderr=result.stderr,
            )
        return result

    # -- leases ---------------------------------------------------------------------------

    async def acquire_lease(
        self,
        app: str,
        machine: str,
        *,
        ttl_s: int,
        description: str | None = None,
        nonce: str | None = None,
    ) -> Lease:
        """Lease the machine for ``ttl_s``; with the current ``nonce``, refresh it.
        :class:`fly.LeaseHeld` when someone else holds it."""
        body: dict[str, Any] = {"ttl": ttl_s}
        if description:
            body["description"] = description
        answer = await self.call(
            "POST",
            self._machine(app, machine, "/lease"),
            params={"ttl": ttl_s},  # fly-go sends the TTL as a query parameter
            body=body,
            nonce=nonce,
        )
        return Lease.parse(self.json(answer))

    async def get_lease(self, app: str, machine: str) -> Lease | None:
        """The machine's lease (without its nonce), or None."""
        try:
            answer = await self.call("GET", self._machine(app, machine, "/lease"))
        except NotFound:
            return None
        return Lease.parse(self.json(answer))

    async def release_lease(self, app: str, machine: str, nonce: str) -> None:
        """Give the lease back (the machine gone: no error)."""
        with contextlib.suppress(NotFound):
            await self.call("DELETE", self._machine(app, machine, "/lease"), nonce=nonce)

    @contextlib.asynccontextmanager
    async def leased(
        self,
        app: str,
        machine: str,
        *,
        ttl_s: int = 30,
        description: str | None = None,
        wait_s: float = 60.0,
    ) -> AsyncIterator[Lease]:
        """Hold the machine's lease for the block: acquired (retrying while another holds
        it, up to ``wait_s``), refreshed every ``ttl_s / 2`` while the block runs, released
        after it. A failed release never hides the block's own error (it is noted on it)."""
        lease: Lease | None = None
        for attempt in range(int(wait_s / LEASE_RETRY_S) + 1):
            try:
                lease = await self.acquire_lease(app, machine, ttl_s=ttl_s, description=description)
                break
            except LeaseHeld:
                if (attempt + 1) * LEASE_RETRY_S > wait_s:
                    raise
                await self._sleep(LEASE_RETRY_S)
        assert lease is not None
        refresher = asyncio.ensure_future(self._refresh(app, machine, lease, ttl_s))
        try:
            yield lease
        except BaseException as exc:
            refresher.cancel()
            release = asyncio.ensure_future(self.release_lease(app, machine, lease.nonce))
            try:
                await asyncio.shield(release)
            except FlyError as failed:
                exc.add_note(f"releasing the lease of machine {machine} failed too: {failed}")
            except asyncio.CancelledError:
                pass  # cancelled again: the release goes on by itself
            raise
        refresher.cancel()
        await self.release_lease(app, machine, lease.nonce)

    async def _refresh(self, app: str, machine: str, lease: Lease, ttl_s: int) -> None:
        """Renew ``lease`` every half TTL until cancelled (a failed renewal is tried again
        at the next half TTL)."""
        for _ in range(1_000_000):
            await self._sleep(max(1.0, ttl_s / 2))
            with contextlib.suppress(FlyError):
                await self.acquire_lease(app, machine, ttl_s=ttl_s, nonce=lease.nonce)

    # -- metadata -------------------------------------------------------------------------

    async def get_metadata(self, app: str, machine: str) -> dict[str, str]:
        """The machine's metadata."""
        data = self.json(await self.call("GET", self._machine(app, machine, "/metadata")))
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    async def update_metadata(
        self,
        app: str,
        machine: str,
        changes: Mapping[str, str | None],
        *,
        machine_version: str | None = None,
        nonce: str | None = None,
    ) -> None:
        """Set the keys of ``changes`` (None removes one; others untouched). With
        ``machine_version``, :class:`fly.PreconditionFailed` if the machine changed since."""
        body: dict[str, Any] = {"metadata": dict(changes)}
        if machine_version:
            body["machine_version"] = machine_version
        path = self._machine(app, machine, "/metadata")
        await self.call("PATCH", path, body=body, nonce=nonce)

    async def set_metadata(
        self, app: str, machine: str, key: str, value: str, *, nonce: str | None = None
    ) -> None:
        """Set one metadata key."""
        path = self._machine(app, machine, f"/metadata/{_seg(key)}")
        await self.call("POST", path, body={"value": value}, nonce=nonce)

    async def delete_metadata(
        self, app: str, machine: str, key: str, *, nonce: str | None = None
    ) -> None:
        """Remove one metadata key (absent: no error)."""
        path = self._machine(app, machine, f"/metadata/{_seg(key)}")
        with contextlib.suppress(NotFound):
            await self.call("DELETE", path, nonce=nonce)

    # -- secrets and addresses ------------------------------------------------------------

    async def list_secrets(self, app: str) -> list[SecretInfo]:
        """The app's secrets: names and digests, never values."""
        data = self.json(await self.call("GET", f"/v1/apps/{_seg(app)}/secrets"))
        items = data.get("secrets") if isinstance(data, dict) else None
        return [SecretInfo.parse(item) for item in items or []]

    async def set_secrets(self, app: str, values: Mapping[str, str | None]) -> int:
        """Set (None: unset) several secrets at once; the app's new secrets version (pass it
        as ``min_secrets_version`` to machines that must see them)."""
        path = f"/v1/apps/{_seg(app)}/secrets"
        data = self.json(await self.call("POST", path, body={"values": dict(values)}))
        return _version(data)

    async def delete_secret(self, app: str, name: str) -> int | None:
        """Remove one secret; the new secrets version (None: it was not there, or its
        answer was lost and the retry found it gone; list the secrets to know the version)."""
        path = f"/v1/apps/{_seg(app)}/secrets/{_seg(name)}"
        try:
            return _version(self.json(await self.call("DELETE", path)))
        except NotFound:
            return None

    async def list_ips(self, app: str) -> list[IPAssignment]:
        """The app's addresses."""
        data = self.json(await self.call("GET", f"/v1/apps/{_seg(app)}/ip_assignments"))
        items = data.get("ips") if isinstance(data, dict) else None
        return [IPAssignment.parse(item) for item in items or []]

    async def assign_ip(
        self,
        app: str,
        kind: IPType,
        *,
        region: str | None = None,
        network: str | None = None,
        service_name: str | None = None,
    ) -> IPAssignment:
        """Give the app an address (public traffic needs one; ``private_v6`` is Flycast)."""
        body: dict[str, Any] = {"type": kind}
        for key, value in (
            ("region", region),
            ("network", network),
            ("service_name", service_name),
        ):
            if value:
                body[key] = value
        path = f"/v1/apps/{_seg(app)}/ip_assignments"
        return IPAssignment.parse(self.json(await self.call("POST", path, body=body)))

    async def release_ip(self, app: str, ip: str) -> None:
        """Take an address from the app (already gone: no error)."""
        with contextlib.suppress(NotFound):
            await self.call("DELETE", f"/v1/apps/{_seg(app)}/ip_assignments/{_seg(ip)}")


def _items(data: Any) -> list[Any]:
    return data if isinstance(data, list) else []


def _version(data: Any) -> int:
    if isinstance(data, dict):
        for key in ("version", "Version"):
            if isinstance(data.get(key), int):
                return int(data[key])
    return 0
