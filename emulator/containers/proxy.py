"""``getTcpPort(port).fetch(request)``: one HTTP request relayed to a container's port.

The request body goes to the container as it arrives and the answer comes back as the
container sends it (chunk by chunk: an NDJSON stream of a turn reaches the shim event by
event). Hop-by-hop headers are not passed on, nor the emulator's own credentials: the shim
sends the emulator's token in ``x-kit-emulator-authorization`` on this route, so its own
``Authorization`` (the runtime's bearer token) passes to the container untouched; a token
sent in ``Authorization`` instead is the emulator's and is dropped. Nothing listening:
503 ``not_listening``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from emulator.containers.errors import ApiError, NotListening

EMULATOR_AUTH = "x-kit-emulator-authorization"
HOP_BY_HOP = frozenset(
    {
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
)
TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=600.0, pool=5.0)
"""Connect within 5 s; a turn's stream may pause while a tool runs, but not past 10 min."""


def _request_headers(request: Request) -> list[tuple[str, str]]:
    own = EMULATOR_AUTH if EMULATOR_AUTH in request.headers else "authorization"
    return [
        (name, value)
        for name, value in request.headers.items()
        if name not in HOP_BY_HOP and name not in (own, EMULATOR_AUTH)
    ]


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """A request's body as it arrives, without empty chunks."""
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def proxy(
    request: Request, transport: httpx.AsyncBaseTransport, port: int, path: str
) -> Response:
    """Send ``request`` to ``path`` on the container's ``port``; its answer, streamed."""
    client = httpx.AsyncClient(transport=transport, timeout=TIMEOUT)
    has_body = request.method not in ("GET", "HEAD") or "content-length" in request.headers
    outgoing = client.build_request(
        request.method,
        httpx.URL(f"http://127.0.0.1:{port}/{path}", query=request.url.query.encode() or None),
        headers=_request_headers(request),
        content=body_chunks(request) if has_body else None,
    )
    try:
        answer = await client.send(outgoing, stream=True)
    except (NotListening, httpx.ConnectError) as exc:
        raise ApiError(
            503,
            "not_listening",
            f"Nothing listens on port {port} in the container ({exc}): wait until its "
            "server is up, then retry.",
        ) from None
    except httpx.HTTPError as exc:
        raise ApiError(502, "bad_gateway", f"The container's port {port} failed: {exc!r}.") from exc
    return streamed(answer)


def streamed(answer: httpx.Response) -> StreamingResponse:
    """``answer`` passed on as it arrives: its status and headers (a repeated one, say
    ``set-cookie``, kept repeated; hop-by-hop ones dropped), closed at the end."""
    response = StreamingResponse(
        answer.aiter_raw(), status_code=answer.status_code, background=BackgroundTask(answer.aclose)
    )
    response.raw_headers = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in answer.headers.multi_items()
        if name not in HOP_BY_HOP
    ]
    return response
