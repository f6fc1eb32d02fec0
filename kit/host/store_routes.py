"""The host's side of :mod:`kit.storage.remote`: ``POST <prefix>/<method>`` for each
``SessionStore`` method, forwarded to the host's own store.

Each call carries a sandbox's session token (``Bearer``; the model proxy issued it, and
:meth:`kit.host.proxy.ModelProxy.session_for` names its session). Every key must be that
session's (``session_id``); ``list_sessions`` and ``list_session_summaries`` answer only
that session. Refusals: 401 (no or dead token), 403 (another session's key), 400 (a body
that is not the method's shape), 413 (over :data:`MAX_BODY_BYTES`), 503 when the host's
store is out (the sandbox's store retries).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kit.ids import SessionId
from kit.storage.errors import StoreError, StoreUnavailable

log = logging.getLogger("kit.host.store")

MAX_BODY_BYTES = 16 * 1024 * 1024
METHODS = ("append", "load", "list_sessions", "list_session_summaries", "list_subkeys", "delete")

SessionFor = Callable[[bytes], SessionId | None]


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": "refused", "message": message}, status_code=status)


def store_routes(prefix: str, store: Any, session_for: SessionFor) -> list[Route]:
    """The routes at ``prefix`` (e.g. ``/_kit/store``) serving ``store`` to sandboxes."""

    async def handle(request: Request) -> Response:
        method = request.path_params["method"]
        if method not in METHODS:
            return _refuse(404, f"no store method {method!r}")
        auth = request.headers.get("authorization", "")
        session = session_for(auth.removeprefix("Bearer ").encode()) if auth else None
        if session is None:
            return _refuse(401, "a live session token is required")
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_BODY_BYTES:
            return _refuse(413, f"a store call is at most {MAX_BODY_BYTES} bytes")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _refuse(413, f"a store call is at most {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            return _refuse(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _refuse(400, "the body is not a JSON object")
        try:
            result = await _call(store, method, body, session)
        except PermissionError as exc:
            return _refuse(403, str(exc))
        except (TypeError, KeyError, ValueError) as exc:
            return _refuse(400, f"bad {method} call: {exc}")
        except StoreUnavailable as exc:
            return _refuse(503, str(exc))
        except StoreError as exc:
            log.warning("store %s for session %s failed: %s", method, session, exc)
            return _refuse(502, str(exc))
        return JSONResponse({"result": result})

    return [Route(f"{prefix}/{{method}}", handle, methods=["POST"])]


def _key(body: dict[str, Any], session: SessionId, *, subpath: bool = True) -> dict[str, Any]:
    key = body["key"]
    if not isinstance(key, dict) or not isinstance(key.get("project_key"), str):
        raise ValueError("key must be an object with a project_key")
    if key.get("session_id") != session:
        raise PermissionError("a sandbox may touch only its own session's transcript")
    clean = {"project_key": key["project_key"], "session_id": key["session_id"]}
    if subpath and isinstance(key.get("subpath"), str) and key["subpath"]:
        clean["subpath"] = key["subpath"]
    return clean


async def _call(store: Any, method: str, body: dict[str, Any], session: SessionId) -> Any:
    if method == "append":
        entries = body["entries"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("entries must be a list of objects")
        await store.append(_key(body, session), entries)
        return None
    if method == "load":
        return await store.load(_key(body, session))
    if method == "delete":
        await store.delete(_key(body, session))
        return None
    if method == "list_subkeys":
        return await store.list_subkeys(_key(body, session, subpath=False))
    project_key = body["project_key"]
    if not isinstance(project_key, str):
        raise ValueError("project_key must be a string")
    found = await getattr(store, method)(project_key)
    return [item for item in found if item.get("session_id") == session]
