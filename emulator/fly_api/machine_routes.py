"""Routes of machines: lifecycle, wait, events, exec, leases and metadata."""

from __future__ import annotations

import signal as signals
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from emulator.fly_api.backend import FlyBackend, find_machine, parse_signal, stop_settings
from emulator.fly_api.errors import ApiError, bad_request
from emulator.fly_api.models import Machine, State
from emulator.fly_api.resources import DEFAULT_EVENTS, DEFAULT_LEASE_TTL_S, MAX_EVENTS
from emulator.fly_api.wire import LEASE_OWNER, Endpoint, body, nonce, run, wrong_state

MAX_WAIT_S = 60
DEFAULT_EXEC_TIMEOUT_S = 30


def machine_endpoints(backend: FlyBackend) -> list[Endpoint]:
    """The machine operations over ``backend``."""
    apps = backend.apps

    def machine(request: Request, *, live: bool = True) -> Machine:
        m = find_machine(backend, request.path_params["app"], request.path_params["machine"])
        if live and m.state == State.DESTROYED:
            raise ApiError(404, "machine not found")
        return m

    async def list_machines(request: Request) -> Any:
        app = apps.get(request.path_params["app"])
        query = dict(request.query_params)
        page, cursor = apps.list_machines(app, query)
        now = backend.now()
        shown = [
            m.json(
                now=now,
                include_lease=query.get("include_leases") == "true",
                summary=query.get("summary") == "true",
            )
            for m in page
        ]
        headers = {"fly-next-cursor": cursor} if cursor else None
        return JSONResponse(shown, headers=headers)

    async def create_machine(request: Request) -> Any:
        app = apps.get(request.path_params["app"])
        sent = await body(request)
        ttl = _seconds(sent["lease_ttl"]) if sent.get("lease_ttl") else None
        m = apps.new_machine(app, sent)
        shown = m.json(now=backend.now())
        if ttl is not None:
            shown["nonce"] = apps.take_lease(m, ttl, "", None, LEASE_OWNER).nonce
        if not sent.get("skip_launch"):
            backend.launch(m)  # the answer still says "created", as Fly's does
        return shown

    async def show_machine(request: Request) -> Any:
        m = machine(request, live=False)
        include = request.query_params.get("include_leases") == "true"
        return m.json(now=backend.now(), include_lease=include)

    async def update_machine(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        sent = await body(request)
        ttl = _seconds(sent["lease_ttl"]) if sent.get("lease_ttl") else None
        signal, timeout = stop_settings(m, {})
        apps.new_version(m, sent)
        backend.replace(m, launch=not sent.get("skip_launch"), signal=signal, timeout_s=timeout)
        shown = m.json(now=backend.now())
        if ttl is not None and m.lease is None:
            shown["nonce"] = apps.take_lease(m, ttl, "", None, LEASE_OWNER).nonce
        return shown

    async def delete_machine(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        force = request.query_params.get("force") == "true"
        if not force and m.state not in (State.STOPPED, State.CREATED, State.FAILED):
            raise ApiError(
                412,
                f"failed_precondition: unable to destroy machine, not currently stopped "
                f"(state '{m.state}'): stop it first, or pass force=true",
            )
        backend.destroy(m)
        return {"ok": True}

    async def start(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        previous = str(m.state)
        if m.state in (State.CREATED, State.STOPPED, State.FAILED):
            m.restarts = 0
            backend.launch(m)
        elif m.state == State.SUSPENDED:
            backend.resume(m)
        elif m.state not in (State.STARTED, State.STARTING):
            raise wrong_state(m, "start")
        return {"previous_state": previous}

    async def stop(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        signal, timeout = stop_settings(m, await body(request))
        if m.state in (State.STARTED, State.STARTING, State.SUSPENDED):
            backend.stop(m, signal, timeout)
        elif m.state not in (State.STOPPED, State.STOPPING, State.CREATED, State.FAILED):
            raise wrong_state(m, "stop")
        return {"ok": True}

    async def suspend(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        if m.state == State.STARTED:
            backend.suspend(m)
        elif m.state not in (State.SUSPENDED, State.SUSPENDING):
            raise wrong_state(m, "suspend")
        return {"ok": True}

    async def signal_(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        sent = await body(request)
        if not sent.get("signal"):
            raise bad_request("signal: send a signal name such as SIGTERM")
        number = parse_signal(sent.get("signal"), int(signals.SIGTERM))
        if m.state != State.STARTED:
            raise wrong_state(m, "signal")
        await run(backend.runner.signal(m.id, number))
        return {"ok": True}

    async def wait(request: Request) -> Any:
        m = machine(request, live=False)
        query = request.query_params
        states = {s for v in query.getlist("state") for s in v.split(",") if s} or {"started"}
        allowed = {"started", "stopped", "suspended", "destroyed", "failed", "settled"}
        if not states <= allowed:
            raise bad_request(f"invalid state {sorted(states - allowed)}: use {sorted(allowed)}")
        try:
            timeout = int(query.get("timeout") or MAX_WAIT_S)
        except ValueError:
            raise bad_request("timeout: whole seconds, 1 to 60") from None
        if timeout < 0:
            raise bad_request("timeout: whole seconds, 1 to 60")
        version = query.get("version") or query.get("instance_id")
        done = await backend.wait(m, states, min(timeout, MAX_WAIT_S), version)
        if done is None:
            return JSONResponse(
                {
                    "error": f"deadline_exceeded: machine {m.id} did not reach "
                    f"{','.join(sorted(states))} within {timeout}s (it is '{m.state}'); "
                    "re-issue the wait",
                    "status": "unknown",
                },
                status_code=408,
            )
        return done

    async def events(request: Request) -> Any:
        m = machine(request, live=False)
        raw = request.query_params.get("limit") or DEFAULT_EVENTS
        try:
            limit = min(int(raw), MAX_EVENTS)
        except ValueError:
            raise bad_request("limit: a whole number up to 50") from None
        return [e.json() for e in reversed(m.events[-limit:])] if limit > 0 else []

    async def versions(request: Request) -> Any:
        m = machine(request, live=False)
        return [{"version": v, "user_config": c} for v, c in reversed(m.versions)]

    async def exec_(request: Request) -> Any:
        m = machine(request)
        sent = await body(request)
        command = sent.get("command")
        if command is None and isinstance(sent.get("cmd"), str):
            command = sent["cmd"].split()
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) for c in command)
        ):
            raise bad_request("command: send the command as an array of strings")
        timeout = sent.get("timeout") or DEFAULT_EXEC_TIMEOUT_S
        if not isinstance(timeout, int) or timeout <= 0:
            raise bad_request("timeout: whole seconds")
        if m.state != State.STARTED:
            raise wrong_state(m, "exec in")
        with anyio.move_on_after(timeout) as scope:
            done = await run(backend.runner.exec(m.id, command, timeout, sent.get("stdin")))
        if scope.cancelled_caught:
            raise ApiError(408, f"deadline_exceeded: the command ran past {timeout}s")
        return {
            "exit_code": done.exit_code,
            "exit_signal": done.exit_signal,
            "stdout": done.stdout,
            "stderr": done.stderr,
        }

    # -- leases ----------------------------------------------------------------------------

    async def create_lease(request: Request) -> Any:
        m = machine(request)
        sent = await body(request)
        raw = request.query_params.get("ttl") or sent.get("ttl") or DEFAULT_LEASE_TTL_S
        try:
            ttl = int(raw)
        except (TypeError, ValueError):
            raise bad_request("ttl: whole seconds") from None
        lease = apps.take_lease(
            m, ttl, str(sent.get("description") or ""), nonce(request), LEASE_OWNER
        )
        return JSONResponse(lease.wrapped(), status_code=201)

    async def show_lease(request: Request) -> Any:
        return apps.lease(machine(request)).wrapped()

    async def release_lease(request: Request) -> Any:
        apps.release(machine(request), nonce(request))
        return {"ok": True}

    # -- metadata --------------------------------------------------------------------------

    async def show_metadata(request: Request) -> Any:
        return dict(machine(request).metadata)

    async def patch_metadata(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        apps.patch_metadata(m, await body(request))
        return Response(status_code=204)

    async def get_key(request: Request) -> Any:
        m, key = machine(request), request.path_params["key"]
        if key not in m.metadata:
            raise ApiError(404, f"metadata key {key!r} not found")
        return {"value": m.metadata[key]}

    async def set_key(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        value = (await body(request)).get("value")
        if not isinstance(value, str):
            raise bad_request("value: send the value as a string")
        apps.patch_metadata(m, {"metadata": {request.path_params["key"]: value}})
        return Response(status_code=204)

    async def delete_key(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        apps.patch_metadata(m, {"metadata": {request.path_params["key"]: None}})
        return Response(status_code=204)

    mp = "/apps/{app}/machines/{machine}"
    return [
        ("/apps/{app}/machines", "GET", "Machines_list", list_machines),
        ("/apps/{app}/machines", "POST", "Machines_create", create_machine),
        (mp, "GET", "Machines_show", show_machine),
        (mp, "POST", "Machines_update", update_machine),
        (mp, "DELETE", "Machines_delete", delete_machine),
        (mp + "/start", "POST", "Machines_start", start),
        (mp + "/stop", "POST", "Machines_stop", stop),
        (mp + "/suspend", "POST", "Machines_suspend", suspend),
        (mp + "/signal", "POST", "Machines_signal", signal_),
        (mp + "/wait", "GET", "Machines_wait", wait),
        (mp + "/events", "GET", "Machines_list_events", events),
        (mp + "/versions", "GET", "Machines_list_versions", versions),
        (mp + "/exec", "POST", "Machines_exec", exec_),
        (mp + "/lease", "GET", "Machines_show_lease", show_lease),
        (mp + "/lease", "POST", "Machines_create_lease", create_lease),
        (mp + "/lease", "DELETE", "Machines_release_lease", release_lease),
        (mp + "/metadata", "GET", "Machines_show_metadata", show_metadata),
        (mp + "/metadata", "PATCH", "Machines_update_metadata", patch_metadata),
        (mp + "/metadata/{key}", "GET", "Machines_get_metadata_key", get_key),
        (mp + "/metadata/{key}", "POST", "Machines_upsert_metadata", set_key),
        (mp + "/metadata/{key}", "DELETE", "Machines_delete_metadata", delete_key),
    ]


def _seconds(value: Any) -> int:
    """A whole number of seconds from JSON; 400 otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request("lease_ttl: whole seconds")
    return value
