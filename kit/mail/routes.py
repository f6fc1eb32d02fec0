"""The email channel on the control API: what was sent, what was refused.

``GET /_kit/mail/outbox`` and ``GET /_kit/mail/refused`` (``?limit=N``, default 50, at most
500; ``?raw=1``: each reply's raw message too), JSON ``{"address": agent address, "items": [...]}`` newest first; guarded by the host's
API token like the rest of ``/_kit/``. The Cloudflare shim serves the same routes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kit.host.auth import bearer_matches, unauthorized
from kit.mail.store import MailStore

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def mail_routes(store: MailStore, address: str, api_token: str) -> list[Route]:
    """The routes; mount them on the host's app."""

    def limit_of(request: Request) -> int | Response:
        raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
        # isdecimal and ASCII: str.isdigit takes '²', which int() does not.
        if not (raw.isascii() and raw.isdecimal()) or not 1 <= int(raw) <= MAX_LIMIT:
            return JSONResponse(
                {
                    "error": "bad_request",
                    "message": f"limit must be a whole number from 1 to {MAX_LIMIT}.",
                },
                400,
            )
        return int(raw)

    async def outbox(request: Request) -> Response:
        if not bearer_matches(request.headers.get("authorization", ""), api_token):
            return unauthorized()
        limit = limit_of(request)
        if isinstance(limit, Response):
            return limit
        raw = request.query_params.get("raw") == "1"
        items = [
            {**e.to_json(), **({"raw": e.raw.decode("utf-8", "replace")} if raw else {})}
            for e in await store.outbox(limit)
        ]
        return JSONResponse({"address": address, "items": items})

    async def refused(request: Request) -> Response:
        if not bearer_matches(request.headers.get("authorization", ""), api_token):
            return unauthorized()
        limit = limit_of(request)
        if isinstance(limit, Response):
            return limit
        items = [r.to_json() for r in await store.refused(limit)]
        return JSONResponse({"address": address, "items": items})

    return [
        Route("/_kit/mail/outbox", outbox, methods=["GET"]),
        Route("/_kit/mail/refused", refused, methods=["GET"]),
    ]
