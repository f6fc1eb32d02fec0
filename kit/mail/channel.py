"""The email channel: inbound mail → a turn in the thread's session → one threaded reply.

It is a client of the session protocol like any other (ARCHITECTURE §8): it creates
sessions with ``POST /v1/sessions`` and joins them over the WebSocket with
:class:`kit.client.SessionClient`, so an email turn is an ordinary turn — the same events,
visible and joinable from the chat page or ``kit chat``, recovered after sandbox or host
death by the host itself.

One reply per inbound message:

1. the message is *taken* (:meth:`MailStore.take`) before anything else happens; a second
   delivery of the same Message-ID is a ``duplicate`` and changes nothing;
2. its turn is submitted with ``client_msg_id`` = ``mail-`` + a digest of the Message-ID,
   so submitting it again after a restart is not applied twice (invariant 3);
3. the reply is written once (:meth:`MailStore.reply` is conditional) and only then handed
   to the relay; on start, taken messages without a reply are joined again (the turn's end
   is read from the session's log, whether it finished before or after the restart) and
   replies not yet sent are sent again with the same ``Message-ID``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from kit.client import ClientError, ReconnectPolicy, SessionClient, SessionRefused
from kit.client import create_session as create_session_over_http
from kit.mail.compose import compose_reply, reply_message_id
from kit.mail.errors import MailChannelError
from kit.mail.message import Inbound, parse
from kit.mail.rules import (
    REFUSALS,
    Agent,
    Decision,
    Thread,
    capped_references,
    decide,
    new_token,
    thread_ids,
    tokens,
)
from kit.mail.store import InboundRecord, MailStore, OutboxEntry, Refused
from kit.mail.text import attachment_plan, turn_text
from kit.protocol.turns import ends_turn

log = logging.getLogger("kit.mail")

TURN_POLICY = ReconnectPolicy(give_up_after_s=120.0)
"""How long the channel keeps reconnecting to a session while it waits for a turn."""
TURN_TIMEOUT_S = 1800.0
"""A turn not ended after this long is left pending (joined again on the next start)."""
JOIN_ATTEMPTS = 5
"""Tries to join a session for one message before it is left pending."""
SEND_ATTEMPTS = 5
"""Tries to hand a reply to the relay before it is left for the next start."""
FAILED_TEXT = (
    "Sorry, I could not answer this message ({why}). Nothing was lost: write again to retry."
)

Deliver = Callable[[OutboxEntry], Awaitable[None]]
"""Hands a reply to a relay; raises to say it did not (it is tried again)."""
CreateSession = Callable[[], Awaitable[tuple[str, str]]]
"""Makes a new session: ``(session_id, session_token)``."""
SaveFiles = Callable[[str, str, list[tuple[str, bytes]]], Awaitable[None]]
"""Gives a session files ``(name, bytes)`` in a folder (a relative path) of its workspace;
raises to say it could not."""


@dataclass(frozen=True)
class Receipt:
    """What the channel did with one inbound message."""

    action: str
    """``new``, ``continue`` or ``refuse``."""
    message_id: str = ""
    session_id: str | None = None
    reason: str | None = None

    @property
    def detail(self) -> str:
        return REFUSALS.get(self.reason or "", self.reason or "")


def client_msg_id(message_id: str) -> str:
    """The turn's ``client_msg_id`` for the inbound message ``message_id``."""
    return "mail-" + hashlib.sha256(message_id.encode()).hexdigest()[:40]


def ws_url(base_url: str, session_id: str) -> str:
    return base_url.replace("http", "ws", 1).rstrip("/") + f"/v1/sessions/{session_id}/ws"


class MailChannel:
    """Takes inbound mail for ``agent`` on the session host at ``base_url``."""

    def __init__(
        self,
        store: MailStore,
        agent: Agent,
        base_url: str,
        api_token: str,
        *,
        deliver: Deliver | None = None,
        create_session: CreateSession | None = None,
        save_files: SaveFiles | None = None,
    ) -> None:
        self.store = store
        self.agent = agent
        self.base_url = base_url
        self.api_token = api_token
        self.deliver = deliver
        """Where replies go (None: the outbox is where they go, as in ``kit dev``)."""
        self._create = create_session or self._create_over_http
        self.save_files = save_files or self._save_over_http
        """Where attachments go (default: the session host's files route, which keeps them
        and gives them to each of the session's sandboxes, :mod:`kit.host.files`)."""
        self._lock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # -- inbound -----------------------------------------------------------------------

    async def receive(
        self,
        raw: bytes,
        *,
        envelope_from: str | None = None,
        envelope_to: list[str] | None = None,
        authenticated: bool | None = None,
    ) -> Receipt:
        """Take one raw message. Raises :class:`MailError` for mail that cannot be read
        (the relay should bounce it); a refusal is a :class:`Receipt`, recorded and silent
        (answering a loop would feed it)."""
        # In a thread: 25 MB of MIME takes a while to read, and the host's loop serves
        # every session meanwhile.
        msg = await asyncio.to_thread(
            parse, raw, envelope_from=envelope_from, envelope_to=envelope_to
        )
        async with self._lock:  # one routing at a time: a thread is made once
            decision = await self._decide(msg, authenticated)
            if decision.action == "refuse":
                assert decision.reason is not None
                await self.store.refuse(
                    Refused(
                        msg.message_id,
                        msg.sender,
                        msg.subject[:200],
                        decision.reason,
                        decision.detail,
                        time.time(),
                    )
                )
                log.info("mail %s from %s refused: %s", msg.message_id, msg.sender, decision.detail)
                return Receipt("refuse", msg.message_id, reason=decision.reason)
            session_token: str | None = None
            if decision.thread is None:
                session_id, session_token = await self._create()
                thread = Thread(session_id, new_token(), (msg.sender,))
            else:
                thread = decision.thread
            saved = await self._save_attachments(msg, thread.session_id)
            record = _record(msg, thread, saved)
            if not await self.store.take(record, thread, session_token):
                return Receipt("refuse", msg.message_id, reason="duplicate")
        log.info("mail %s from %s → session %s", msg.message_id, msg.sender, thread.session_id)
        self._answer_later(record)
        return Receipt(decision.action, msg.message_id, thread.session_id)

    async def _decide(self, msg: Inbound, authenticated: bool | None) -> Decision:
        toks = tokens(msg, self.agent)
        return decide(
            msg,
            self.agent,
            seen=await self.store.seen(msg.message_id),
            by_token=await self.store.thread_by_token(toks[0]) if toks else None,
            by_reference=await self.store.thread_by_ids(thread_ids(msg)),
            authenticated=authenticated,
        )

    async def _save_attachments(self, msg: Inbound, session_id: str) -> list[str] | None:
        """Save ``msg``'s attachments in the session's workspace, under
        ``mail/<digest of the Message-ID>/``; for each, what the agent is told."""
        if not msg.attachments:
            return None
        folder = "mail/" + hashlib.sha256(msg.message_id.encode()).hexdigest()[:12]
        told: list[str] = []
        for (name, why), a in zip(attachment_plan(msg, folder), msg.attachments, strict=True):
            if name is not None:  # one at a time: the agent is told which were saved
                try:
                    await self.save_files(session_id, folder, [(name, a.data)])
                except Exception as exc:
                    log.warning("mail %s: %s not saved: %s", msg.message_id, name, exc)
                    why = f"not saved ({exc})"
            told.append(why)
        return told

    async def _save_over_http(
        self, session_id: str, folder: str, files: list[tuple[str, bytes]]
    ) -> None:
        base = f"{self.base_url.rstrip('/')}/v1/sessions/{session_id}/files/"
        headers = {"authorization": f"Bearer {self.api_token}"}
        async with httpx.AsyncClient(
            timeout=60, trust_env=False, verify=base.startswith("https")
        ) as http:
            for name, data in files:
                got = await http.put(
                    base + quote(f"{folder}/{name}"), content=data, headers=headers
                )
                if got.status_code != 204:
                    raise MailChannelError(
                        f"the host refused {name!r} ({got.status_code}): {got.text[:200]}"
                    )

    async def _create_over_http(self) -> tuple[str, str]:
        info = await create_session_over_http(self.base_url, self.api_token)
        return info.session_id, info.token

    # -- answering ---------------------------------------------------------------------

    async def start(self, *, unsent_age_s: float = 0.0) -> int:
        """Join again the turns of taken messages without a reply, and send replies not yet
        sent (``unsent_age_s``: only those made at least that long ago, so that a reply
        another gateway is sending now is left to it). Returns how many messages it picked
        up."""
        pending = await self.store.pending()
        for record in pending:
            self._answer_later(record)
        if self.deliver is not None:
            before = time.time() - unsent_age_s
            for entry in await self.store.unsent():
                if entry.created_at <= before:
                    self._spawn("send:" + entry.inbound_id, self._send(entry))
        return len(pending)

    async def sweep(self, every_s: float, unsent_age_s: float) -> None:
        """:meth:`start` every ``every_s`` seconds until cancelled: where several gateways
        share the store, mail a dead gateway was answering is answered by another (the
        reply is still written once)."""
        for _ in range(10**9):
            await asyncio.sleep(every_s)
            try:
                await self.start(unsent_age_s=unsent_age_s)
            except Exception as exc:
                log.warning("mail: looking for unanswered mail failed (next pass retries): %s", exc)

    async def close(self) -> None:
        """Stop waiting for turns; what is pending is picked up by the next :meth:`start`."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no turn is awaited and no reply is being sent (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def _answer_later(self, record: InboundRecord) -> None:
        self._spawn(record.message_id, self._answer(record))

    def _spawn(self, key: str, work: Awaitable[None]) -> None:
        if key in self._tasks or self._closed:
            if asyncio.iscoroutine(work):
                work.close()
            return

        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mail: %s failed; it is tried again on the next start", key)
            finally:
                self._tasks.pop(key, None)

        self._tasks[key] = asyncio.create_task(run(), name=f"kit-mail-{key[:40]}")

    async def _answer(self, record: InboundRecord) -> None:
        text: str | None = None
        for attempt in range(JOIN_ATTEMPTS):
            try:
                async with asyncio.timeout(TURN_TIMEOUT_S):
                    text = await self._turn(record)
                break
            except SessionRefused as exc:
                text = FAILED_TEXT.format(why=f"the conversation is gone: {exc}")
                break
            except (ClientError, TimeoutError) as exc:
                log.warning(
                    "mail %s: waiting for its turn failed (%s), try %d of %d",
                    record.message_id,
                    exc,
                    attempt + 1,
                    JOIN_ATTEMPTS,
                )
                await asyncio.sleep(min(30.0, 2.0**attempt))
        if text is None:
            log.error(
                "mail %s: left pending; it is joined again on the next start", record.message_id
            )
            return
        entry = self._compose(record, text)
        if not await self.store.reply(entry):
            return  # answered already (another task, or before a restart)
        log.info("mail %s answered in session %s", record.message_id, record.session_id)
        if self.deliver is not None:
            await self._send(entry)

    async def _turn(self, record: InboundRecord) -> str:
        """Submit the message's turn (again: the host drops a repeat) and read its end."""
        token = await self.store.session_token(record.session_id)
        if token is None:
            raise SessionRefused("no_token", f"no token is kept for session {record.session_id}")
        client = SessionClient(ws_url(self.base_url, record.session_id), token, policy=TURN_POLICY)
        async with client:
            await client.send(record.text, record.client_msg_id)
            turn_id: str | None = None
            async for event in client.events():
                if event.kind == "user" and event.data.get("client_msg_id") == record.client_msg_id:
                    turn_id = event.turn_id
                elif (
                    turn_id is not None
                    and event.turn_id == turn_id
                    and ends_turn(event.kind, event.data)
                ):
                    if event.kind == "result":
                        answer = str(event.data.get("text") or "").strip()
                        return answer or "(The agent finished without a written answer.)"
                    return FAILED_TEXT.format(why=str(event.data.get("message", "the turn failed")))
        raise ClientError("the session ended before the turn did")

    def _compose(self, record: InboundRecord, text: str) -> OutboxEntry:
        msg = Inbound(
            message_id=record.message_id,
            sender=record.sender,
            sender_name=record.sender_name,
            recipients=(),
            return_path=None,
            subject=record.subject,
            in_reply_to=record.in_reply_to,
            references=record.references,
            headers={},
            text="",
        )
        reply = compose_reply(msg, self.agent, record.token, text)
        return OutboxEntry(
            inbound_id=record.message_id,
            session_id=record.session_id,
            sender=self.agent.with_token(record.token),
            to=record.sender,
            subject=str(reply["Subject"]),
            message_id=reply_message_id(record.message_id, self.agent),
            text=text,
            raw=bytes(reply),
            created_at=time.time(),
            sent_at=None if self.deliver is not None else time.time(),
        )

    async def _send(self, entry: OutboxEntry) -> None:
        assert self.deliver is not None
        for attempt in range(SEND_ATTEMPTS):
            try:
                await self.deliver(entry)
            except Exception as exc:
                log.warning(
                    "mail: the reply to %s was not sent (%s), try %d of %d",
                    entry.inbound_id,
                    exc,
                    attempt + 1,
                    SEND_ATTEMPTS,
                )
                await asyncio.sleep(min(60.0, 2.0**attempt))
                continue
            await self.store.mark_sent(entry.inbound_id, time.time())
            return
        log.error("mail: the reply to %s is left unsent until the next start", entry.inbound_id)


def _record(msg: Inbound, thread: Thread, saved: list[str] | None = None) -> InboundRecord:
    return InboundRecord(
        message_id=msg.message_id,
        session_id=thread.session_id,
        client_msg_id=client_msg_id(msg.message_id),
        text=turn_text(msg, saved),
        sender=msg.sender,
        sender_name=msg.sender_name,
        subject=msg.subject,
        in_reply_to=msg.in_reply_to,
        references=tuple(capped_references(msg.references)),  # all the reply needs
        token=thread.token,
        received_at=time.time(),
    )
