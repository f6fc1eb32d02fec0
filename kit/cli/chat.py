"""``kit chat``: a terminal client for a running ``kit dev``.

It outlives its host: when ``kit dev`` stops, crashes or restarts, it says
``host gone, reconnecting…``, keeps what is typed meanwhile and sends it once the host is
back (``reconnected``). At a terminal it keeps trying until Ctrl-C; with ``-m`` or piped
input it gives up after ``--retry-for`` seconds (default 60) with a message saying how to
resume. ``/interrupt`` is answered (``interrupting turn t3…`` or ``no turn is running``),
then the turn's end says how it really ended.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import threading
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kit.cli import console
from kit.cli.errors import CliError
from kit.client import (
    FOREVER,
    ClientError,
    ConnectionLost,
    ConnectionStatus,
    ReconnectPolicy,
    SessionClient,
    create_session,
)
from kit.protocol.frames import Event
from kit.protocol.turns import TURN_FAILED, ends_turn


class ChatError(CliError):
    """``kit chat`` cannot find or open a session."""


@dataclass(frozen=True)
class ChatTarget:
    """Where ``kit chat`` connects."""

    url: str
    api_token: str | None
    sessions_file: Path


def find_target(
    state_dir: Path, url: str | None, environ: Mapping[str, str] = os.environ
) -> ChatTarget:
    """The running ``kit dev`` for ``state_dir`` (or ``url``); the API token is
    ``KIT_API_TOKEN`` when set (a deployed host's), else the state dir's."""
    dev = state_dir / "dev.json"
    token_file = state_dir / "api-token"
    if url is None:
        if not dev.is_file():
            raise ChatError(
                f"No running `kit dev` found ({dev} is missing); start `kit dev` in this project "
                "first, or pass --url."
            )
        info = json.loads(dev.read_text())
        url = str(info["url"])
        token_file = Path(info.get("api_token_file", token_file))
    token = environ.get("KIT_API_TOKEN", "").strip() or (
        token_file.read_text().strip() if token_file.is_file() else None
    )
    return ChatTarget(url, token, state_dir / "chat-sessions.json")


def _load_sessions(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_session(path: Path, session_id: str, token: str, ws_url: str) -> None:
    sessions = _load_sessions(path)
    sessions[session_id] = {"token": token, "ws_url": ws_url}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(sessions, f)


DEFAULT_RETRY_FOR_S = 60.0
"""How long ``kit chat -m`` (or with piped input) waits for a host that went away."""


def reconnect_policy(retry_for_s: float | None, *, interactive: bool) -> ReconnectPolicy:
    """``--retry-for``: given, that long (``inf``: forever); else forever at a terminal
    (a person is waiting and can press Ctrl-C) and 60 s otherwise (a script is waiting)."""
    if retry_for_s is not None:
        if retry_for_s < 0 or math.isnan(retry_for_s):
            raise ChatError("--retry-for takes a number of seconds >= 0, or inf for forever.")
        return ReconnectPolicy(give_up_after_s=retry_for_s)
    return FOREVER if interactive else ReconnectPolicy(give_up_after_s=DEFAULT_RETRY_FOR_S)


async def chat(
    target: ChatTarget,
    session_id: str | None,
    message: str | None,
    as_json: bool,
    retry_for_s: float | None = None,
) -> int:
    """Open (or create) a session and chat; with ``message``, one turn and exit.

    With ``as_json`` every stdout line is a JSON object carrying ``session_id``: events as
    ``{"type":"event","session_id","seq","kind","turn_id","data"}`` and answers to
    ``/interrupt`` as ``{"type":"interrupt_ack","session_id","turn_id","interrupted"}``;
    notes for people (the session hint, reconnecting) go to stderr.
    """
    if session_id is None:
        info = await create_session(target.url, target.api_token)
        session_id, token, ws_url = info.session_id, info.token, info.ws_url
        _save_session(target.sessions_file, session_id, token, ws_url)
    else:
        known = _load_sessions(target.sessions_file).get(session_id)
        if known is None:
            raise ChatError(
                f"No token for session {session_id} in {target.sessions_file}; "
                "only sessions created by `kit chat` here can be resumed by id."
            )
        token, ws_url = known["token"], known["ws_url"]
    interactive = message is None and sys.stdin.isatty()
    policy = reconnect_policy(retry_for_s, interactive=interactive)
    own: set[str] = set()
    printer = console.EventPrinter(
        as_json=as_json, own_messages=own, session_id=session_id, prompt=interactive
    )
    hint = f"session {session_id}  (resume it later with: kit chat {session_id})"
    if as_json:
        console.out(hint, stream=sys.stderr)  # stdout stays JSON
    else:
        console.out(console.dim(hint))
    client = SessionClient(ws_url, token, policy=policy, on_status=printer.connection)
    try:
        async with client:
            if message is not None:
                return await _one_turn(client, printer, own, message)
            return await _interactive(client, printer, own)
    except ConnectionLost as exc:
        raise ChatError(_gave_up(target.url, session_id, policy, exc)) from exc


def _gave_up(url: str, session_id: str, policy: ReconnectPolicy, exc: ConnectionLost) -> str:
    unsent = "".join(f" Not delivered: {text[:80]!r}." for text in exc.unsent.values())
    return (
        f"The kit host at {url} did not come back within {policy.give_up_after_s:g} s. "
        f"Start `kit dev` again, then resume with `kit chat {session_id}`; "
        f"wait longer with --retry-for SECONDS (inf: forever).{unsent}"
    )


async def _one_turn(
    client: SessionClient, printer: console.EventPrinter, own: set[str], text: str
) -> int:
    failed = False
    async for event in client.turn(text):
        if event.kind == "user":
            own.add(str(event.data.get("client_msg_id")))
        printer.show(event)
        if event.kind == "result" and event.data.get("is_error"):
            failed = True
        if event.kind == "error" and event.data.get("code") == TURN_FAILED:
            failed = True
    return 1 if failed else 0


class _OwnTurns:
    """The messages this chat sent, until each one's turn has ended."""

    def __init__(self) -> None:
        self.waiting: set[str] = set()
        self._turn_of: dict[str, str] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    def sent(self, msg_id: str) -> None:
        self.waiting.add(msg_id)
        self.idle.clear()

    def saw(self, event: Event) -> bool:
        """Track ``event``; true when it ended the last turn this chat was waiting for."""
        msg_id = event.data.get("client_msg_id")
        if event.kind == "user" and msg_id in self.waiting and event.turn_id is not None:
            self._turn_of[event.turn_id] = str(msg_id)
        if ends_turn(event.kind, event.data) and event.turn_id in self._turn_of:
            self.waiting.discard(self._turn_of.pop(event.turn_id))
            if not self.waiting:
                self.idle.set()
                return True
        return False


async def _interactive(client: SessionClient, printer: console.EventPrinter, own: set[str]) -> int:
    lines = _stdin_lines(asyncio.get_running_loop())
    turns = _OwnTurns()
    shown = asyncio.create_task(_show_all(client, printer, turns))
    interrupts: set[asyncio.Task[None]] = set()
    printer.prompt()
    try:
        while True:
            line = await _next_line(lines, shown)
            printer.typed()
            command = (line or "").strip()
            piped = not sys.stdin.isatty()
            if line is None or (piped and command in ("/quit", "/exit")):
                # End of input, or a script's /quit: let what was sent finish, then stop.
                await _until_done(shown, turns.idle.wait(), *interrupts)
                return 0
            if command in ("/quit", "/exit"):  # a person at a terminal: stop now
                return 0
            if not command:
                printer.prompt()
            elif command == "/interrupt":
                printer.interrupt_requested()
                task = asyncio.create_task(_interrupt(client, printer))
                interrupts.add(task)
                task.add_done_callback(interrupts.discard)
            else:
                msg_id = await client.send(line)
                own.add(msg_id)
                turns.sent(msg_id)
                if client.status is not ConnectionStatus.OPEN:
                    printer.queued()
    finally:
        shown.cancel()
        for task in interrupts:
            task.cancel()


async def _interrupt(client: SessionClient, printer: console.EventPrinter) -> None:
    try:
        ack = await client.interrupt()
    except ClientError as exc:
        printer.interrupt_failed(str(exc))
        return
    printer.interrupt_acked(ack)


async def _next_line(lines: asyncio.Queue[str | None], shown: asyncio.Task[None]) -> str | None:
    """The next line typed; raises what stopped the client if it stops first."""
    get = asyncio.create_task(lines.get())
    await asyncio.wait({get, shown}, return_when=asyncio.FIRST_COMPLETED)
    if not get.done():
        get.cancel()
        shown.result()  # the client stopped: raise why
        raise ChatError("The session ended.")
    return get.result()


async def _until_done(shown: asyncio.Task[None], *waits: Awaitable[object]) -> None:
    """Wait for ``waits``; raise what stopped the client if it stops first."""

    async def gather() -> None:
        await asyncio.gather(*waits)

    everything = asyncio.create_task(gather())
    await asyncio.wait({everything, shown}, return_when=asyncio.FIRST_COMPLETED)
    if not everything.done():
        everything.cancel()
        shown.result()
        raise ChatError("The session ended.")


async def _show_all(client: SessionClient, printer: console.EventPrinter, turns: _OwnTurns) -> None:
    async for event in client.events():
        printer.show(event)
        if turns.saw(event):
            printer.prompt()


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines from stdin as they are typed (None at the end), read by a daemon thread so
    that an unfinished read never holds the process open."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                line: str | None = sys.stdin.readline()
            except (OSError, ValueError):
                line = ""
            line = line.rstrip("\n") if line else None
            try:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            except RuntimeError:  # the loop is closed: kit chat is exiting
                return
            if line is None:
                return

    threading.Thread(target=read, name="kit-chat-stdin", daemon=True).start()
    return queue
