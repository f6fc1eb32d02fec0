"""A session client that reconnects and resumes on its own.

::

    info = await create_session("http://127.0.0.1:8787", api_token)
    async with SessionClient(info.ws_url, info.token) as client:
        async for event in client.turn("Where is my order 1042?"):
            print(event.kind, event.data)

The client remembers the last ``seq`` it saw. When the socket drops (host restart, network,
``1001``) it reconnects with that ``seq``, so it gets exactly the events it missed, once;
user messages not yet confirmed by their ``user`` event are sent again with the same
``client_msg_id``, which the host applies at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

import httpx
import websockets
from websockets.asyncio.client import ClientConnection as WsConnection
from websockets.exceptions import ConnectionClosed

from kit.client.errors import ClientError, ConnectionLost, SessionRefused
from kit.protocol.client import (
    ClientConnection,
    ErrorReceived,
    EventReceived,
    GapDetected,
    Welcomed,
)
from kit.protocol.frames import Event

log = logging.getLogger("kit.client")

FATAL_CLOSE_CODES = {4400, 4401, 4404, 1009}
RECONNECT_DELAYS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0)
"""About 18 s of retries (counted since the last successful handshake) before :class:`ConnectionLost`."""
TURN_END_KINDS = {"result"}


@dataclass(frozen=True)
class SessionInfo:
    """What ``POST /v1/sessions`` returned."""

    session_id: str
    token: str
    ws_url: str


async def create_session(base_url: str, api_token: str | None = None) -> SessionInfo:
    """Create a session on the host at ``base_url``."""
    headers = {"authorization": f"Bearer {api_token}"} if api_token else {}
    try:
        async with httpx.AsyncClient(
            timeout=30, trust_env=False, verify=base_url.startswith("https")
        ) as http:
            response = await http.post(base_url.rstrip("/") + "/v1/sessions", headers=headers)
    except httpx.HTTPError as exc:
        raise ClientError(
            f"Cannot reach the kit host at {base_url}: {exc}. Is `kit dev` running?"
        ) from exc
    if response.status_code != 201:
        raise ClientError(
            f"The host refused to create a session ({response.status_code}): {response.text[:200]}"
        )
    body = response.json()
    return SessionInfo(body["session_id"], body["token"], body["ws_url"])


class SessionClient:
    """One session, over a WebSocket that is re-opened and resumed as needed."""

    def __init__(
        self, ws_url: str, token: str, *, last_seq: int | None = None, reconnect: bool = True
    ) -> None:
        self.ws_url = ws_url
        self.token = token
        self.last_seq = last_seq
        self.reconnect = reconnect
        self.reconnects = 0
        self.duplicates_dropped = 0
        self._events: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self._unconfirmed: dict[str, str] = {}
        self._ws: WsConnection | None = None
        self._proto: ClientConnection | None = None
        self._open = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._handshakes = 0

    async def __aenter__(self) -> SessionClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket and finish the handshake."""
        self._task = asyncio.create_task(self._run(), name="kit-client")
        opened = asyncio.create_task(self._open.wait())
        done, _ = await asyncio.wait({opened, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            opened.cancel()
            self._task.result()
            raise ClientError("The connection ended during the handshake.")

    async def close(self) -> None:
        """Close the socket for good."""
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def send(self, text: str, client_msg_id: str | None = None) -> str:
        """Send a user message; returns its ``client_msg_id``."""
        msg_id = client_msg_id or uuid.uuid4().hex
        self._unconfirmed[msg_id] = text
        await self._send_user(msg_id, text)
        return msg_id

    async def interrupt(self) -> None:
        """Ask the host to stop the running turn."""
        await self._open.wait()
        if self._proto is not None and self._ws is not None:
            self._proto.send_interrupt()
            await self._flush()

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the session, in order, each once (replayed ones included)."""
        while True:
            item = await self._events.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def turn(self, text: str) -> AsyncIterator[Event]:
        """Send ``text`` and yield the events of its turn, through its ``result``."""
        msg_id = await self.send(text)
        turn_id: str | None = None
        async for event in self.events():
            if event.kind == "user" and event.data.get("client_msg_id") == msg_id:
                turn_id = event.turn_id
            if turn_id is None or event.turn_id != turn_id:
                continue
            yield event
            if event.kind in TURN_END_KINDS or (
                event.kind == "error" and event.data.get("code") == "turn_failed"
            ):
                return

    async def _send_user(self, msg_id: str, text: str) -> None:
        await self._open.wait()
        if self._proto is not None and self._ws is not None:
            self._proto.send_user(msg_id, text)
            with contextlib.suppress(ConnectionClosed):
                await self._flush()

    async def _flush(self) -> None:
        assert self._proto is not None
        assert self._ws is not None
        for frame in self._proto.data_to_send():
            await self._ws.send(frame)

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closed:
                handshakes = self._handshakes
                try:
                    await self._session_once()
                except (
                    OSError,
                    ConnectionClosed,
                    websockets.InvalidHandshake,
                    TimeoutError,
                ) as exc:
                    code = getattr(getattr(exc, "rcvd", None), "code", None)
                    if code in FATAL_CLOSE_CODES:
                        raise SessionRefused(str(code), getattr(exc.rcvd, "reason", "")) from exc  # type: ignore[union-attr]
                    log.info("connection lost (%s); resuming after seq %s", exc, self.last_seq)
                if self._handshakes > handshakes:
                    attempt = 0  # that connection worked: start the retry budget afresh
                if self._closed or not self.reconnect:
                    raise ConnectionLost("The connection closed.")
                if attempt >= len(RECONNECT_DELAYS_S):
                    raise ConnectionLost(
                        f"Could not reconnect to {self.ws_url} after {attempt} tries."
                    )
                await asyncio.sleep(RECONNECT_DELAYS_S[attempt])
                attempt += 1
                self.reconnects += 1
        except ClientError as exc:
            self._events.put_nowait(exc)
            self._open.set()
            if not self._closed:
                raise

    async def _session_once(self) -> None:
        self._open.clear()
        async with websockets.connect(self.ws_url, max_size=2**24, open_timeout=15) as ws:
            self._ws = ws
            proto = self._proto = ClientConnection(self.token, self.last_seq)
            proto.start()
            await self._flush()
            async for raw in ws:
                text = raw if isinstance(raw, str) else raw.decode()
                for item in proto.receive_text(text):
                    if isinstance(item, Welcomed):
                        self._handshakes += 1
                        if self.reconnects:
                            self._queue_unconfirmed(proto)
                        self._open.set()
                    elif isinstance(item, EventReceived):
                        self.last_seq = item.event.seq
                        self._confirm(item.event)
                        self._events.put_nowait(item.event)
                    elif isinstance(item, ErrorReceived) and proto.state.value != "open":
                        if item.code in ("unauthorized", "unknown_session", "seq_ahead"):
                            raise SessionRefused(item.code, item.message)
                    elif isinstance(item, GapDetected):
                        log.warning(
                            "gap: expected seq %d, got %d; resuming", item.expected, item.got
                        )
                        await ws.close()
                        return
                self.duplicates_dropped = proto.duplicates_dropped
                await self._flush()

    def _confirm(self, event: Event) -> None:
        if event.kind == "user":
            self._unconfirmed.pop(str(event.data.get("client_msg_id")), None)

    def _queue_unconfirmed(self, proto: ClientConnection) -> None:
        # After a reconnect: messages whose user event we never saw go again, same ids.
        for msg_id, text in self._unconfirmed.items():
            proto.send_user(msg_id, text)


def dumps_event(event: Event) -> str:
    """An event as one JSON line (for logs and ``kit chat --json``)."""
    return json.dumps(
        {"seq": event.seq, "kind": event.kind, "turn_id": event.turn_id, "data": event.data},
        ensure_ascii=False,
    )
