"""The wire: Starlette routes of the Machines API subset over :class:`FlyBackend`.

Every route wants ``Authorization: Bearer <token>`` (or flyctl's ``FlyV1 <token>``) and
answers with a ``fly-request-id`` header; refusals are ``ErrorResponse{error, status}``.
Each call takes a token from its (operationId, app, machine) bucket first (429 when empty).
Lease nonces come in the ``fly-machine-lease-nonce`` header. The routes themselves are in
``app_routes`` (apps, secrets, IPs) and ``machine_routes`` (machines, leases, metadata).
"""

from __future__ import annotations

import hmac

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulator.fly_api.app_routes import app_endpoints
from emulator.fly_api.backend import FlyBackend
from emulator.fly_api.clock import FLY_RATE_LIMITS, RateLimiter, RateLimits
from emulator.fly_api.errors import ApiError, FlyEmulatorError
from emulator.fly_api.machine_routes import machine_endpoints
from emulator.fly_api.models import ulid
from emulator.fly_api.wire import NONCE_HEADER, Handler

__all__ = ["NONCE_HEADER", "create_app"]

UNAUTHORIZED = "Authenticate: token validation error"


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

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def unknown(request: Request) -> Response:
        return JSONResponse(
            {"error": f"not found: {request.method} {request.url.path}", "status": "unknown"},
            status_code=404,
        )

    endpoints = [*app_endpoints(backend), *machine_endpoints(backend)]
    app = Starlette(
        routes=[
            *(route(*endpoint) for endpoint in endpoints),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/{rest:path}", unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ],
        middleware=[Middleware(_Auth, token=token)],
    )
    app.state.backend = backend
    return app
