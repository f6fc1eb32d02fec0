"""``kit dev``'s control API: look at sessions, and rehearse failures on purpose.

Mounted on the host's port under ``/_kit/`` and guarded by the host's API token (the same
``Authorization: Bearer …`` as ``POST /v1/sessions``). ``kit sessions``, ``kit logs``,
``kit sandbox …`` and ``kit do …`` are thin clients of it. Errors are JSON
``{"error": code, "message": sentence}``; a malformed session id is 400, an unknown one 404.

=========================================  ==================================================
route                                      does
=========================================  ==================================================
``GET  /_kit/sessions``                    every session in the log store, loaded or not:
                                           created, last event, turns, sandbox state
``GET  /_kit/sessions/{session}/events``   NDJSON, one event a line, then one ``{"end":
                                           reason, "message"}`` line. ``?after=SEQ`` (default
                                           0); ``?follow=1`` streams live events too, until
                                           the host stops or the session leaves it
``GET  /_kit/sandboxes``                   running sandboxes: session, sandbox id, tier, pid,
                                            pooled (started ahead; session null: a spare)
``POST /_kit/sandboxes/{session}/kill``    send a signal (``{"signal": "KILL"}``, default KILL)
``POST /_kit/sandboxes/{session}/oom``     push the sandbox past its memory limit now
``POST /_kit/do/{session}/evict``          evict the session's object: in-memory state goes,
                                           storage stays, the next event rebuilds it
                                           (``{"evicted": false}``: nothing was in memory)
=========================================  ==================================================

A gateway of a Fly deployment mounts it too (so ``kit sessions``, ``kit logs`` and ``kit
sandbox …`` work against the rehearsal and a real deploy): sandboxes are listed from the
sandbox app's machines, whichever gateway runs them (a stopped machine shows as a spare);
``kill``, ``oom`` and ``follow`` for a session another gateway holds are answered 409 with
``fly-replay: instance=<owner>``, which Fly's proxy replays there. ``evict`` has no object
to evict (409).

The Cloudflare shim serves the same routes, JSON and NDJSON (``worker_shim/src/control.ts``),
so the same commands work against ``kit dev --target cloudflare`` and a deploy.

Listing and reading (without ``follow``) go through :meth:`LogStore.summary` and
:meth:`LogStore.read_events`: no session is loaded and no lease taken. Following loads the
session, as a client's ``hello`` does (:mod:`kit.cli.follow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kit.cli.errors import CliError
from kit.cli.follow import End, end_line, event_line, follow
from kit.host import LogError, Release, Sandbox, SandboxState, Session, SessionHost
from kit.host.app import replay_answer, replay_owner
from kit.host.auth import bearer_matches, unauthorized
from kit.host.errors import SandboxError
from kit.host.eventlog import LogSummary
from kit.host.fly_sandbox import FleetMachine
from kit.host.sandbox import Rehearsable
from kit.ids import SessionId, is_session_id
from kit.protocol.frames import Event

PREFIX = "/_kit"
Evict = Callable[[str], Awaitable[bool]]
"""Evicts a session's object; whether anything of it was in memory."""
Fleet = Callable[[], Awaitable[list[FleetMachine]]]
"""Every sandbox of a deployment, whichever gateway runs it (a Fly gateway's machines)."""
SUMMARY_CONCURRENCY = 16
"""Summaries read at once (each is a few reads of one session's storage)."""


class NDJSONResponse(StreamingResponse):
    """A stream that ends as soon as the client goes away, whatever the ASGI version: a
    follower waiting for the next event sends nothing that could notice it."""

    media_type = "application/x-ndjson"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await stream
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # the follower's ``finally`` detaches it now, not at GC


FLEET_STATES = {"started": "running", "created": "starting", "starting": "starting"}
"""A sandbox machine's state as ``kit sessions`` shows it (any other: ``none``)."""


def sandbox_state(
    summary: LogSummary, session: Session | None, machine: FleetMachine | None = None
) -> str:
    """``running``, ``starting`` or ``none``: what runs for the session on this host, or
    (``machine``: its sandbox machine, found in the deployment's fleet) on another.

    A session not loaded here has no sandbox here, whatever its log last said.
    """
    if session is None:
        return "none" if machine is None else FLEET_STATES.get(machine.state, "none")
    sandbox = session.sandbox
    if sandbox is not None and sandbox.state is not SandboxState.EXITED:
        return str(sandbox.state.value)
    # Between "starting" (committed first) and the provider's answer, the log knows.
    return "starting" if summary.sandbox == "starting" else "none"


def session_row(
    summary: LogSummary, session: Session | None, machine: FleetMachine | None = None
) -> dict[str, Any]:
    """One row of ``GET /_kit/sessions``."""
    return {
        "session_id": summary.session_id,
        "created_ms": summary.created_ms,
        "last_seq": summary.last_seq,
        "last_kind": summary.last_kind,
        "last_ts": summary.last_ts,
        "turns": summary.turns,
        "open_turns": summary.open_turns,
        "sandbox": sandbox_state(summary, session, machine),
        "loaded": session is not None,
    }


def signal_number(name: str) -> int:
    """``KILL``, ``SIGKILL``, ``kill`` or ``9`` → 9; :class:`CliError` naming the choices."""
    text = name.strip().upper().removeprefix("SIG")
    if text.isascii() and text.isdigit():  # int('²') raises
        number = int(text)
        if number in {s.value for s in signal.Signals}:
            return number
    elif f"SIG{text}" in signal.Signals.__members__:
        return int(signal.Signals[f"SIG{text}"])
    raise CliError(
        f"Unknown signal {name!r}; use a name like KILL, TERM, INT or SEGV, or a number."
    )


def _error(code: str, message: str, status: int) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _bad_id(session_id: str) -> Response | None:
    if is_session_id(session_id):
        return None
    return _error(
        "bad_session_id",
        f"{session_id!r} is not a session id (a lowercase UUID); `kit sessions` lists them.",
        400,
    )


def _unknown(session_id: str) -> Response:
    return _error(
        "unknown_session",
        f"No session {session_id} in this host's log store; `kit sessions` lists them.",
        404,
    )


def control_routes(
    host: SessionHost,
    api_token: str,
    evict: Evict | None = None,
    connections: set[Any] | None = None,
    *,
    fleet: Fleet | None = None,
    replay: bool = False,
) -> list[Route]:
    """The routes of the control API, to mount on the host's app.

    ``connections`` is the app's set of client connections (``app.state.connections``):
    followers join it, so the host's shutdown and evictions reach them as they reach
    sockets. On a gateway of several (Fly): ``fleet`` lists every sandbox of the
    deployment, and with ``replay`` a request about a session another live gateway holds
    (kill, oom, follow) is answered ``fly-replay`` to it, as its sockets are.
    """
    attached: set[Any] = set() if connections is None else connections

    def refused(request: Request) -> Response | None:
        # The host's middleware checks too; these routes may be mounted on other apps.
        if bearer_matches(request.headers.get("authorization", ""), api_token):
            return None
        return unauthorized()

    def running(session_id: str) -> Any:
        session = next((s for s in host.live_sessions() if s.id == session_id), None)
        return None if session is None else session.sandbox

    def no_sandbox(session_id: str, request: Request | None = None) -> Response:
        session = next((s for s in host.live_sessions() if s.id == session_id), None)
        if session is not None and session.starting:
            return _error(
                "sandbox_starting",
                f"Session {session_id}'s sandbox is starting; try again once `kit sandbox "
                "list` shows it running.",
                409,
            )
        if replay and request is not None and "fly-replay-failed" in request.headers:
            return _error(
                "owner_gone",
                f"The gateway holding session {session_id} did not answer; once its lease "
                "runs out another gateway takes the session (and its reaper stops the "
                "orphaned machine). Try again in a few seconds.",
                503,
            )
        return JSONResponse(
            {
                "error": "no_sandbox",
                "message": f"Session {session_id} has no running sandbox here; "
                "`kit sandbox list` shows the running ones.",
            },
            status_code=404,
        )

    async def elsewhere(request: Request, session_id: str) -> Response | None:
        """The ``fly-replay`` answer when another live gateway holds the session."""
        if not replay or not is_session_id(session_id):
            return None
        if any(s.id == session_id for s in host.live_sessions()):
            return None
        owner = await replay_owner(host, request.headers, session_id)
        return None if owner is None else replay_answer(session_id, owner)

    async def fleet_rows() -> list[dict[str, Any]] | Response:
        assert fleet is not None
        try:
            machines = await fleet()
        except SandboxError as exc:
            return _error("fleet_unreadable", str(exc), 503)
        return [
            {
                "session_id": m.session_id,
                "sandbox_id": m.machine_id,
                "tier": m.tier,
                "state": m.state,
                "pid": None,
                "pooled": m.session_id is None,
                "host": m.host_id,
            }
            for m in machines
        ]

    async def sandboxes(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        if fleet is not None:
            rows = await fleet_rows()
            return rows if isinstance(rows, Response) else JSONResponse({"sandboxes": rows})
        held: list[tuple[SessionId | None, Sandbox | None, Release | None, bool]] = [
            (s.id, s.sandbox, s.release, False) for s in host.live_sessions()
        ]
        if host.pool is not None:
            held += [(sid, ls.sandbox, ls.release, True) for sid, ls in host.pool.sandboxes()]
        rows = [
            {
                "session_id": session_id,
                "sandbox_id": sandbox.id,
                "tier": release.tier,
                "state": sandbox.state.value,
                "pid": getattr(sandbox, "pid", None),
                "pooled": pooled,
            }
            for session_id, sandbox, release, pooled in held
            if sandbox is not None and release is not None
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
        except CliError as exc:
            return JSONResponse({"error": "bad_signal", "message": str(exc)}, status_code=400)
        if (there := await elsewhere(request, session_id)) is not None:
            return there
        sandbox = running(session_id)
        if sandbox is None:
            return no_sandbox(session_id, request)
        try:
            await sandbox.kill(number, reason=None)
        except SandboxError as exc:
            return _error("sandbox_unreachable", str(exc), 503)
        return JSONResponse({"sandbox_id": sandbox.id, "signal": number}, status_code=202)

    async def oom(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        session_id = request.path_params["session_id"]
        if (there := await elsewhere(request, session_id)) is not None:
            return there
        sandbox = running(session_id)
        if sandbox is None:
            return no_sandbox(session_id, request)
        sandbox_id = sandbox.id
        if not isinstance(sandbox, Rehearsable):
            return JSONResponse(
                {
                    "error": "cannot_oom",
                    "message": f"Sandbox {sandbox_id} cannot rehearse an OOM kill (its provider "
                    "has no such hook).",
                },
                status_code=409,
            )
        try:
            await sandbox.oom()
        except SandboxError as exc:
            return JSONResponse({"error": "cannot_oom", "message": str(exc)}, status_code=409)
        return JSONResponse({"sandbox_id": sandbox_id}, status_code=202)

    async def evict_route(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        session_id = request.path_params["session_id"]
        if (bad := _bad_id(session_id)) is not None:
            return bad
        if evict is None:
            return _error(
                "no_objects",
                "This host keeps its logs outside Durable Objects (KIT_LOG_URL); there is "
                "no object to evict.",
                409,
            )
        if SessionId(session_id) not in await host.session_ids():  # wakes no object
            return _unknown(session_id)
        evicted = await evict(session_id)
        return JSONResponse({"session_id": session_id, "evicted": evicted})

    async def sessions(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        loaded = {s.id: s for s in host.live_sessions()}
        machines: dict[str, FleetMachine] = {}
        if fleet is not None:
            with contextlib.suppress(SandboxError):  # the column then says what runs here
                machines = {m.session_id: m for m in await fleet() if m.session_id}
        gate = asyncio.Semaphore(SUMMARY_CONCURRENCY)

        async def row(session_id: SessionId) -> dict[str, Any] | None:
            async with gate:
                try:
                    summary = await host.logs.summary(session_id)
                except LogError as exc:  # one damaged log must not hide the others
                    return {"session_id": session_id, "error": str(exc)}
            if summary is None:
                return None
            return session_row(summary, loaded.get(session_id), machines.get(session_id))

        rows = [r for r in await asyncio.gather(*map(row, await host.session_ids())) if r]
        rows.sort(key=lambda r: r.get("last_ts") or r.get("created_ms") or 0, reverse=True)
        return JSONResponse({"sessions": rows})

    async def events(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        session_id = request.path_params["session_id"]
        if (bad := _bad_id(session_id)) is not None:
            return bad
        sid = SessionId(session_id)
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            after = -1
        if after < 0:
            return _error("bad_after", "Give ?after= a seq: a whole number, 0 or more.", 400)
        try:
            if request.query_params.get("follow", "") not in ("1", "true"):
                stored = await host.logs.read_events(sid, after)
                if stored is None:
                    return _unknown(session_id)
                return NDJSONResponse(_stored_lines(stored))
            if await host.logs.read_meta(sid) is None:
                return _unknown(session_id)
            if (there := await elsewhere(request, session_id)) is not None:
                return there
        except LogError as exc:
            return _error("log_unreadable", str(exc), 500)
        return NDJSONResponse(_followed_lines(follow(host, sid, after, attached)))

    return [
        Route(f"{PREFIX}/sessions", sessions, methods=["GET"]),
        Route(f"{PREFIX}/sessions/{{session_id}}/events", events, methods=["GET"]),
        Route(f"{PREFIX}/sandboxes", sandboxes, methods=["GET"]),
        Route(f"{PREFIX}/sandboxes/{{session_id}}/kill", kill, methods=["POST"]),
        Route(f"{PREFIX}/sandboxes/{{session_id}}/oom", oom, methods=["POST"]),
        Route(f"{PREFIX}/do/{{session_id}}/evict", evict_route, methods=["POST"]),
    ]


async def _stored_lines(events: list[Event]) -> AsyncIterator[bytes]:
    for event in events:
        yield event_line(event)
    yield end_line(End("done", f"{len(events)} event(s)."))


async def _followed_lines(items: AsyncGenerator[Event | End, None]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(items):  # closed with this stream: the follower detaches
        try:
            async for item in items:
                yield end_line(item) if isinstance(item, End) else event_line(item)
        except LogError as exc:
            yield end_line(End("error", str(exc)))
