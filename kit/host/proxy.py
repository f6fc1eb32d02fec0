"""The model proxy: the only way a sandbox reaches the Messages API.

A sandbox's ``ANTHROPIC_API_KEY`` is a per-session token issued here. The proxy accepts
only ``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` with a known token,
replaces the credentials with the real key (which never leaves the host), and streams the
upstream's bytes back untouched (no buffering, same ``content-encoding``), with its status
and retry headers, so the CLI's own retries keep working.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kit.ids import SessionId

ALLOWED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
_CREDENTIALS = {"x-api-key", "authorization"}
UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)


def _api_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}}, status_code=status
    )


class ModelProxy:
    """Issues per-session tokens and forwards their model calls upstream with the real key."""

    def __init__(
        self, upstream_url: str, api_key: str, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self._api_key = api_key
        self._tokens: dict[str, SessionId] = {}
        self._client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, transport=transport)
        self.requests_forwarded = 0

    def issue(self, session_id: SessionId) -> str:
        """A new token for ``session_id``'s sandbox."""
        token = "kit-model-" + secrets.token_urlsafe(24)
        self._tokens[token] = session_id
        return token

    def revoke(self, token: str) -> None:
        """Stop accepting ``token`` (its sandbox is gone)."""
        self._tokens.pop(token, None)

    def session_for(self, headers: httpx.Headers | dict[str, str]) -> SessionId | None:
        """The session whose token the request carries, if any."""
        raw = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if not raw:
            return None
        for token, session in self._tokens.items():
            if hmac.compare_digest(token.encode(), raw.encode()):
                return session
        return None

    async def aclose(self) -> None:
        """Close the upstream connection pool."""
        await self._client.aclose()

    async def handle(self, request: Request) -> Response:
        """Forward one request, or refuse it with the Messages API's error shape."""
        if request.url.path not in ALLOWED_PATHS or request.method != "POST":
            return _api_error(
                403, "permission_error", "kit's model proxy forwards only POST /v1/messages."
            )
        if self.session_for(dict(request.headers)) is None:
            return _api_error(401, "authentication_error", "Unknown or revoked session token.")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k not in _HOP_BY_HOP and k not in _CREDENTIALS
        }
        headers["x-api-key"] = self._api_key
        url = self.upstream_url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        upstream_req = self._client.build_request(
            "POST", url, headers=headers, content=await request.body()
        )
        try:
            upstream = await self._client.send(upstream_req, stream=True)
        except httpx.HTTPError as exc:
            return _api_error(
                502,
                "api_error",
                f"kit's model proxy could not reach the model upstream: {type(exc).__name__}.",
            )
        self.requests_forwarded += 1
        out_headers = {k: v for k, v in upstream.headers.items() if k not in _HOP_BY_HOP}

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(body(), status_code=upstream.status_code, headers=out_headers)

    def app(self) -> Starlette:
        """The proxy as an ASGI app (every path goes through :meth:`handle`)."""
        return Starlette(
            routes=[
                Route(
                    "/{path:path}", self.handle, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]
                )
            ]
        )
