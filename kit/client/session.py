"""A session client that outlives its host: it reconnects, resumes and re-sends on its own.

::

    info = await create_session("http://127.0.0.1:8787", api_token)
    async with SessionClient(info.ws_url, info.token, on_status=print) as client:
        async for event in client.turn("Where is my order 1042?"):
            print(event.kind, event.data)

The client remembers the last ``seq`` it saw. When the socket drops (host restart or
crash, network, ``1001``, ``1011``) it reconnects with capped, jittered backoff
(:class:`~kit.client.reconnect.ReconnectPolicy`; only a connection that brought events or
stayed open resets it) and says hello with that ``seq``, so it gets exactly the events it
missed, once. Meanwhile :meth:`SessionClient.send` and :meth:`SessionClient.interrupt`
never fail because the socket is down or mid-handshake: they queue. Once the replay has caught up, every message whose ``user`` event has not
arrived goes out again with the same ``client_msg_id`` (the host applies each at most
once) and unanswered interrupts are sent again. After ``give_up_after_s`` without a
connection the client stops with :class:`ConnectionLost`; refusals (wrong token, unknown
session, too large) stop it at once with :class:`SessionRefused`. A message or token the
host would refuse (empty, too long, a lone surrogate) raises :class:`ClientError` at the
call and is never queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType

import httpx
import websockets
from websockets.asyncio.client import ClientConnection as WsConnection
from websockets.exceptions import ConnectionClosed

from kit.client.errors import ClientError, ConnectionLost, SessionRefused
from kit.client.reconnect import LIBRARY_POLICY, ConnectionStatus, ReconnectPolicy, StatusChange
from kit.protocol import errors as e
from kit.protocol.client import (
    ClientConnection,
    ClientState,
    ErrorReceived,
    EventReceived,
    GapDetected,
    InterruptAcked,
    Welcomed,
)
from kit.protocol.errors import ProtocolError
from kit.protocol.frames import Event, Hello, User, encode_client_frame, parse_client_frame
from kit.protocol.turns import ends_turn

log = logging.getLogger("kit.client")

FATAL_CLOSE_CODES = frozenset(
    {e.CLOSE_BAD_REQUEST, e.CLOSE_UNAUTHORIZED, e.CLOSE_UNKNOWN_SESSION, e.CLOSE_TOO_LARGE}
)
"""Closes after which reconnecting cannot help (docs/protocol.md §8)."""
FATAL_ERROR_CODES = frozenset({e.UNAUTHORIZED, e.UNKNOWN_SESSION, e.SEQ_AHEAD})
"""Error frames that end the session when they answer a hello."""
OPEN_TIMEOUT_S = 10.0
"""How long one try may take to open the socket."""


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


@dataclass
class _Outgoing:
    """A message not yet confirmed by its ``user`` event, or an interrupt not yet answered.

    It is written at most once per connection (``sent_on``) until it is settled.
    """

    msg_id: str | None
    text: str
    ack: asyncio.Future[InterruptAcked] | None = None
    sent_on: int = 0
    """The number of the connection it was last written on (0: none yet)."""


class SessionClient:
    """One session, over a WebSocket that is re-opened and resumed as needed.

    ``policy`` says how long to keep reconnecting (default: 60 s, see
    :mod:`kit.client.reconnect`); ``reconnect=False`` gives up at the first drop.
    ``on_status`` is called (from the client's task; it must not block) with a
    :class:`StatusChange` whenever the connection opens, drops, retries or closes;
    :attr:`status` holds the current one.
    """

    def __init__(
        self,
        ws_url: str,
        token: str,
        *,
        last_seq: int | None = None,
        reconnect: bool = True,
        policy: ReconnectPolicy = LIBRARY_POLICY,
        on_status: Callable[[StatusChange], None] | None = None,
    ) -> None:
        try:
            parse_client_frame(encode_client_frame(Hello(token, last_seq)))
        except ProtocolError as exc:
            raise ClientError(f"This hello cannot be sent: {exc.message}") from None
        self.ws_url = ws_url
        self.token = token
        self.last_seq = last_seq
        self.reconnect = reconnect
        self.policy = policy
        self.on_status = on_status
        self.status = ConnectionStatus.CONNECTING
        self.session_id: str | None = None
        self.reconnects = 0
        """Reconnect tries so far (successful or not)."""
        self.duplicates_dropped = 0
        """Events the host sent again that this client already had (all connections)."""
        self._events: asyncio.Queue[Event | ClientError] = asyncio.Queue()
        self._outbox: list[_Outgoing] = []
        self._ws: WsConnection | None = None
        self._proto: ClientConnection | None = None
        self._connection = 0
        self._handshakes = 0
        self._welcomed_at: float | None = None
        """When this connection's welcome arrived (loop time; None: not yet)."""
        self._new_events = 0
        """New events this connection brought."""
        self._last_error: ErrorReceived | None = None
        self._opened = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failure: ClientError | None = None
        self._closing = False
        self._rand: Callable[[], float] = random.random

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

    # -- public ------------------------------------------------------------------------

    @property
    def unsent(self) -> dict[str, str]:
        """Messages (``client_msg_id`` → text) whose ``user`` event has not arrived yet."""
        return {o.msg_id: o.text for o in self._outbox if o.msg_id is not None}

    async def connect(self) -> None:
        """Open the socket and finish the handshake, retrying within the policy's budget."""
        if self._task is not None:
            raise ClientError("This client is already connected; open a new SessionClient.")
        self._task = asyncio.create_task(self._run(), name="kit-client")
        opened = asyncio.create_task(self._opened.wait())
        await asyncio.wait({opened, self._task}, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        if self._failure is not None:
            raise self._failure
        if self._task.done():
            self._task.result()  # a bug in the client: let it show
            raise ClientError("The connection ended during the handshake.")

    async def close(self) -> None:
        """Close the socket for good; unanswered interrupts fail with :class:`ClientError`."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.status is not ConnectionStatus.CLOSED:
            self._set_status(StatusChange(ConnectionStatus.CLOSED, reason="closed by the client"))
        self._settle_interrupts(ClientError("The client was closed before the host answered."))

    async def send(self, text: str, client_msg_id: str | None = None) -> str:
        """Send a user message (queued while the host is away); returns its ``client_msg_id``.

        Raises :class:`ClientError` only for a message the host would refuse (empty, too
        long, not valid Unicode: a lone surrogate) or when the client has stopped for good;
        such a message is not queued.
        """
        self._check_usable()
        msg_id = client_msg_id or uuid.uuid4().hex
        try:
            parse_client_frame(encode_client_frame(User(msg_id, text)))
        except ProtocolError as exc:
            raise ClientError(f"This message cannot be sent: {exc.message}") from None
        if msg_id not in self.unsent:
            self._outbox.append(_Outgoing(msg_id, text))
        await self._pump()
        return msg_id

    async def interrupt(self) -> InterruptAcked:
        """Ask the host to stop the running turn; its answer (see :class:`InterruptAcked`).

        While the host is away the request waits, and it is sent again on the next
        connection if the host did not answer on the last: it then stops whatever turn is
        running at that time.
        """
        self._check_usable()
        ack: asyncio.Future[InterruptAcked] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(None, "", ack))
        await self._pump()
        return await ack

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the session, in order, each once (replayed ones included).

        Raises the :class:`ClientError` that stopped the client, if one does.
        """
        while True:
            item = await self._events.get()
            if isinstance(item, ClientError):
                self._events.put_nowait(item)  # every later reader learns it too
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
            if ends_turn(event.kind, event.data):
                return

    # -- sending -----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise ClientError("This client is closed; open a new SessionClient.")

    async def _pump(self) -> None:
        """Write every unsettled item not yet written on this connection, in order."""
        proto = self._proto
        if self.status is not ConnectionStatus.OPEN or proto is None:
            return  # queued: the next caught-up connection sends it
        for item in list(self._outbox):
            if item.sent_on == self._connection:
                continue
            if item.ack is None:
                assert item.msg_id is not None
                proto.send_user(item.msg_id, item.text)
            elif item.ack.done():  # the caller gave up waiting before it went out
                self._outbox.remove(item)
                continue
            else:
                proto.send_interrupt()
            item.sent_on = self._connection
        await self._flush()

    async def _flush(self) -> None:
        async with self._write_lock:
            proto, ws = self._proto, self._ws
            if proto is None or ws is None:
                return
            for frame in proto.data_to_send():
                try:
                    await ws.send(frame)
                except ConnectionClosed:
                    return  # the reader sees the close; the outbox is sent again on reconnect

    # -- the connection loop -------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt, since = 0, loop.time()
        try:
            while True:
                reason = await self._connect_once()
                if self._closing:
                    return
                # Only a connection that brought events or stayed open earns a fresh
                # schedule and budget: a host that welcomes and then drops the client
                # (1011 on every try) is retried ever more slowly, and given up on.
                welcomed_at = self._welcomed_at
                open_for = None if welcomed_at is None else loop.time() - welcomed_at
                if self.policy.healthy(open_for, self._new_events):
                    attempt, since = 0, loop.time()
                if not self.reconnect:
                    raise ConnectionLost(
                        f"The connection to {self.ws_url} ended ({reason}); reconnecting is "
                        "off (SessionClient(reconnect=False)).",
                        self.unsent,
                    )
                waited = loop.time() - since
                if waited >= self.policy.give_up_after_s:
                    raise ConnectionLost(self._gave_up(waited, attempt, reason), self.unsent)
                delay = self.policy.delay(attempt, self._rand())
                delay = min(delay, self.policy.give_up_after_s - waited)
                attempt += 1
                status = (
                    ConnectionStatus.RECONNECTING
                    if self._handshakes
                    else ConnectionStatus.CONNECTING
                )
                self._set_status(StatusChange(status, attempt, reason, delay))
                await asyncio.sleep(delay)
                self.reconnects += 1
        except ClientError as exc:
            self._fail(exc)

    def _gave_up(self, waited: float, attempts: int, reason: str) -> str:
        unsent = len(self.unsent)
        lost = (
            f" {unsent} message(s) were not confirmed by the host; they are in "
            "ConnectionLost.unsent, to send again with the same ids."
            if unsent
            else ""
        )
        return (
            f"Gave up reconnecting to {self.ws_url} after {waited:.0f} s and {attempts} "
            f"tries (last: {reason}). Start the host again and resume with a new client "
            f"(last_seq={self.last_seq}), or allow longer with "
            f"ReconnectPolicy(give_up_after_s=…).{lost}"
        )

    async def _connect_once(self) -> str:
        """One connection, from dial to close; why it ended (raises if it must not retry)."""
        self._connection += 1
        self._welcomed_at = None
        self._new_events = 0
        self._last_error = None  # the error frame (if any) that explains this close
        code: int | None = None
        why = ""
        try:
            async with websockets.connect(
                self.ws_url, max_size=2**24, open_timeout=OPEN_TIMEOUT_S
            ) as ws:
                proto = ClientConnection(self.token, self.last_seq)
                proto.start()
                self._ws, self._proto = ws, proto
                await self._flush()
                async for raw in ws:
                    if await self._receive(proto, raw if isinstance(raw, str) else raw.decode()):
                        await ws.close()
                        return "events arrived out of order; resuming"
            code, why = ws.close_code, ws.close_reason or ""
        except ConnectionClosed as exc:
            code, why = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
        except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
            return f"cannot connect: {exc}"
        finally:
            self._ws = self._proto = None
        error = self._error_before_close()
        if code in FATAL_CLOSE_CODES:
            if error is not None:
                raise SessionRefused(error.code, error.message)
            raise SessionRefused(why or str(code), f"the host closed the connection with {code}.")
        if error is not None and error.code == e.SHUTTING_DOWN:
            return "the host is shutting down"
        if code is None or code == e.CLOSE_ABNORMAL:
            return "the connection dropped"
        return f"the host closed the connection ({code}{' ' + why if why else ''})"

    async def _receive(self, proto: ClientConnection, text: str) -> bool:
        """Handle one frame; true when the connection must be dropped and resumed."""
        dropped = proto.duplicates_dropped
        try:
            items = proto.receive_text(text)
        except ProtocolError as exc:
            raise ClientError(f"The host broke the session protocol: {exc.message}") from exc
        self.duplicates_dropped += proto.duplicates_dropped - dropped
        for item in items:
            if isinstance(item, Welcomed):
                self._handshakes += 1
                self._welcomed_at = asyncio.get_running_loop().time()
                self.session_id = item.session_id
            elif isinstance(item, EventReceived):
                self._new_events += 1
                self.last_seq = item.event.seq
                self._confirm(item.event)
                self._events.put_nowait(item.event)
            elif isinstance(item, InterruptAcked):
                self._answer_interrupt(item)
            elif isinstance(item, ErrorReceived):
                self._last_error = item
                if proto.state is not ClientState.OPEN and item.code in FATAL_ERROR_CODES:
                    raise SessionRefused(item.code, item.message)
                log.info("host error %s: %s", item.code, item.message)
            elif isinstance(item, GapDetected):
                log.warning("gap: expected seq %d, got %d; resuming", item.expected, item.got)
                return True
        if proto.caught_up and self.status is not ConnectionStatus.OPEN:
            self._set_status(StatusChange(ConnectionStatus.OPEN))
            self._opened.set()
        if proto.caught_up:
            await self._pump()  # also writes the handshake's ack
        else:
            await self._flush()
        return False

    # -- bookkeeping ---------------------------------------------------------------------

    def _error_before_close(self) -> ErrorReceived | None:
        return self._last_error

    def _confirm(self, event: Event) -> None:
        if event.kind == "user":
            msg_id = event.data.get("client_msg_id")
            self._outbox = [o for o in self._outbox if o.msg_id is None or o.msg_id != msg_id]

    def _answer_interrupt(self, ack: InterruptAcked) -> None:
        # Acks come in the order the interrupts were written on this connection.
        for item in self._outbox:
            if item.ack is not None and item.sent_on == self._connection:
                self._outbox.remove(item)
                if not item.ack.done():
                    item.ack.set_result(ack)
                return

    def _settle_interrupts(self, exc: ClientError) -> None:
        for item in [o for o in self._outbox if o.ack is not None]:
            self._outbox.remove(item)
            if item.ack is not None and not item.ack.done():
                item.ack.set_exception(exc)

    def _set_status(self, change: StatusChange) -> None:
        self.status = change.status
        if self.on_status is not None:
            try:
                self.on_status(change)
            except Exception:
                log.exception("on_status raised; the client carries on")

    def _fail(self, exc: ClientError) -> None:
        self._failure = exc
        self._set_status(StatusChange(ConnectionStatus.CLOSED, reason=str(exc)))
        self._events.put_nowait(exc)
        self._settle_interrupts(exc)
        self._opened.set()


def dumps_event(event: Event) -> str:
    """An event as one JSON line (for logs)."""
    return json.dumps(
        {"seq": event.seq, "kind": event.kind, "turn_id": event.turn_id, "data": event.data},
        ensure_ascii=False,
    )
