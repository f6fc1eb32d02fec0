"""Routes of apps, secrets and IP assignments."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from emulator.fly_api.backend import FlyBackend
from emulator.fly_api.errors import ApiError, bad_request
from emulator.fly_api.resources import secret_json
from emulator.fly_api.wire import Endpoint, body

DESTROY_WAIT_S = 60.0
"""How long deleting an app waits for its machines' runs to be removed."""


def app_endpoints(backend: FlyBackend) -> list[Endpoint]:
    """The app-level operations over ``backend``."""
    apps = backend.apps

    async def list_apps(request: Request) -> Any:
        found = apps.find(request.query_params.get("org_slug"))
        return {"apps": [a.json() for a in found], "total_apps": len(found)}

    async def create_app_(request: Request) -> Any:
        app = apps.create(await body(request))
        return JSONResponse({"id": app.id, "created_at": int(app.created_at)}, status_code=201)

    async def show_app(request: Request) -> Any:
        return apps.get(request.path_params["app"]).json()

    async def delete_app(request: Request) -> Any:
        # Fly answers 202 and destroys the machines behind it; here the answer waits until
        # their runs are gone, so a deleted app leaves no container on this host.
        machines = apps.delete(request.path_params["app"])
        for m in machines:
            await backend.wait(m, {"destroyed"}, DESTROY_WAIT_S, None)
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

    return [
        ("/apps", "GET", "Apps_list", list_apps),
        ("/apps", "POST", "Apps_create", create_app_),
        ("/apps/{app}", "GET", "Apps_show", show_app),
        ("/apps/{app}", "DELETE", "Apps_delete", delete_app),
        ("/apps/{app}/secrets", "GET", "Secrets_list", list_secrets),
        ("/apps/{app}/secrets", "POST", "Secrets_update", update_secrets),
        ("/apps/{app}/secrets/{name}", "GET", "Secret_get", show_secret),
        ("/apps/{app}/secrets/{name}", "POST", "Secret_create", set_secret),
        ("/apps/{app}/secrets/{name}", "DELETE", "Secret_delete", delete_secret),
        ("/apps/{app}/ip_assignments", "GET", "App_IPAssignments_list", list_ips),
        ("/apps/{app}/ip_assignments", "POST", "App_IPAssignments_create", add_ip),
        ("/apps/{app}/ip_assignments/{ip}", "DELETE", "App_IPAssignments_delete", delete_ip),
    ]
