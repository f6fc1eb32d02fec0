"""The emulator's Durable Object control API: the test hooks over HTTP.

=======  =====================================  ========================================
method   path (under the mount point)           does
=======  =====================================  ========================================
GET      ``/{namespace}/objects``               ids with storage, and those in memory
POST     ``/{namespace}/objects/{id}/evict``    ``evictDurableObject`` (sockets close)
POST     ``/{namespace}/objects/{id}/hibernate`` drop the instance, sockets stay open
POST     ``/{namespace}/objects/{id}/alarm``    ``runDurableObjectAlarm``: fire it now
=======  =====================================  ========================================

Every route needs ``Authorization: Bearer <the host's API token>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulator.durable_objects.errors import DurableObjectError
from emulator.durable_objects.namespace import Namespace
from kit.host.auth import bearer_matches, unauthorized


def create_control_app(namespaces: Mapping[str, Namespace[Any]], *, api_token: str) -> Starlette:
    """An ASGI app over ``namespaces`` (keyed by class name, e.g. ``SessionLog``)."""

    def authorized(request: Request) -> bool:
        return bearer_matches(request.headers.get("authorization", ""), api_token)

    def resolve(request: Request) -> Namespace[Any] | Response:
        if not authorized(request):
            return unauthorized()
        namespace = namespaces.get(request.path_params["namespace"])
        if namespace is None:
            return JSONResponse(
                {
                    "error": "unknown_namespace",
                    "message": f"No namespace {request.path_params['namespace']!r}; "
                    f"there are: {', '.join(sorted(namespaces))}.",
                },
                status_code=404,
            )
        return namespace

    async def objects(request: Request) -> Response:
        ns = resolve(request)
        if isinstance(ns, Response):
            return ns
        return JSONResponse({"ids": ns.ids(), "live": ns.live_ids()})

    async def hook(request: Request) -> Response:
        ns = resolve(request)
        if isinstance(ns, Response):
            return ns
        object_id, action = request.path_params["object_id"], request.path_params["action"]
        try:
            ns.path(object_id)
            if action == "evict":
                return JSONResponse({"evicted": await ns.evict(object_id)})
            if action == "hibernate":
                return JSONResponse({"hibernated": await ns.hibernate(object_id)})
            if action == "alarm":
                run = await ns.run_alarm_now(object_id)
                return JSONResponse({"ran": run.ran, "error": run.error})
        except DurableObjectError as exc:
            return JSONResponse({"error": "bad_request", "message": str(exc)}, status_code=400)
        return JSONResponse(
            {"error": "unknown_hook", "message": "Use evict, hibernate or alarm."},
            status_code=404,
        )

    return Starlette(
        routes=[
            Route("/{namespace}/objects", objects),
            Route("/{namespace}/objects/{object_id}/{action}", hook, methods=["POST"]),
        ]
    )
