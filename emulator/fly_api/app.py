"""The wire: Starlette routes of the Machines API subset over :class:`FlyBackend`.

Every route wants ``Authorization: Bearer <token>`` (or flyctl's ``FlyV1 <token>``) and
answers with a ``fly-request-id`` header; refusals are ``ErrorResponse{error, status}``.
Each call takes a token from its (operationId, app, machine) bucket first (429 when empty).
Lease nonces come in the ``fly-machine-lease-nonce`` header.
"""

from __future__ import annotations

import hmac
import json
import signal as signals
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulator.fly_api.backend import FlyBackend, find_machine, parse_signal, stop_settings
from emulator.fly_api.clock import FLY_RATE_LIMITS, RateLimiter, RateLimits
from emulator.fly_api.errors import ApiError, FlyEmulatorError, RunnerError, bad_request
from emulator.fly_api.models import State, ulid
from emulator.fly_api.resources import (
    DEFAULT_EVENTS,
    DEFAULT_LEASE_TTL_S,
    MAX_EVENTS,
    secret_json,
)

NONCE_HEADER = "fly-machine-lease-nonce"
LEASE_OWNER = "emulator@tokens.fly.io"
MAX_WAIT_S = 60
DEFAULT_EXEC_TIMEOUT_S = 30
UNAUTHORIZED = "Authenticate: token validation error"

Handler = Callable[[Request], Awaitable[Any]]


class _Auth:
    """ASGI middleware: a request id on every answer; 401 without the emulator's token."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        if not token:
            raise FlyEmulatorError("The Fly API emulator needs a non-empty token to serve.")
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{ulid()}-emu"

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["fly-request-id"] = request_id
            await send(message)

        scheme, _, sent = Headers(scope=scope).get("authorization", "").partition(" ")
        ok = scheme.lower() in ("bearer", "flyv1") and hmac.compare_digest(
            sent.strip().encode(), self.token.encode()
        )
        if not ok and scope["path"] != "/healthz":
            refusal = JSONResponse({"error": UNAUTHORIZED}, status_code=401)
            await refusal(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)


def create_app(
    backend: FlyBackend, *, token: str, rate_limits: RateLimits | None = FLY_RATE_LIMITS
) -> Starlette:
    """The Machines API over ``backend`` for holders of ``token``; ``rate_limits=None``
    turns the 429s off."""
    limiter = RateLimiter(rate_limits, backend.clock) if rate_limits is not None else None
    apps = backend.apps

    def route(path: str, method: str, operation: str, handler: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            params = request.path_params
            try:
                if limiter is not None and not limiter.allow(
                    operation, params.get("app", ""), params.get("machine", "")
                ):
                    raise ApiError(429, "rate limit exceeded: slow down and retry with backoff")
                result = await handler(request)
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.http_status)
            if isinstance(result, Response):
                return result
            return JSONResponse(result)

        return Route("/v1" + path, endpoint, methods=[method], name=operation)

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise bad_request("the request body is not valid JSON") from None
        if not isinstance(decoded, dict):
            raise bad_request("the request body must be a JSON object")
        return decoded

    def machine(request: Request, *, live: bool = True) -> Any:
        m = find_machine(backend, request.path_params["app"], request.path_params["machine"])
        if live and m.state == State.DESTROYED:
            raise ApiError(404, "machine not found")
        return m

    def nonce(request: Request) -> str | None:
        return request.headers.get(NONCE_HEADER)

    def wrong_state(m: Any, action: str) -> ApiError:
        return ApiError(
            412,
            f"unable to {action} machine from current state: '{m.state}'; wait for it "
            "to settle (GET …/wait?state=settled) and retry",
        )

    # -- apps ------------------------------------------------------------------------------

    async def list_apps(request: Request) -> Any:
        found = apps.find(request.query_params.get("org_slug"))
        return {"apps": [a.json() for a in found], "total_apps": len(found)}

    async def create_app_(request: Request) -> Any:
        app = apps.create(await body(request))
        return JSONResponse({"id": app.id, "created_at": int(app.created_at)}, status_code=201)

    async def show_app(request: Request) -> Any:
        return apps.get(request.path_params["app"]).json()

    async def delete_app(request: Request) -> Any:
        apps.delete(request.path_params["app"])
        return Response(status_code=202)

    # -- secrets and IPs -------------------------------------------------------------------

    async def list_secrets(request: Request) -> Any:
        app = apps.get(request.path_params["app"])
        return {"secrets": [secret_json(n, *v) for n, v in sorted(app.secrets.items())]}

    async def update_secrets(request: Request) -> Any:
        app = apps.get(request.path_params["app"])
        values = (await body(request)).get("values")
        if not isinstance(values, dict):
            raise bad_request("values: send an object of NAME: value (null removes)")
        apps.set_secrets(app, values)
        shown = [secret_json(n, *v) for n, v in sorted(app.secrets.items())]
        return {"secrets": shown, "version": app.secrets_version}

    async def show_secret(request: Request) -> Any:
        app, name = apps.get(request.path_params["app"]), request.path_params["name"]
        if name not in app.secrets:
            raise ApiError(404, f"secret {name!r} not found")
        return secret_json(name, *app.secrets[name])

    async def set_secret(request: Request) -> Any:
        app, name = apps.get(request.path_params["app"]), request.path_params["name"]
        value = (await body(request)).get("value")
        if not isinstance(value, str):
            raise bad_request("value: send the secret's value as a string")
        apps.set_secrets(app, {name: value})
        shown = {**secret_json(name, *app.secrets[name]), "version": app.secrets_version}
        return JSONResponse(shown, status_code=201)

    async def delete_secret(request: Request) -> Any:
        app, name = apps.get(request.path_params["app"]), request.path_params["name"]
        if name not in app.secrets:
            raise ApiError(404, f"secret {name!r} not found")
        apps.set_secrets(app, {name: None})
        return {"version": app.secrets_version}

    async def list_ips(request: Request) -> Any:
        return {"ips": apps.get(request.path_params["app"]).ips}

    async def add_ip(request: Request) -> Any:
        return apps.add_ip(apps.get(request.path_params["app"]), await body(request))

    async def delete_ip(request: Request) -> Any:
        app = apps.get(request.path_params["app"])
        kept = [e for e in app.ips if e["ip"] != request.path_params["ip"]]
        if len(kept) == len(app.ips):
            raise ApiError(404, f"IP {request.path_params['ip']} is not assigned to {app.name}")
        app.ips = kept
        return Response(status_code=204)

    # -- machines --------------------------------------------------------------------------

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
        m = apps.new_machine(app, sent)
        shown = m.json(now=backend.now())
        if sent.get("lease_ttl"):
            lease = apps.take_lease(m, int(sent["lease_ttl"]), "", None, _owner())
            shown["nonce"] = lease.nonce
        if not sent.get("skip_launch"):
            backend.launch(m)
            shown["state"] = str(m.state)
        return shown

    async def show_machine(request: Request) -> Any:
        m = machine(request, live=False)
        include = request.query_params.get("include_leases") == "true"
        return m.json(now=backend.now(), include_lease=include)

    async def update_machine(request: Request) -> Any:
        m = machine(request)
        backend.guard(m, nonce(request))
        sent = await body(request)
        signal, timeout = stop_settings(m, {})
        apps.new_version(m, sent)
        backend.replace(m, launch=not sent.get("skip_launch"), signal=signal, timeout_s=timeout)
        shown = m.json(now=backend.now())
        if sent.get("lease_ttl") and m.lease is None:
            shown["nonce"] = apps.take_lease(m, int(sent["lease_ttl"]), "", None, _owner()).nonce
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
        await _run(backend.runner.signal(m.id, number))
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
            done = await _run(backend.runner.exec(m.id, command, timeout, sent.get("stdin")))
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
            m, ttl, str(sent.get("description") or ""), nonce(request), _owner()
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

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    mp = "/apps/{app}/machines/{machine}"
    routes = [
        route("/apps", "GET", "Apps_list", list_apps),
        route("/apps", "POST", "Apps_create", create_app_),
        route("/apps/{app}", "GET", "Apps_show", show_app),
        route("/apps/{app}", "DELETE", "Apps_delete", delete_app),
        route("/apps/{app}/secrets", "GET", "Secrets_list", list_secrets),
        route("/apps/{app}/secrets", "POST", "Secrets_update", update_secrets),
        route("/apps/{app}/secrets/{name}", "GET", "Secret_get", show_secret),
        route("/apps/{app}/secrets/{name}", "POST", "Secret_create", set_secret),
        route("/apps/{app}/secrets/{name}", "DELETE", "Secret_delete", delete_secret),
        route("/apps/{app}/ip_assignments", "GET", "App_IPAssignments_list", list_ips),
        route("/apps/{app}/ip_assignments", "POST", "App_IPAssignments_create", add_ip),
        route("/apps/{app}/ip_assignments/{ip}", "DELETE", "App_IPAssignments_delete", delete_ip),
        route("/apps/{app}/machines", "GET", "Machines_list", list_machines),
        route("/apps/{app}/machines", "POST", "Machines_create", create_machine),
        route(mp, "GET", "Machines_show", show_machine),
        route(mp, "POST", "Machines_update", update_machine),
        route(mp, "DELETE", "Machines_delete", delete_machine),
        route(mp + "/start", "POST", "Machines_start", start),
        route(mp + "/stop", "POST", "Machines_stop", stop),
        route(mp + "/suspend", "POST", "Machines_suspend", suspend),
        route(mp + "/signal", "POST", "Machines_signal", signal_),
        route(mp + "/wait", "GET", "Machines_wait", wait),
        route(mp + "/events", "GET", "Machines_list_events", events),
        route(mp + "/versions", "GET", "Machines_list_versions", versions),
        route(mp + "/exec", "POST", "Machines_exec", exec_),
        route(mp + "/lease", "GET", "Machines_show_lease", show_lease),
        route(mp + "/lease", "POST", "Machines_create_lease", create_lease),
        route(mp + "/lease", "DELETE", "Machines_release_lease", release_lease),
        route(mp + "/metadata", "GET", "Machines_show_metadata", show_metadata),
        route(mp + "/metadata", "PATCH", "Machines_update_metadata", patch_metadata),
        route(mp + "/metadata/{key}", "GET", "Machines_get_metadata_key", get_key),
        route(mp + "/metadata/{key}", "POST", "Machines_upsert_metadata", set_key),
        route(mp + "/metadata/{key}", "DELETE", "Machines_delete_metadata", delete_key),
        Route("/healthz", healthz, methods=["GET"]),
    ]

    async def unknown(request: Request) -> Response:
        return JSONResponse(
            {"error": f"not found: {request.method} {request.url.path}", "status": "unknown"},
            status_code=404,
        )

    app = Starlette(
        routes=[
            *routes,
            Route("/{rest:path}", unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ],
        middleware=[Middleware(_Auth, token=token)],
    )
    app.state.backend = backend
    return app


def _owner() -> str:
    """Who holds the emulator's leases: every client shares the one token."""
    return LEASE_OWNER


async def _run(work: Awaitable[Any]) -> Any:
    """Await a runner call; its failure is a 500 naming what broke."""
    try:
        return await work
    except RunnerError as exc:
        raise ApiError(500, f"the machine's runner failed: {exc}") from exc
