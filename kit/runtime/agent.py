"""One session's agent: a ``ClaudeSDKClient`` owned by one task.

The SDK client must be driven by the task that connected it (anyio cancel scopes), so an
actor task connects, then runs turns posted to its inbox one at a time; HTTP handlers only
post turns and read the events back from a per-turn queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ResultMessage,
    project_key_for_directory,
)

from kit.bundle import Bundle
from kit.errors import KitError
from kit.protocol.sandbox import RuntimeEvent, TurnRequest
from kit.runtime.config import RuntimeConfig
from kit.runtime.translate import translate
from kit.storage import open_store
from kit.storage.retrying import RetryingStore

log = logging.getLogger("kit.runtime")

RECOVER_PROMPT = (
    "[kit] Your sandbox stopped before you finished answering the last user message, and a new "
    "one has taken over. Anything a tool was doing may not have completed. Carry on and finish "
    "your answer to that message; do not repeat what you already said."
)


class AgentState(enum.Enum):
    """Lifecycle of the session's agent."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPED = "stopped"


class AgentBusy(KitError):
    """A turn was posted while another one is running."""


class AgentStopped(KitError):
    """A turn was posted to an agent that is not running."""


_END = object()


@dataclass
class _Turn:
    request: TurnRequest
    out: asyncio.Queue[RuntimeEvent | object] = field(default_factory=asyncio.Queue)


class Agent:
    """Runs the session's turns on one ``ClaudeSDKClient``."""

    def __init__(self, config: RuntimeConfig, bundle: Bundle) -> None:
        self.config = config
        self.bundle = bundle
        self.state = AgentState.STARTING
        self.resumed = False
        self._inbox: asyncio.Queue[_Turn | None] = asyncio.Queue()
        self._client: ClaudeSDKClient | None = None
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None
        self._current: _Turn | None = None
        self.stored_prompts: set[str] = set()

    async def options(self) -> ClaudeAgentOptions:
        """SDK options for this session; resumes when the store already has its transcript."""
        cfg, agent = self.config, self.bundle.agent
        store = RetryingStore(
            open_store(cfg.store_url),
            on_unavailable=self._store_down,
            on_recovered=self._store_up,
        )
        cwd = str(cfg.workspace.resolve())
        key: Any = {"project_key": project_key_for_directory(cwd), "session_id": cfg.session_id}
        existing = await store.load(key)
        self.resumed = bool(existing)
        self.stored_prompts = stored_user_texts(existing or [])
        env = {
            "HOME": str(cfg.home),
            "CLAUDE_CONFIG_DIR": str(cfg.home / ".claude"),
            "ANTHROPIC_BASE_URL": cfg.model_base_url,
            "ANTHROPIC_API_KEY": cfg.model_token,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
            "CLAUDE_CODE_DISABLE_BUNDLED_SKILLS": "1",
        }
        if cfg.model_unix_socket:
            env["ANTHROPIC_UNIX_SOCKET"] = cfg.model_unix_socket
        tools = list(agent.allowed_tools)
        return ClaudeAgentOptions(
            cwd=cwd,
            system_prompt=agent.system_prompt or None,
            tools=tools,
            allowed_tools=tools,
            permission_mode="dontAsk",
            max_turns=agent.max_turns,
            model=agent.model,
            setting_sources=[],
            plugins=[{"type": "local", "path": str(self.bundle.plugin_dir)}],
            env=env,
            cli_path=cfg.cli_path,
            include_partial_messages=True,
            session_store=store,
            session_store_flush="eager",
            resume=cfg.session_id if self.resumed else None,
            session_id=None if self.resumed else cfg.session_id,
            stderr=_cli_stderr,
        )

    async def run(self) -> None:
        """The actor: connect, then run posted turns until :meth:`stop`."""
        try:
            client = ClaudeSDKClient(await self.options())
            await client.connect()
        except BaseException as exc:
            self._failure = exc
            self.state = AgentState.STOPPED
            self._ready.set()
            raise
        self._client = client
        self.state = AgentState.READY
        self._ready.set()
        try:
            while (turn := await self._inbox.get()) is not None:
                await self._run_turn(client, turn)
        finally:
            self.state = AgentState.STOPPED
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def wait_ready(self) -> None:
        """Return once the CLI is connected; raise what stopped it otherwise."""
        await self._ready.wait()
        if self._failure is not None:
            raise self._failure

    async def stream_turn(self, request: TurnRequest) -> AsyncIterator[list[RuntimeEvent]]:
        """Post a turn and yield its events through its ``result``, in batches: each batch
        is everything that was ready when the previous one was taken (the CLI emits in bursts)."""
        if self.state is AgentState.BUSY:
            raise AgentBusy("A turn is already running in this sandbox; wait for its result.")
        if self.state is not AgentState.READY:
            raise AgentStopped(f"The agent is {self.state.value}; it cannot take a turn.")
        turn = _Turn(request)
        self.state = AgentState.BUSY
        self._inbox.put_nowait(turn)
        done = False
        while not done:
            items = [await turn.out.get()]
            while not turn.out.empty():
                items.append(turn.out.get_nowait())
            done = _END in items
            batch = [item for item in items if isinstance(item, RuntimeEvent)]
            if batch:
                yield batch

    async def interrupt(self) -> bool:
        """Interrupt the running turn; false when none is running."""
        if self.state is not AgentState.BUSY or self._client is None:
            return False
        await self._client.interrupt()
        return True

    def stop(self) -> None:
        """Ask the actor to finish after the current turn."""
        self._inbox.put_nowait(None)

    def _store_down(self, message: str) -> None:
        log.warning("transcript store unavailable, retrying: %s", message)
        if self._current is not None:
            self._current.out.put_nowait(
                RuntimeEvent(
                    "store",
                    {
                        "state": "unavailable",
                        "message": "The transcript store cannot be reached; the turn waits and retries.",
                    },
                )
            )

    def _store_up(self) -> None:
        log.info("transcript store reachable again")
        if self._current is not None:
            self._current.out.put_nowait(RuntimeEvent("store", {"state": "available"}))

    async def _run_turn(self, client: ClaudeSDKClient, turn: _Turn) -> None:
        prompt = recovery_prompt(turn.request, self.stored_prompts)
        self._current = turn
        try:
            await client.query(prompt)
            async for message in client.receive_response():
                for event in translate(message):
                    turn.out.put_nowait(event)
                if isinstance(message, ResultMessage):
                    break
        except Exception as exc:  # the turn fails, the agent lives on
            log.exception("turn %s failed", turn.request.turn_id)
            turn.out.put_nowait(
                RuntimeEvent(
                    "error", {"code": "turn_failed", "message": f"The agent failed: {exc}"}
                )
            )
        finally:
            self._current = None
            self.state = AgentState.READY
            turn.out.put_nowait(_END)


def _cli_stderr(line: str) -> None:
    log.info("cli: %s", line.rstrip())


def recovery_prompt(request: TurnRequest, stored_prompts: set[str]) -> str:
    """What to send the agent for a turn.

    A recovered turn whose message reached the store is continued (the agent sees its own
    partial work); one killed before its message was stored is simply sent again.
    """
    if request.recover and request.text in stored_prompts:
        return RECOVER_PROMPT
    return request.text


def stored_user_texts(entries: list[Any]) -> set[str]:
    """The text of every user prompt in a stored transcript."""
    texts = set()
    for entry in entries:
        message = entry.get("message") if entry.get("type") == "user" else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.add(content)
        elif isinstance(content, list):
            texts.update(
                str(block.get("text"))
                for block in content
                if isinstance(block, dict) and block.get("type") == "text"
            )
    return texts
