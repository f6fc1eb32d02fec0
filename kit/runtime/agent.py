"""One session's agent: a ``ClaudeSDKClient`` owned by one task.

The SDK client must be driven by the task that connected it (anyio cancel scopes), so an
actor task connects, then runs turns posted to its inbox one at a time; HTTP handlers only
post turns and read the events back from a per-turn queue.

The transcript store is wrapped in :class:`RetryingStore`, whose health changes become
``store`` events of the running turn (a change between turns is reported when the next
turn starts). A turn's ``result`` is held while any transcript entries are held for
back-fill (ARCHITECTURE §4.4), for up to ``store_deadline_s`` from the moment the turn
began waiting for the store; past that the turn ends with ``store`` ``gave_up`` and an
``error`` ``turn_failed`` instead, and the entries are still written when the store returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Any

from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLIConnectionError,
    ProcessError,
    ResultError,
    ResultMessage,
)

from kit.bundle import Bundle
from kit.hoptrace import hop
from kit.protocol.runtime_api import RuntimeEvent, TurnRequest
from kit.protocol.runtime_config import RuntimeConfig
from kit.protocol.turns import TURN_FAILED
from kit.runtime.certs import intercepted_tls_env
from kit.runtime.egress_forwarder import proxy_env
from kit.runtime.errors import AgentRuntimeError
from kit.runtime.translate import translate
from kit.storage import open_store
from kit.storage.portable import PROJECT_KEY, PortableKeys
from kit.storage.retrying import RetryingStore, StoreHealth

log = logging.getLogger("kit.runtime")

RECOVER_PROMPT = (
    "[kit] Your sandbox stopped before you finished answering the last user message, and a new "
    "one has taken over. Anything a tool was doing may not have completed. Carry on and finish "
    "your answer to that message; do not repeat what you already said."
)

PROMPT_ID_NAMESPACE = uuid.UUID("5b1d4c1e-7a0f-4f4e-9c3a-6b2f0d8e1a47")
"""The namespace of :func:`prompt_id`'s uuids (fixed: stored transcripts depend on it)."""


class AgentState(enum.Enum):
    """Lifecycle of the session's agent."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPED = "stopped"


class AgentBusy(AgentRuntimeError):
    """A turn was posted while another one is running."""


class AgentStopped(AgentRuntimeError):
    """A turn was posted to an agent that is not running."""


class HarnessDied(AgentRuntimeError):
    """The agent harness (the CLI process) died under the runtime: this sandbox can take no
    more turns. The runtime exits with ``HARNESS_EXIT_CODE`` and the host recovers the turn
    in a new sandbox (a fork storm at ``pids.max`` can make the CLI abort, for one)."""


_END = object()
CLOSE_GRACE_S = 5.0
"""At shutdown, how long held transcript entries get to reach the store."""


@dataclass
class _Turn:
    request: TurnRequest
    out: asyncio.Queue[RuntimeEvent | object] = field(default_factory=asyncio.Queue)
    store_wait_since: float | None = None
    """When this turn began waiting for the transcript store (monotonic), if it has."""


class Agent:
    """Runs the session's turns on one ``ClaudeSDKClient``."""

    def __init__(
        self, config: RuntimeConfig, bundle: Bundle, *, egress_proxy: str | None = None
    ) -> None:
        self.config = config
        self.bundle = bundle
        self.egress_proxy = egress_proxy
        """The proxy URL the CLI and its tools get as ``HTTPS_PROXY`` (see
        :mod:`kit.runtime.egress_forwarder`); None: no proxy settings."""
        self.state = AgentState.STARTING
        self.resumed = False
        self._inbox: asyncio.Queue[_Turn | None] = asyncio.Queue()
        self._client: ClaudeSDKClient | None = None
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None
        self._current: _Turn | None = None
        self.prompt_ids: set[str] = set()
        """The uuids of the user prompts the CLI holds: those of the stored transcript it
        resumed, and those sent since (see :func:`prompt_id`)."""
        self.finished: str | None = None
        """The stored transcript's final answer to its latest prompt, if it has one: a
        sandbox killed between storing it and reporting the turn's result."""
        self.store: RetryingStore | None = None
        self._reported: StoreHealth | None = StoreHealth.AVAILABLE
        """The store health clients last heard of (None: a turn gave up on the store)."""

    async def options(self) -> ClaudeAgentOptions:
        """SDK options for this session; resumes when the store already has its transcript."""
        cfg, agent = self.config, self.bundle.agent
        store = self.store = RetryingStore(
            PortableKeys(open_store(cfg.store_url, token=cfg.store_auth)),
            max_wait_s=cfg.store_retry_s,
            on_change=self._store_changed,
        )
        cwd = str(cfg.workspace.resolve())
        key: Any = {"project_key": PROJECT_KEY, "session_id": cfg.session_id}
        existing = await store.load(key)
        self.resumed = bool(existing)
        self.prompt_ids = stored_prompt_ids(existing or [])
        self.finished = finished_answer(existing or [])
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
        if self.egress_proxy:
            env.update(proxy_env(self.egress_proxy))
        env.update(intercepted_tls_env(cfg.home))
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
                if self._failure is not None:
                    raise self._failure
        finally:
            self.state = AgentState.STOPPED
            with contextlib.suppress(Exception):
                await client.disconnect()
            if self.store is not None:
                lost = await self.store.aclose(CLOSE_GRACE_S)
                if lost:
                    log.error(
                        "%d transcript entries never reached the store: it stayed unreachable "
                        "until this sandbox stopped",
                        lost,
                    )

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

    def _store_changed(self, health: StoreHealth, message: str) -> None:
        level = logging.INFO if health is StoreHealth.AVAILABLE else logging.WARNING
        log.log(level, "transcript store %s: %s", health.value, message)
        if self._current is not None:
            self._report_store(self._current, health)

    def _report_store(self, turn: _Turn, health: StoreHealth) -> None:
        """Tell the turn's clients how the transcript store is doing."""
        self._reported = health
        data: dict[str, Any] = {"state": health.value}
        if health is StoreHealth.UNAVAILABLE:
            data["message"] = (
                "The transcript store cannot be reached; the turn waits and retries "
                f"(up to {self.config.store_retry_s:.0f} s per write)."
            )
        elif health is StoreHealth.HOLDING:
            held = self.store.held if self.store is not None else 0
            data["entries"] = held
            data["message"] = (
                f"The transcript store is still unreachable. The agent holds {held} transcript "
                "entries and writes them when the store answers; the turn's result waits for "
                f"that (up to {self.config.store_deadline_s:.0f} s in all)."
            )
        if health is not StoreHealth.AVAILABLE and turn.store_wait_since is None:
            turn.store_wait_since = time.monotonic()
        turn.out.put_nowait(RuntimeEvent("store", data))

    async def _transcript_stored(self, turn: _Turn) -> bool:
        """Hold the turn's result until its transcript is in the store, for up to the
        deadline; past it, end the turn with ``store gave_up`` and ``error turn_failed``."""
        store = self.store
        if store is None or not store.held:
            return True
        now = time.monotonic()
        since = turn.store_wait_since if turn.store_wait_since is not None else now
        if await store.settled(since + self.config.store_deadline_s - now):
            return True
        waited, held = time.monotonic() - since, store.held
        log.error(
            "turn %s: the transcript store is still down after %.0f s; giving up the turn",
            turn.request.turn_id,
            waited,
        )
        self._reported = None
        turn.out.put_nowait(
            RuntimeEvent(
                "store",
                {
                    "state": "gave_up",
                    "entries": held,
                    "message": (
                        f"The transcript store was unreachable for {waited:.0f} s, so this turn "
                        "could not be saved and ends without a result. The agent keeps its "
                        f"{held} unsaved transcript entries and writes them as soon as the store "
                        "answers (they are lost only if the sandbox stops first). Send your next "
                        "message once the store is back: the agent still has this turn in mind."
                    ),
                },
            )
        )
        turn.out.put_nowait(
            RuntimeEvent(
                "error",
                {
                    "code": TURN_FAILED,
                    "message": (
                        "The turn was ended because its transcript could not be saved: the "
                        f"transcript store was unreachable for {waited:.0f} s."
                    ),
                },
            )
        )
        return False

    async def _run_turn(self, client: ClaudeSDKClient, turn: _Turn) -> None:
        prompt_uuid = prompt_id(self.config.session_id, turn.request.turn_id)
        prompt, continuing = recovery_prompt(turn.request, prompt_uuid, self.prompt_ids)
        self._current = turn
        store = self.store
        if store is not None and store.health is not self._reported:
            self._report_store(turn, store.health)  # it changed since clients last heard
        try:
            if continuing and self.finished is not None:
                # The answer is complete in the transcript: the turn ends with it, not with a
                # model asked to "carry on" after its own final answer.
                turn.out.put_nowait(RuntimeEvent("result", recovered_result(self.finished)))
                self.finished = None
                return
            self.finished = None
            message_uuid: str | None = None
            if not continuing and prompt_uuid in self.prompt_ids:
                # The CLI drops, without a word, a message under a uuid it holds: the turn
                # would wait forever. A fresh turn whose uuid is taken (its id used again,
                # e.g. after an event log was lost) goes under a uuid of the CLI's choosing.
                log.warning("turn %s: its prompt's uuid is taken; sent without it", prompt_uuid)
            elif not continuing:
                message_uuid = prompt_uuid
            await client.query(_one_message(prompt, message_uuid))
            hop("runtime: prompt written to the CLI")
            if message_uuid is not None:
                self.prompt_ids.add(message_uuid)  # the CLI holds it now
            async for message in client.receive_response():
                if isinstance(message, ResultMessage) and not await self._transcript_stored(turn):
                    break
                for event in translate(message):
                    hop("runtime: event from the CLI")
                    turn.out.put_nowait(event)
                if isinstance(message, ResultMessage):
                    break
        except (ProcessError, CLIConnectionError) as exc:
            # The CLI is gone, and with it this sandbox's use: the runtime exits after the
            # turn. A CLI that ended the turn with an error of its own (ResultError) fails
            # it; one that died under it (a signal, a crash) ends the stream without an end
            # event, which the host takes for a lost sandbox: a new one carries the turn on.
            log.error("turn %s: the agent harness died: %s", turn.request.turn_id, exc)
            self._failure = HarnessDied(f"The agent harness died: {exc}")
            self.state = AgentState.STOPPED
            if isinstance(exc, ResultError):
                turn.out.put_nowait(
                    RuntimeEvent(
                        "error", {"code": TURN_FAILED, "message": f"The agent failed: {exc}"}
                    )
                )
        except Exception as exc:  # the turn fails, the agent lives on
            log.exception("turn %s failed", turn.request.turn_id)
            turn.out.put_nowait(
                RuntimeEvent("error", {"code": TURN_FAILED, "message": f"The agent failed: {exc}"})
            )
        finally:
            self._current = None
            if self._failure is None:
                self.state = AgentState.READY
            turn.out.put_nowait(_END)


def _cli_stderr(line: str) -> None:
    log.info("cli: %s", line.rstrip())


def prompt_id(session_id: str, turn_id: str) -> str:
    """The uuid a turn's prompt gets in the transcript: the same on every attempt at the
    turn, and another turn's never, so a recovery can tell this turn's message in the store
    from an earlier one with the same text."""
    return str(uuid.uuid5(PROMPT_ID_NAMESPACE, f"{session_id}/{turn_id}"))


async def _one_message(prompt: str, uuid: str | None) -> AsyncIterator[dict[str, Any]]:
    """The user message ``ClaudeSDKClient.query`` would send for ``prompt``, under ``uuid``
    (the CLI stores it so; None: the CLI picks one). A recovery prompt has none: a turn
    recovered twice sends it twice, and the CLI drops a message whose uuid it holds."""
    message: dict[str, Any] = {
        "type": "user",
        "message": {"role": "user", "content": prompt},
        "parent_tool_use_id": None,
    }
    if uuid is not None:
        message["uuid"] = uuid
    yield message


def recovery_prompt(
    request: TurnRequest, prompt_uuid: str, prompt_ids: Collection[str]
) -> tuple[str, bool]:
    """What to send the agent for a turn, and whether that continues the turn, given the
    uuids of the user prompts the CLI holds (:func:`stored_prompt_ids`); ``prompt_uuid``
    is the turn's :func:`prompt_id`.

    A recovered turn whose message reached the store is continued (the agent sees its own
    partial work); one stopped before its message was stored is simply sent again. Its
    message is in the store when its uuid is: matched on the turn, not on the
    text, so a repeated question ("yes", twice) stopped before it was stored is asked again,
    not taken for the earlier one and answered with that one's answer.
    """
    if request.recover and prompt_uuid in prompt_ids:
        return RECOVER_PROMPT, True
    return request.text, False


def stored_prompt_ids(entries: list[Any]) -> set[str]:
    """The transcript uuids of every user prompt in a stored transcript."""
    return {str(entry.get("uuid")) for entry in entries if _prompt_texts(entry)}


def stored_user_prompts(entries: list[Any]) -> list[str]:
    """The text of every user prompt in a stored transcript, in order (tool results and
    the CLI's own ``isMeta`` messages, such as a skill's body, which the transcript also
    stores as user messages, left out)."""
    return [text for entry in entries for text in _prompt_texts(entry)]


def _prompt_texts(entry: Any) -> list[str]:
    """The texts of a user message a person (or kit's recovery) wrote; empty for anything
    else (a tool result, a meta message, an assistant entry)."""
    if entry.get("type") != "user" or entry.get("isMeta"):
        return []
    message = entry.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [
        str(block.get("text"))
        for block in content
        if isinstance(block, dict) and block.get("type") == "text"
    ]


def finished_answer(entries: list[Any]) -> str | None:
    """The text of the final answer to the transcript's latest prompt, or None when the
    agent had not finished it (it ends in a tool call, a tool result, or nothing)."""
    last: Any = None
    for entry in entries:
        kind = entry.get("type")
        if _prompt_texts(entry):
            last = None
        elif kind == "assistant" or (kind == "user" and not entry.get("isMeta")):
            last = entry  # a tool result after an answer reopens the turn
    message = last.get("message") if last is not None and last.get("type") == "assistant" else None
    if not isinstance(message, dict) or message.get("stop_reason") != "end_turn":
        return None
    final_id = message.get("id")
    if final_id is None:
        return _texts(message) or None
    parts = [  # the final message may be stored as one entry per content block
        _texts(entry["message"])
        for entry in entries
        if entry.get("type") == "assistant"
        and isinstance(entry.get("message"), dict)
        and entry["message"].get("id") == final_id
    ]
    return "\n\n".join(p for p in parts if p) or None


def _texts(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n\n".join(
        str(b.get("text"))
        for b in content or []
        if isinstance(b, dict) and b.get("type") == "text" and b.get("text")
    )


def recovered_result(text: str) -> dict[str, Any]:
    """A ``result`` for a turn whose final answer was already in the transcript."""
    return {
        "is_error": False,
        "subtype": "success",
        "text": text,
        "num_turns": 0,
        "duration_ms": 0,
        "stop_reason": "end_turn",
        "total_cost_usd": 0.0,
        "usage": {},
        "recovered": True,
    }


def stored_user_texts(entries: list[Any]) -> set[str]:
    """The text of every user prompt in a stored transcript."""
    return set(stored_user_prompts(entries))
