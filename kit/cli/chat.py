"""``kit chat``: a terminal client for a running ``kit dev``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from kit.cli import console
from kit.client import SessionClient, create_session
from kit.errors import KitError


class ChatError(KitError):
    """``kit chat`` cannot find or open a session."""


@dataclass(frozen=True)
class ChatTarget:
    """Where ``kit chat`` connects."""

    url: str
    api_token: str | None
    sessions_file: Path


def find_target(state_dir: Path, url: str | None) -> ChatTarget:
    """The running ``kit dev`` for ``state_dir`` (or ``url``)."""
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
    token = token_file.read_text().strip() if token_file.is_file() else None
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


async def chat(
    target: ChatTarget, session_id: str | None, message: str | None, as_json: bool
) -> int:
    """Open (or create) a session and chat; with ``message``, one turn and exit."""
    if session_id is None:
        info = await create_session(target.url, target.api_token)
        session_id, token, ws_url = info.session_id, info.token, info.ws_url
        _save_session(target.sessions_file, session_id, token, ws_url)
        if not as_json:
            console.out(
                console.dim(f"session {session_id}  (resume it later with: kit chat {session_id})")
            )
    else:
        known = _load_sessions(target.sessions_file).get(session_id)
        if known is None:
            raise ChatError(
                f"No token for session {session_id} in {target.sessions_file}; "
                "only sessions created by `kit chat` here can be resumed by id."
            )
        token, ws_url = known["token"], known["ws_url"]
    own: set[str] = set()
    printer = console.EventPrinter(as_json=as_json, own_messages=own)
    async with SessionClient(ws_url, token) as client:
        if message is not None:
            return await _one_turn(client, printer, own, message)
        return await _interactive(client, printer, own)


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
        if event.kind == "error" and event.data.get("code") == "turn_failed":
            failed = True
    return 1 if failed else 0


async def _interactive(client: SessionClient, printer: console.EventPrinter, own: set[str]) -> int:
    loop = asyncio.get_running_loop()
    turn_done = asyncio.Event()
    shown = asyncio.create_task(_show_all(client, printer, turn_done))
    try:
        while True:
            line = await loop.run_in_executor(None, _prompt)
            if line is None or line.strip() in ("/quit", "/exit"):
                return 0
            if not line.strip():
                continue
            if line.strip() == "/interrupt":
                await client.interrupt()
                continue
            turn_done.clear()
            own.add(await client.send(line))
            await turn_done.wait()
    finally:
        shown.cancel()


async def _show_all(
    client: SessionClient, printer: console.EventPrinter, turn_done: asyncio.Event
) -> None:
    async for event in client.events():
        printer.show(event)
        if event.kind == "result" or (
            event.kind == "error" and event.data.get("code") == "turn_failed"
        ):
            turn_done.set()


def _prompt() -> str | None:
    try:
        if sys.stdin.isatty():
            return input(console.bold("you> "))
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except EOFError:
        return None
