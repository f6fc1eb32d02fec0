"""The host's side of :mod:`kit.storage.remote`: ``POST <prefix>/<method>`` for each
``SessionStore`` method, forwarded to the host's own store.

Each call carries a sandbox's store token (``Bearer``; the gateway issues one per sandbox,
``kit-store-…``, held by its runtime alone, and ``session_for`` names its session). Every key must be that
session's (``session_id``); ``list_sessions`` and ``list_session_summaries`` answer only
that session. Keys are held to the one project key sandboxes use (:data:`PROJECT_KEY`) and to plain
subpaths. Refusals: 401 (no or dead token), 403 (another session's or project's key), 400
(a body that is not the method's shape), 413 (over :data:`MAX_BODY_BYTES`, counted as it
streams), 408 (a body slower than :data:`BODY_TIMEOUT_S`), 503 when the host's store is out
(the sandbox's store retries), 422 for any other store error (reported at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kit.ids import SessionId
from kit.storage.errors import StoreError, StoreUnavailable

log = logging.getLogger("kit.host.store")

MAX_BODY_BYTES = 16 * 1024 * 1024
BODY_TIMEOUT_S = 30.0
PROJECT_KEY = "kit"
"""The one project key sandboxes file transcripts under (:mod:`kit.storage.portable`)."""
SUBPATH = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")
"""A subagent transcript's subpath: plain names, no empty, ``.`` or ``..`` segment."""
METHODS = ("append", "load", "list_sessions", "list_session_summaries", "list_subkeys", "delete")

SessionFor = Callable[[bytes], SessionId | None]


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": "refused", "message": message}, status_code=status)


def store_routes(
    prefix: str, store: Any, session_for: SessionFor, *, project_key: str | None = PROJECT_KEY
) -> list[Route]:
    """The routes at ``prefix`` (e.g. ``/_kit/store``) serving ``store`` to sandboxes, every
    key held to ``project_key`` (None: any, for the SDK's contract suite)."""

    async def handle(request: Request) -> Response:
        method = request.path_params["method"]
        if method not in METHODS:
            return _refuse(404, f"no store method {method!r}")
        auth = request.headers.get("authorization", "")
        session = session_for(auth.removeprefix("Bearer ").encode()) if auth else None
        if session is None:
            return _refuse(401, "a live session token is required")
        try:
            raw = await _body(request)
        except ValueError as exc:
            return _refuse(413, str(exc))
        except TimeoutError:
            return _refuse(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s")
        try:
            body = json.loads(raw)
        except ValueError:
            return _refuse(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _refuse(400, "the body is not a JSON object")
        try:
            result = await _call(store, method, body, session, project_key)
        except PermissionError as exc:
            return _refuse(403, str(exc))
        except (TypeError, KeyError, ValueError) as exc:
            return _refuse(400, f"bad {method} call: {exc}")
        except StoreUnavailable as exc:
            return _refuse(503, str(exc))  # an outage: the sandbox's store retries
        except StoreError as exc:  # not an outage: the sandbox's SDK reports it at once
            log.warning("store %s for session %s failed: %s", method, session, exc)
            return _refuse(422, str(exc))
        return JSONResponse({"result": result})

    return [Route(f"{prefix}/{{method}}", handle, methods=["POST"])]


async def _body(request: Request) -> bytes:
    """The body, read as it streams: ValueError past :data:`MAX_BODY_BYTES` (whatever
    Content-Length said), TimeoutError past :data:`BODY_TIMEOUT_S`."""
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        raise ValueError(f"a store call is at most {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(BODY_TIMEOUT_S):
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ValueError(f"a store call is at most {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _project(value: object, wanted: str | None) -> str:
    if not isinstance(value, str) or (wanted is not None and value != wanted):
        raise PermissionError(f"transcripts are filed under project_key {wanted!r} only")
    return value


def _key(
    body: dict[str, Any], session: SessionId, wanted: str | None, *, subpath: bool = True
) -> dict[str, Any]:
    key = body["key"]
    if not isinstance(key, dict):
        raise ValueError("key must be an object")
    if key.get("session_id") != session:
        raise PermissionError("a sandbox may touch only its own session's transcript")
    clean = {
        "project_key": _project(key.get("project_key"), wanted),
        "session_id": key["session_id"],
    }
    sub = key.get("subpath")
    if subpath and sub:
        if not isinstance(sub, str) or not SUBPATH.fullmatch(sub):
            raise ValueError("subpath must be plain names joined by /")
        clean["subpath"] = sub
    return clean


async def _call(
    store: Any, method: str, body: dict[str, Any], session: SessionId, wanted: str | None
) -> Any:
    if method == "append":
        entries = body["entries"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("entries must be a list of objects")
        await store.append(_key(body, session, wanted), entries)
        return None
    if method == "load":
        return await store.load(_key(body, session, wanted))
    if method == "delete":
        await store.delete(_key(body, session, wanted))
        return None
    if method == "list_subkeys":
        return await store.list_subkeys(_key(body, session, wanted, subpath=False))
    project_key = _project(body["project_key"], wanted)
    found = await getattr(store, method)(project_key)
    return [item for item in found if item.get("session_id") == session]
