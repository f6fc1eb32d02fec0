"""The email channel on the control API: what was sent, what was refused.

``GET /_kit/mail/outbox`` and ``GET /_kit/mail/refused`` (``?limit=N``, default 50, at most
500; ``?raw=1``: each reply's raw message too), JSON ``{"address": agent address, "items": [...]}`` newest first; guarded by the host's
API token like the rest of ``/_kit/``. The Cloudflare shim serves the same routes.

:func:`page_threads` answers the chat page's ``POST /web/mail`` in ``kit dev`` (mounted by
:mod:`kit.host.web` behind its same-origin loopback guard, never with the API token): the
agent's address and its threads, newest first, each with the token that joins its session.
No other host serves it: they never hand session tokens to a page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kit.host.auth import bearer_matches, unauthorized
from kit.mail.store import MAX_THREADS_LISTED, MailStore, SqliteMailStore

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


def page_threads(
    store: SqliteMailStore, address: str, limit: int = MAX_THREADS_LISTED
) -> Callable[[Request], Awaitable[Response]]:
    """The answer to ``POST /web/mail`` for a request :func:`kit.host.web.local_refusal` let
    through: ``{"address": …, "threads": [{session_id, token, ws_url, subject,
    participants, messages, last_at}, …]}``, newest first, at most ``limit``. ``ws_url`` is
    on the origin the page came from (the guard checked it is this host's, over http)."""

    async def answer(request: Request) -> Response:
        threads = [
            {
                "session_id": t.session_id,
                "token": t.session_token,
                "ws_url": f"ws://{request.url.netloc}/v1/sessions/{t.session_id}/ws",
                "subject": t.subject,
                "participants": list(t.participants),
                "messages": t.messages,
                "last_at": t.last_at,
            }
            for t in await store.threads(limit)
        ]
        return JSONResponse(
            {"address": address, "threads": threads}, headers={"cache-control": "no-store"}
        )

    return answer
