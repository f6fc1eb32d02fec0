"""The wire: Starlette routes of the container API the shim's ``HttpContainer`` speaks.

Every route wants ``Authorization: Bearer <token>`` or, so that the shim's own
``Authorization`` can reach the container through the port proxy,
``x-kit-emulator-authorization: Bearer <token>`` (compared in constant time; 401
``unauthorized`` otherwise, ``/healthz`` excepted). Errors are
``{"error": code, "message": sentence}``. Routes (``{id}`` = the DO id)::

    POST /containers/{id}/start     {"env", "instance", "image"?, "entrypoint"?} → 201 {"running": true}
    GET  /containers/{id}           → {"running", "exit_code", "oom"}
    GET  /containers/{id}/monitor   → 204 still running after ≤ 60 s (``?timeout_s=``), 200 {"exit_code", "oom"}
    POST /containers/{id}/signal    {"signo"} → 202
    POST /containers/{id}/oom       → 200 {"exit_code": 137, "oom": true} once it died (a
                                    rehearsal hook: Cloudflare has none)
    POST /containers/{id}/destroy   → 204
    POST /containers/{id}/intercept {"url", "token"} → 204: deliver the container's HTTP to
                                    kit.internal to ``url`` (the Worker, on loopback) with
                                    ``token``, from its next start on (emulator.containers.egress)
    ANY  /containers/{id}/ports/{port}/{path} → the container's HTTP answer, streamed
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from emulator.containers.backend import MONITOR_LIMIT_S, ContainersBackend
from emulator.containers.errors import ApiError, ContainersEmulatorError
from emulator.containers.proxy import EMULATOR_AUTH, proxy

LOOPBACK_HTTP = re.compile(
    r"^http://(?:127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\])(?::\d{1,5})?/"
)
"""Where intercepted requests may be delivered: the Worker on this host's loopback."""
MAX_BODY = 1 << 20
"""The largest JSON body a control route reads (a start's env)."""


class _Auth:
    """ASGI middleware: 401 without the emulator's token."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        if not token:
            raise ContainersEmulatorError(
                "The container emulator needs a non-empty token to serve."
            )
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/healthz":
            headers = Headers(scope=scope)
            sent_as = headers.get(EMULATOR_AUTH) or headers.get("authorization", "")
            scheme, _, sent = sent_as.partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                sent.strip().encode(), self.token
            )
            if not ok:
                refusal = ApiError(
                    401,
                    "unauthorized",
                    "Missing or wrong token: send Authorization: Bearer "
                    "<KIT_CONTAINER_EMULATOR_TOKEN>.",
                )
                await JSONResponse(refusal.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too_large", f"The body is over {MAX_BODY} bytes: send less env.")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ApiError(400, "bad_json", "The body is not JSON: send one JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "The body must be one JSON object.")
    return body


def create_app(backend: ContainersBackend, *, token: str) -> ASGIApp:
    """The emulator's ASGI app over ``backend``, behind ``token``."""

    async def start(request: Request) -> Response:
        body = await _json(request)
        env, image, entrypoint = body.get("env") or {}, body.get("image"), body.get("entrypoint")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ApiError(400, "bad_env", '"env" must be an object of strings to strings.')
        if image is not None and not isinstance(image, str):
            raise ApiError(400, "bad_image", '"image" must be a string (an image tag).')
        if entrypoint is not None and not (
            isinstance(entrypoint, list) and all(isinstance(a, str) for a in entrypoint)
        ):
            raise ApiError(400, "bad_entrypoint", '"entrypoint" must be a list of strings.')
        await backend.start(
            request.path_params["id"],
            env=env,
            instance=body.get("instance"),
            image=image,
            entrypoint=entrypoint,
        )
        return JSONResponse({"running": True}, status_code=201)

    async def status(request: Request) -> Response:
        container = backend.get(request.path_params["id"])
        if container is None:
            return JSONResponse({"running": False, "exit_code": None, "oom": False})
        return JSONResponse(container.status())

    async def monitor(request: Request) -> Response:
        try:
            timeout_s = float(request.query_params.get("timeout_s", MONITOR_LIMIT_S))
        except ValueError:
            raise ApiError(400, "bad_timeout", "timeout_s must be a number of seconds.") from None
        exit = await backend.monitor(request.path_params["id"], max(0.0, timeout_s))
        if exit is None:
            return Response(status_code=204)
        return JSONResponse({"exit_code": exit.exit_code, "oom": exit.oom})

    async def signal(request: Request) -> Response:
        signo = (await _json(request)).get("signo")
        if not isinstance(signo, int) or isinstance(signo, bool) or not 1 <= signo <= 64:
            raise ApiError(400, "bad_signal", '"signo" must be a signal number (1-64).')
        await backend.signal(request.path_params["id"], signo)
        return Response(status_code=202)

    async def oom(request: Request) -> Response:
        exit = await backend.oom(request.path_params["id"])
        if exit is None:
            raise ApiError(504, "still_running", "The container did not die within 30 s.")
        return JSONResponse({"exit_code": exit.exit_code, "oom": exit.oom})

    async def destroy(request: Request) -> Response:
        await backend.destroy(request.path_params["id"])
        return Response(status_code=204)

    async def intercept(request: Request) -> Response:
        body = await _json(request)
        url, token = body.get("url"), body.get("token")
        if not isinstance(url, str) or not LOOPBACK_HTTP.match(url):
            raise ApiError(
                400,
                "bad_url",
                '"url" must be an http URL on loopback (http://127.0.0.1:PORT/…): the Worker '
                "under wrangler dev.",
            )
        if not isinstance(token, str) or not token.strip():
            raise ApiError(400, "bad_token", '"token" must be a non-empty string.')
        backend.intercept(request.path_params["id"], url, token)
        return Response(status_code=204)

    async def ports(request: Request) -> Response:
        port = int(request.path_params["port"])
        if not 1 <= port <= 65535:
            raise ApiError(400, "bad_port", f"Port {port} is not a TCP port (1-65535).")
        transport = await backend.transport(request.path_params["id"])
        return await proxy(request, transport, port, request.path_params.get("path", ""))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.http_status)

    base = "/containers/{id}"
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route(f"{base}/start", start, methods=["POST"]),
            Route(base, status, methods=["GET"]),
            Route(f"{base}/monitor", monitor, methods=["GET"]),
            Route(f"{base}/signal", signal, methods=["POST"]),
            Route(f"{base}/oom", oom, methods=["POST"]),
            Route(f"{base}/destroy", destroy, methods=["POST"]),
            Route(f"{base}/intercept", intercept, methods=["POST"]),
            Route(f"{base}/ports/{{port:int}}/{{path:path}}", ports, methods=methods),
            Route(f"{base}/ports/{{port:int}}", ports, methods=methods),
        ],
        exception_handlers={ApiError: on_api_error},
    )
    return _Auth(app, token=token)
