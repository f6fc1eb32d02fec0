"""The Starlette app: the Messages API routes, a health check, and a request log for tests.

Routes::

    POST   /v1/messages               scripted reply; SSE when "stream" is true, else JSON
    POST   /v1/messages/count_tokens  {"input_tokens": N}, a rough estimate
    GET    /healthz                   {"ok": true}
    GET    /_emulator/requests        the last MAX_LOGGED_REQUESTS requests to /v1/*
    DELETE /_emulator/requests        forget them

Every route, the inspection ones included, wants the emulator's key (``create_app``'s
``api_key``; ``kit dev`` makes a new one each run and only its model proxy holds it) in
``x-api-key`` or ``Authorization: Bearer``: the request log holds every session's prompts.
Errors come in Anthropic's shape with its status and type. The log keeps headers with
credentials shown only as a digest (:func:`redacted`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from emulator.model.errors import OfflineModelError
from emulator.model.replies import Reply, choose_reply, estimate_tokens, new_id
from emulator.model.scenarios import ScenarioSource
from emulator.model.schema import ScenarioError
from emulator.model.sse import content_events, error_json, message_json, message_start
from kit.hoptrace import hop
from kit.host.auth import key_matches

MAX_LOGGED_REQUESTS = 200
"""How many requests ``GET /_emulator/requests`` remembers."""

_CREDENTIALS = frozenset({"x-api-key", "authorization"})

_NOT_JSON: Any = object()
"""Stands for a request body that is empty or not JSON."""


class RequestLog:
    """The most recent requests to /v1/*, oldest first, as plain JSON-able dicts."""

    def __init__(self, limit: int = MAX_LOGGED_REQUESTS) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)

    def add(self, entry: dict[str, Any]) -> None:
        """Remember one request, forgetting the oldest past the limit."""
        self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        """Every remembered request, oldest first."""
        return list(self._entries)

    def clear(self) -> None:
        """Forget every request."""
        self._entries.clear()


class _EventStream(StreamingResponse):
    """A streaming response that stops as soon as the client leaves, even mid-``delay_ms``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                # A client that hangs up mid-stream is normal, not an error.
                with contextlib.suppress(OSError):
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


class _RequireKey:
    """ASGI middleware: every HTTP request carries the emulator's key, or gets a 401."""

    def __init__(self, app: ASGIApp, *, key: str) -> None:
        if not key:
            raise OfflineModelError("The offline model needs a non-empty api_key.")
        self.app, self.key = app, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not key_matches(Headers(scope=scope), self.key):
            refusal = _error(
                401,
                "authentication_error",
                "invalid x-api-key: send the key this emulator was started with (x-api-key "
                "or Authorization: Bearer); kit dev's model proxy adds it for sandboxes.",
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(scenarios: ScenarioSource, *, api_key: str) -> Starlette:
    """Build the offline Messages API, answering from ``scenarios`` to holders of ``api_key``."""
    log = RequestLog()

    async def messages(request: Request) -> Response:
        body = await _read(request, log)
        hop("model: request read")
        problem = _body_problem(body)
        if problem is not None:
            return _error(400, "invalid_request_error", problem)
        try:
            rules = scenarios.rules()
        except ScenarioError as exc:
            # Not worth retrying: the developer must fix the file first.
            return _error(500, "api_error", str(exc), should_retry=False)
        reply = choose_reply(body["messages"], rules)
        model = body["model"]
        tokens = estimate_tokens(body)
        if reply.error is not None:
            await anyio.sleep(reply.delay_ms / 1000)
            error = reply.error
            return _error(error.status, error.type, error.message, should_retry=error.should_retry)
        message_id = new_id("msg_emu_")
        if body.get("stream") is True:
            events = _stream(reply, model=model, message_id=message_id, input_tokens=tokens)
            return _EventStream(
                events,
                media_type="text/event-stream",
                headers={**_ids(), "cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        await anyio.sleep(reply.delay_ms / 1000)
        return JSONResponse(
            message_json(reply, model=model, message_id=message_id, input_tokens=tokens),
            headers=_ids(),
        )

    async def count_tokens(request: Request) -> Response:
        body = await _read(request, log)
        if not isinstance(body, dict):
            problem = "is not valid JSON" if body is _NOT_JSON else "must be a JSON object"
            return _error(400, "invalid_request_error", f"The request body {problem}.")
        return JSONResponse({"input_tokens": estimate_tokens(body)}, headers=_ids())

    async def unknown(request: Request) -> Response:
        await _read(request, log)
        return _error(404, "not_found_error", f"Not found: {request.method} {request.url.path}")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def requests(request: Request) -> Response:
        if request.method == "DELETE":
            log.clear()
            return JSONResponse({"ok": True})
        return JSONResponse(log.entries())

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/v1/{rest:path}", unknown),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/_emulator/requests", requests, methods=["GET", "DELETE"]),
        ],
        middleware=[Middleware(_RequireKey, key=api_key)],
    )
    app.state.scenarios = scenarios
    app.state.requests = log
    return app


async def _stream(
    reply: Reply, *, model: str, message_id: str, input_tokens: int
) -> AsyncIterator[bytes]:
    yield message_start(model=model, message_id=message_id, input_tokens=input_tokens).encode()
    if reply.delay_ms:
        await anyio.sleep(reply.delay_ms / 1000)
    first = True
    for event in content_events(reply):
        if reply.chunk_delay_ms and event.name == "content_block_delta":
            if not first:
                await anyio.sleep(reply.chunk_delay_ms / 1000)
            first = False
        yield event.encode()


async def _read(request: Request, log: RequestLog) -> Any:
    """Log the request; give the decoded body (``_NOT_JSON`` if it is not JSON)."""
    raw = await request.body()
    try:
        body: Any = json.loads(raw, parse_constant=_no_constants) if raw else _NOT_JSON
        logged = body
    except (ValueError, RecursionError):
        body, logged = _NOT_JSON, raw.decode("utf-8", errors="replace")
    log.add(
        {
            "path": request.url.path,
            "query": request.url.query,
            "headers": {
                key.lower(): redacted(value) if key.lower() in _CREDENTIALS else value
                for key, value in request.headers.items()
            },
            "body": None if logged is _NOT_JSON else logged,
        }
    )
    return body


def redacted(credential: str) -> str:
    """How the request log shows a credential: a short digest, enough to tell keys apart."""
    digest = hashlib.sha256(credential.encode()).hexdigest()[:12]
    return f"[redacted sha256:{digest}]"


def _no_constants(name: str) -> object:
    """Refuse NaN and Infinity, as the real API does (and JSON itself)."""
    raise ValueError(f"{name} is not valid JSON")


def _body_problem(body: Any) -> str | None:
    """Why ``body`` is not a Messages API request, or ``None`` if it will do."""
    if body is _NOT_JSON:
        return "The request body is not valid JSON."
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required (a model name string)."
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages: Field required (an array of messages)."
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages.{index}: each message must be an object with a string role."
        if not isinstance(message.get("content"), str | list):
            return f"messages.{index}.content: must be a string or an array of content blocks."
    return None


def _ids() -> dict[str, str]:
    return {"request-id": new_id("req_emu_")}


def _error(status: int, kind: str, message: str, *, should_retry: bool | None = None) -> Response:
    headers = _ids()
    if should_retry is not None:
        headers["x-should-retry"] = "true" if should_retry else "false"
    return JSONResponse(
        error_json(kind, message, headers["request-id"]), status_code=status, headers=headers
    )
