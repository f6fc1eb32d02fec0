"""``kit dev``'s control API: rehearse failures on purpose.

Mounted on the host's port under ``/_kit/`` and guarded by the host's API token (the same
``Authorization: Bearer …`` as ``POST /v1/sessions``). ``kit sandbox …`` and ``kit do …``
are thin clients of it.

=========================================  ==================================================
route                                      does
=========================================  ==================================================
``GET  /_kit/sandboxes``                   running sandboxes: session, sandbox id, tier, pid
``POST /_kit/sandboxes/{session}/kill``    send a signal (``{"signal": "KILL"}``, default KILL)
``POST /_kit/sandboxes/{session}/oom``     push the sandbox past its memory limit now
``POST /_kit/do/{session}/evict``          evict the session's object: in-memory state goes,
                                           storage stays, the next event rebuilds it
=========================================  ==================================================
"""

from __future__ import annotations

import hmac
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kit.host import SessionHost
from kit.host.errors import SandboxError

PREFIX = "/_kit"
Evict = Callable[[str], Awaitable[bool]]


def signal_number(name: str) -> int:
    """``KILL``, ``SIGKILL``, ``kill`` or ``9`` → 9; ``ValueError`` naming the choices."""
    text = name.strip().upper().removeprefix("SIG")
    if text.isdigit():
        number = int(text)
        if number in {s.value for s in signal.Signals}:
            return number
    elif text in signal.Signals.__members__ or f"SIG{text}" in signal.Signals.__members__:
        return int(signal.Signals[f"SIG{text}"])
    raise ValueError(
        f"Unknown signal {name!r}; use a name like KILL, TERM, INT or SEGV, or a number."
    )


def control_routes(host: SessionHost, api_token: str, evict: Evict | None = None) -> list[Route]:
    """The routes of the control API, to mount on the host's app."""

    def refused(request: Request) -> Response | None:
        scheme, _, got = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(got.encode(), api_token.encode()):
            return None
        return JSONResponse(
            {
                "error": "unauthorized",
                "message": "Send Authorization: Bearer <the host's API token>.",
            },
            status_code=401,
        )

    def running(session_id: str) -> Any:
        session = next((s for s in host.live_sessions() if s.id == session_id), None)
        return None if session is None else session.sandbox

    def no_sandbox(session_id: str) -> Response:
        return JSONResponse(
            {
                "error": "no_sandbox",
                "message": f"Session {session_id} has no running sandbox here; "
                "`kit sandbox list` shows the running ones.",
            },
            status_code=404,
        )

    async def sandboxes(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        rows = [
            {
                "session_id": s.id,
                "sandbox_id": s.sandbox.id,
                "tier": s.env.tier,
                "state": s.sandbox.state.value,
                "pid": getattr(s.sandbox, "pid", None),
            }
            for s in host.live_sessions()
            if s.sandbox is not None
        ]
        return JSONResponse({"sandboxes": rows})

    async def kill(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        session_id = request.path_params["session_id"]
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse(
                {"error": "bad_body", "message": 'Send a JSON object, e.g. {"signal": "TERM"}.'},
                status_code=400,
            )
        try:
            number = signal_number(str(body.get("signal", "KILL")))
        except ValueError as exc:
            return JSONResponse({"error": "bad_signal", "message": str(exc)}, status_code=400)
        sandbox = running(session_id)
        if sandbox is None:
            return no_sandbox(session_id)
        await sandbox.kill(number, reason=None)
        return JSONResponse({"sandbox_id": sandbox.id, "signal": number}, status_code=202)

    async def oom(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        session_id = request.path_params["session_id"]
        sandbox = running(session_id)
        if sandbox is None:
            return no_sandbox(session_id)
        try:
            await sandbox.oom()
        except SandboxError as exc:
            return JSONResponse({"error": "cannot_oom", "message": str(exc)}, status_code=409)
        return JSONResponse({"sandbox_id": sandbox.id}, status_code=202)

    async def evict_route(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        session_id = request.path_params["session_id"]
        if evict is None:
            return JSONResponse(
                {"error": "no_objects", "message": "This host does not run on Durable Objects."},
                status_code=409,
            )
        if not await evict(session_id):
            return JSONResponse(
                {
                    "error": "not_loaded",
                    "message": f"Session {session_id} is not loaded on this host.",
                },
                status_code=404,
            )
        return JSONResponse({"session_id": session_id, "evicted": True}, status_code=202)

    return [
        Route(f"{PREFIX}/sandboxes", sandboxes, methods=["GET"]),
        Route(f"{PREFIX}/sandboxes/{{session_id}}/kill", kill, methods=["POST"]),
        Route(f"{PREFIX}/sandboxes/{{session_id}}/oom", oom, methods=["POST"]),
        Route(f"{PREFIX}/do/{{session_id}}/evict", evict_route, methods=["POST"]),
    ]
