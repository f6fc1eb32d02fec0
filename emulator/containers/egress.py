"""Outbound interception, emulated: a container's HTTP to ``kit.internal`` delivered to the
Worker that intercepted it.

On Cloudflare, ``ctx.container.interceptAllOutboundHttp(binding)`` hands every HTTP request
the container makes to ``binding`` in the Worker (reference/cloudflare.md §6). Here the shim's
``HttpContainer`` sends ``POST /containers/{id}/intercept {"url", "token"}``: the URL of the
Worker's delivery route for that Durable Object and a token. From the container's next start
on (Docker only):

- ``kit.internal`` resolves to 127.0.0.1 inside the container, where the runner listens on
  port 80 and relays each connection to this relay on the host's loopback, from a loopback
  source address of that container's own (127.88.x.y: the relay tells containers apart by
  it, as no header of theirs can be trusted);
- the relay (:class:`EgressRelay`, one per emulator) sends each request to the Worker's URL
  with the token (``x-kit-egress-token``) and the URL the container asked for
  (``x-kit-egress-url``), streaming both ways; the DO checks the token and passes the
  request to its KitEgress binding (worker_shim/src/session.ts ``emulatedEgress``).

A new ``intercept`` (a new DO instance adopting the container) replaces the URL and token
at once, for connections already open too. Not emulated: other hosts (they do not resolve
inside the container, where on Cloudflare the binding would answer them: the egress
allowlist is not rehearsed) and HTTPS (``interceptOutboundHttps``: no TLS is terminated).
A process on this host can pick any loopback source address: the relay keeps containers
apart, not local users (who can read the rehearsal's secrets anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from emulator.containers.proxy import HOP_BY_HOP, TIMEOUT, body_chunks, streamed

WORKER_HOST = "kit.internal"
"""The name a container calls the Worker by (worker_shim/src/egress.ts WORKER_HOST)."""
EGRESS_TOKEN = "x-kit-egress-token"
EGRESS_URL = "x-kit-egress-url"
CLIENT_DEFAULTS = ("accept", "accept-encoding", "user-agent")
"""Headers httpx adds to every request: not the container's, so not passed on."""
SOURCE_NET = (127, 88)
"""Containers' source addresses are 127.88.x.y (loopback: nothing to configure)."""
MAX_SOURCES = 65_000


@dataclass
class Interception:
    """Where one container's requests go: the Worker's delivery URL and the token. Updated
    in place by a new ``intercept``."""

    url: str
    token: str


@dataclass(frozen=True)
class EgressRoute:
    """How a run reaches the relay: the relay's port on 127.0.0.1 and its source address."""

    port: int
    source: str


class EgressRelay:
    """The ASGI app that delivers intercepted requests (see the module doc)."""

    def __init__(self) -> None:
        self.port = 0
        """Set once the relay serves."""
        self._by_source: dict[str, Interception] = {}
        self._source_of: dict[str, str] = {}
        self._client = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)

    def route(self, container_id: str, interception: Interception) -> EgressRoute:
        """The route of ``container_id``'s runs (one source address per container, kept)."""
        source = self._source_of.get(container_id)
        if source is None:
            n = len(self._source_of) + 1
            if n > MAX_SOURCES:
                raise OverflowError(f"More than {MAX_SOURCES} intercepted containers.")
            source = f"{SOURCE_NET[0]}.{SOURCE_NET[1]}.{n >> 8}.{n & 255}"
            self._source_of[container_id] = source
        self._by_source[source] = interception
        return EgressRoute(self.port, source)

    def source_of(self, container_id: str) -> str | None:
        """The loopback address ``container_id``'s runs connect from, once routed."""
        return self._source_of.get(container_id)

    async def close(self) -> None:
        await self._client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        answer = await self._deliver(request)
        await answer(scope, receive, send)

    async def _deliver(self, request: Request) -> Response:
        source = request.client.host if request.client else ""
        interception = self._by_source.get(source)
        if interception is None:
            return JSONResponse(
                {"error": "forbidden", "message": "Not a connection of an intercepted container."},
                status_code=403,
            )
        host = request.headers.get("host", WORKER_HOST)
        # The path as sent (percent-escapes kept: %2F is no slash), and the query.
        raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        target = f"http://{host}{raw_path.decode('latin-1')}"
        if request.url.query:
            target += "?" + request.url.query
        headers = [
            (name, value)
            for name, value in request.headers.items()
            if (name not in HOP_BY_HOP or name == "content-length")  # a sized body stays sized
            and name not in (EGRESS_TOKEN, EGRESS_URL)
        ]
        headers += [(EGRESS_TOKEN, interception.token), (EGRESS_URL, target)]
        has_body = request.method not in ("GET", "HEAD") or "content-length" in request.headers
        outgoing = self._client.build_request(
            request.method,
            interception.url,
            headers=headers,
            content=body_chunks(request) if has_body else None,
        )
        for name in CLIENT_DEFAULTS:  # httpx's own, where the container sent none
            if name not in request.headers:
                del outgoing.headers[name]
        try:
            answer = await self._client.send(outgoing, stream=True)
        except ClientDisconnect:  # the container went away mid-body
            return Response(status_code=499)
        except httpx.HTTPError as exc:
            return JSONResponse(
                {"error": "bad_gateway", "message": f"The Worker could not be reached: {exc!r}."},
                status_code=502,
            )
        return streamed(answer)
