"""The host's public face: ``POST /v1/sessions``, the session WebSocket, ``GET /healthz``.

Every HTTP route needs the host's API token (:class:`~kit.host.auth.RequireToken`) except
``/healthz``, which says only whether the host is up, and the chat page's routes where the
host serves the page (:mod:`kit.host.web`: its static files, and in ``kit dev`` and its
Fly rehearsal a session for the host's own loopback page); a session socket authenticates with
its ``hello`` and opens from a browser page only if the :class:`~kit.host.auth.OriginPolicy`
allows the page's origin.

Each WebSocket has one writer task; everything it sends (events, errors, pongs, the
close) goes through one queue in order. Events reach that queue only from
:meth:`Session.emit`, i.e. after they are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping, Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from kit.host.auth import OriginPolicy, RequireToken
from kit.host.edge import SEND_MANY, authenticated
from kit.host.errors import LogError
from kit.host.files import MAX_FILE_BYTES, FileRefused, FilesError
from kit.host.host import SessionHost
from kit.host.lease import LeaseHeld
from kit.host.session import Session
from kit.host.web import WebConfig, public_paths, web_routes
from kit.ids import SessionId, is_session_id
from kit.protocol import errors as e
from kit.protocol.frames import Event
from kit.protocol.server import (
    HandshakeAcked,
    HelloReceived,
    InterruptRequested,
    ServerConnection,
    UserReceived,
)

log = logging.getLogger("kit.host")

HELLO_TIMEOUT_S = 10.0
MAX_QUEUED_FRAMES = 50_000
"""A client this far behind is disconnected (4408) and must resume; the log keeps everything."""
REPLAY_PAGE = 1000
"""Events read from the log at a time while replaying; the next page waits for the socket."""
SEND_BATCH = 256
"""Frames the writer hands the server in one message, where it can take many
(:data:`kit.host.edge.SEND_MANY`): one socket write for them all."""
WS_MAX_BYTES = 1024 * 1024
"""The transport's own limit; frames between MAX_FRAME_BYTES and this get a ``too_large`` error."""


class ClientSocket:
    """One client WebSocket: protocol state, its session, its ordered outbox."""

    def __init__(self, ws: WebSocket, session_id: str) -> None:
        self.ws = ws
        self.conn = ServerConnection(session_id)
        self.session: Session | None = None
        self._outbox: deque[str] = deque()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._send_many = SEND_MANY in ws.scope.get("extensions", {})

    # Subscriber
    def deliver(self, event: Event) -> None:
        if self._close is not None:
            return
        if len(self._outbox) > MAX_QUEUED_FRAMES:
            self.shutdown(
                e.SLOW_CONSUMER,
                "Too far behind; reconnect and resume with last_seq.",
                e.CLOSE_SLOW_CONSUMER,
            )
            return
        self.conn.send_event(event, replay=False)
        self.flush()

    @property
    def closing(self) -> bool:
        """Whether this connection is being closed."""
        return self._close is not None or self.conn.close_code is not None

    def moved(self, message: str) -> None:
        self.shutdown(
            e.SESSION_ELSEWHERE,
            f"{message}; reconnect and resume.",
            e.CLOSE_SESSION_ELSEWHERE,
        )

    async def drained(self, writer: asyncio.Task[None]) -> None:
        """Wait until everything queued has been sent (or the connection ended)."""
        while self._outbox and not writer.done():
            self._drained.clear()
            waiter = asyncio.ensure_future(self._drained.wait())
            await asyncio.wait({waiter, writer}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    def flush(self) -> None:
        """Move the protocol's pending frames (and close) to the writer."""
        self._outbox.extend(self.conn.data_to_send())
        if self.conn.close_code is not None and self._close is None:
            self._close = (self.conn.close_code, self.conn.close_reason)
        self._ready.set()

    def shutdown(self, code: str, message: str, close_code: int) -> None:
        """Close with an error frame (server shutdown, slow consumer)."""
        if self._close is None:
            self.conn.close(code, message, close_code)
            self.flush()

    async def writer(self) -> None:
        """Send queued frames in order; close when asked."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._outbox:
                if self._send_many and len(self._outbox) > 1:
                    count = min(len(self._outbox), SEND_BATCH)
                    batch = [self._outbox.popleft() for _ in range(count)]
                    await self.ws.send({"type": "websocket.send", SEND_MANY: batch})
                else:
                    await self.ws.send_text(self._outbox.popleft())
            self._drained.set()
            if self._close is not None:
                code, reason = self._close
                await self.ws.close(code, reason[:120])
                return


PUBLIC_PATHS = ("/healthz",)
"""HTTP paths answered without the API token: ``/healthz`` says only ``{"ok": bool}``."""


def create_app(
    host: SessionHost,
    *,
    api_token: str,
    origins: OriginPolicy | None = None,
    hello_timeout_s: float = HELLO_TIMEOUT_S,
    replay_to_owner: bool = False,
    web: WebConfig | None = None,
    extra_public: Sequence[str] = (),
) -> Starlette:
    """The host's ASGI app: every HTTP route but ``/healthz`` needs ``Bearer api_token``;
    session sockets open from browser pages of ``origins`` only (default: the page's
    ``Origin`` must name the host it connects to). With ``replay_to_owner`` (gateways
    behind Fly's proxy), a session socket that reaches a host while another live host holds
    the session's lease is not accepted: it is answered 409 with ``fly-replay:
    instance=<owner>``, and Fly's proxy replays the upgrade to the owner. With ``web``, the
    chat page is served at ``/`` (:mod:`kit.host.web`), its files without the token.
    ``extra_public``: more paths answered without the token, for routes the caller mounts
    that authenticate on their own (the Fly gateway's signed mail webhooks)."""
    connections: set[ClientSocket] = set()
    policy = origins or OriginPolicy()
    public = (*PUBLIC_PATHS, *(public_paths(web) if web is not None else ()), *extra_public)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": not host.closing})

    async def create_session(request: Request) -> Response:
        if host.closing:
            return JSONResponse(
                {"error": e.SHUTTING_DOWN, "message": "The host is shutting down."}, status_code=503
            )
        new = await host.create_session()
        scheme = "wss" if _reached_over_tls(request) else "ws"
        ws_url = f"{scheme}://{request.url.netloc}/v1/sessions/{new.session_id}/ws"
        return JSONResponse(
            {"session_id": new.session_id, "token": new.token, "ws_url": ws_url}, status_code=201
        )

    async def put_file(request: Request) -> Response:
        files, session_id = host.env.files, request.path_params["session_id"]
        refused = await _files_refusal(host, session_id)
        if refused is not None:
            return refused
        assert files is not None
        body = await _bounded_body(request, MAX_FILE_BYTES)
        if body is None:
            return _error(413, "too_large", f"A file may have at most {MAX_FILE_BYTES} bytes.")
        try:
            await files.put(SessionId(session_id), request.path_params["path"], body)
        except FileRefused as exc:
            return _error(exc.status, "refused", str(exc))
        except FilesError as exc:
            return _error(503, "unavailable", f"The session's files are out of reach: {exc}")
        return Response(status_code=204)

    async def list_files(request: Request) -> Response:
        files, session_id = host.env.files, request.path_params["session_id"]
        refused = await _files_refusal(host, session_id)
        if refused is not None:
            return refused
        assert files is not None
        try:
            listed = await files.list(SessionId(session_id))
        except FilesError as exc:
            return _error(503, "unavailable", f"The session's files are out of reach: {exc}")
        return JSONResponse({"files": [info.json() for info in listed]})

    async def session_ws(ws: WebSocket) -> None:
        session_id = ws.path_params["session_id"]
        origin = ws.headers.get("origin")
        if not policy.allows(origin, ws.headers.get("host")):
            await _refuse_origin(ws, origin or "")
            return
        if replay_to_owner and await _replayed(host, ws, session_id):
            return
        await ws.accept()
        client = ClientSocket(ws, session_id)
        connections.add(client)
        writer = asyncio.create_task(client.writer())
        try:
            await _read_loop(host, client, writer, hello_timeout_s)
        except Exception:
            log.exception("session %s: connection failed", session_id)
            client.shutdown(
                e.INTERNAL,
                "The host failed on this connection; reconnect and resume.",
                e.CLOSE_INTERNAL,
            )
        finally:
            connections.discard(client)
            if client.session is not None:
                client.session.detach(client)
            if not writer.done():
                client.shutdown(e.SHUTTING_DOWN, "Connection ended.", e.CLOSE_NORMAL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer, 5)
            writer.cancel()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/v1/sessions", create_session, methods=["POST"]),
            WebSocketRoute("/v1/sessions/{session_id}/ws", session_ws),
            Route("/v1/sessions/{session_id}/files", list_files, methods=["GET"]),
            Route("/v1/sessions/{session_id}/files/{path:path}", put_file, methods=["PUT"]),
            *(web_routes(web, policy, create_session) if web is not None else ()),
        ],
        middleware=[Middleware(RequireToken, token=api_token, public=public)],
    )

    def close_all() -> None:
        for client in list(connections):
            client.shutdown(
                e.SHUTTING_DOWN,
                "The host is shutting down; reconnect and resume.",
                e.CLOSE_GOING_AWAY,
            )

    app.state.close_all_connections = close_all
    app.state.connections = connections
    return app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _files_refusal(host: SessionHost, session_id: str) -> JSONResponse | None:
    """Why a files route cannot serve ``session_id`` here (None: it can)."""
    if host.env.files is None:
        return _error(404, "not_found", "This host keeps no session files.")
    try:
        known = is_session_id(session_id) and await host.logs.summary(SessionId(session_id))
    except LogError as exc:
        return _error(503, "unavailable", f"The session log is out of reach: {exc}")
    if not known:
        return _error(404, e.UNKNOWN_SESSION, f"No session {session_id[:80]!r}.")
    return None


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None once it passes ``limit`` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def replay_owner(
    host: SessionHost, headers: Mapping[str, str], session_id: str
) -> str | None:
    """The live host that holds the session's lease, when it is another and a request for the
    session should be replayed there; None to serve it here. A store that cannot tell (an
    outage), or a replay that already failed (the owner is gone but its lease has not run
    out: Fly's proxy fell back here), serves it here."""
    if "fly-replay-failed" in headers:
        return None
    try:
        return await host.logs.owner_elsewhere(SessionId(session_id))
    except LogError:
        return None


def replay_answer(session_id: str, owner: str) -> JSONResponse:
    """409 ``session_elsewhere`` with ``fly-replay: instance=<owner>``: Fly's proxy replays
    the request there (falling back here should the owner be gone)."""
    message = f"Session {session_id} is served by {owner}; Fly's proxy replays there."
    return JSONResponse(
        {"error": e.SESSION_ELSEWHERE, "message": message},
        status_code=409,
        headers={"fly-replay": f"instance={owner};fallback=prefer_self"},
    )


async def _replayed(host: SessionHost, ws: WebSocket, session_id: str) -> bool:
    """Answer with ``fly-replay`` when another live host holds the session; whether it did.
    Where it cannot (see :func:`replay_owner`) the socket comes in: its hello then says the
    session is elsewhere, and the client retries."""
    if "websocket.http.response" not in ws.scope.get("extensions", {}):
        return False
    owner = await replay_owner(host, ws.headers, session_id)
    if owner is None:
        return False
    await ws.send_denial_response(replay_answer(session_id, owner))
    return True


async def _refuse_origin(ws: WebSocket, origin: str) -> None:
    """Answer an upgrade from a page of a foreign origin with 403 and a JSON reason."""
    message = (
        f"Origin {origin[:200]!r} may not open session sockets on this host; list it in "
        "KIT_ALLOWED_ORIGINS (scheme://host[:port]), or serve the page from this host."
    )
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(
            JSONResponse({"error": e.FORBIDDEN_ORIGIN, "message": message}, status_code=403)
        )
    else:
        await ws.close(e.CLOSE_POLICY)


async def _read_loop(
    host: SessionHost, client: ClientSocket, writer: asyncio.Task[None], hello_timeout_s: float
) -> None:
    conn, ws = client.conn, client.ws
    hello_deadline = asyncio.get_running_loop().time() + hello_timeout_s
    while not writer.done():
        # One deadline per connection: frames other than hello do not extend it.
        timeout = None
        if client.session is None:
            timeout = max(0.0, hello_deadline - asyncio.get_running_loop().time())
        receive = asyncio.ensure_future(ws.receive())
        done, _ = await asyncio.wait(
            {receive, writer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if receive not in done:
            receive.cancel()
            if not writer.done():  # no hello in time
                client.shutdown(
                    e.HELLO_REQUIRED,
                    f"No hello within {hello_timeout_s:g} seconds.",
                    e.CLOSE_BAD_REQUEST,
                )
                continue
            return
        message = receive.result()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            conn.send_error(e.BAD_FRAME, "Send frames as WebSocket text messages holding JSON.")
            client.flush()
            continue
        for item in conn.receive_text(text):
            if isinstance(item, HelloReceived):
                await _hello(host, client, item)
            elif isinstance(item, HandshakeAcked):
                await _replay(client, conn.last_seq_claimed or 0, writer)
            elif isinstance(item, UserReceived):
                assert client.session is not None
                await client.session.submit(item.client_msg_id, item.text)
            elif isinstance(item, InterruptRequested):
                assert client.session is not None
                await _interrupt(client, client.session)
        client.flush()


async def _interrupt(client: ClientSocket, session: Session) -> None:
    """Stop the running turn and answer the requesting socket with ``interrupt_ack``.

    The ack names the oldest open turn (the one the session runs, or runs next) and
    whether the stop reached a sandbox running it; a turn that is queued, or whose
    sandbox is starting or restarting, is open but not interrupted (docs/protocol.md §3).
    """
    open_before = await session.log.open_turns()
    interrupted = await session.interrupt()
    # A turn can start between the two calls: then name the one that was stopped.
    turns = open_before or (await session.log.open_turns() if interrupted else [])
    if not client.closing:
        client.conn.acknowledge_interrupt(turns[0].turn_id if turns else None, interrupted)


async def _hello(host: SessionHost, client: ClientSocket, hello: HelloReceived) -> None:
    conn = client.conn
    if host.closing:
        conn.reject(
            e.SHUTTING_DOWN, "The host is shutting down; reconnect shortly.", e.CLOSE_GOING_AWAY
        )
        return
    # The token is checked before the session is loaded: a wrong one takes no lease.
    authorized = await host.authorize(conn.session_id, hello.token)
    if authorized is None:
        conn.reject(
            e.UNKNOWN_SESSION,
            "No session has this id; create one with POST /v1/sessions.",
            e.CLOSE_UNKNOWN_SESSION,
        )
        return
    if not authorized:
        conn.reject(e.UNAUTHORIZED, "Wrong session token.", e.CLOSE_UNAUTHORIZED)
        return
    for _ in range(3):  # a session being unloaded right now is loaded afresh
        try:
            session = await host.get(conn.session_id)
        except LeaseHeld as exc:
            conn.reject(e.SESSION_ELSEWHERE, str(exc), e.CLOSE_SESSION_ELSEWHERE)
            return
        if session is None:
            conn.reject(
                e.SHUTTING_DOWN, "The host is shutting down; reconnect shortly.", e.CLOSE_GOING_AWAY
            )
            return
        async with session.quiet():
            if session.lost is not None:
                conn.reject(
                    e.SESSION_ELSEWHERE,
                    f"This host no longer owns the session: {session.lost}.",
                    e.CLOSE_SESSION_ELSEWHERE,
                )
                return
            if session.closed:
                continue
            mode = await session.resume_mode(hello.last_seq)
            conn.accept(mode, session.log.last_seq)
            if conn.close_code is not None:
                return
            authenticated(client.ws.scope)
            client.session = session
            if mode == "none":
                session.subscribe(client)
            else:
                session.expect(client)
        session.start()  # a runner that stopped (the log failed) recovers its open turns
        return
    conn.reject(e.SHUTTING_DOWN, "The session is being moved; reconnect.", e.CLOSE_GOING_AWAY)


async def _replay(client: ClientSocket, after_seq: int, writer: asyncio.Task[None]) -> None:
    """Send every event after ``after_seq`` flagged ``replay``, then go live.

    Pages are read while the session runs on and each waits for the socket to drain; the
    last page is read, and the client subscribed, with commits held off.
    """
    session, conn = client.session, client.conn
    assert session is not None
    cursor = after_seq
    for _ in range(max(0, session.log.last_seq - after_seq) // REPLAY_PAGE + 1):
        if client.closing:
            return  # sent away meanwhile (the session moved, the host is stopping)
        page = await session.log.read_after(cursor, REPLAY_PAGE)
        if len(page) < REPLAY_PAGE:
            break
        for event in page:
            conn.send_event(event, replay=True)
        client.flush()
        cursor = page[-1].seq
        await client.drained(writer)
        if writer.done():
            return
    async with session.quiet():
        if client.closing:
            return
        if session.closed or session.lost:  # unloaded or handed over while the client acked
            client.shutdown(
                e.SESSION_ELSEWHERE,
                session.lost or "The session was unloaded; reconnect and resume.",
                e.CLOSE_SESSION_ELSEWHERE if session.lost else e.CLOSE_GOING_AWAY,
            )
            return
        for event in await session.log.read_after(cursor):
            conn.send_event(event, replay=True)
        session.subscribe(client)
        conn.go_live()


def _reached_over_tls(request: Request) -> bool:
    """Whether the client reached the host over TLS: directly, or through a proxy that ends
    TLS and says so in ``X-Forwarded-Proto`` (Fly's proxy; uvicorn trusts the header only
    from loopback peers, and Fly's proxy is not one). A client that claims https falsely
    only gets a ``wss://`` URL it cannot use itself."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"
