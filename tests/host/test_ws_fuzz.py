"""Fuzz the session socket of a real host (kit dev's stack, uvicorn on port 0) against a
model of the spec (spec_model.py): thousands of messages, seeded, each answered with the
code the spec gives, never ``internal``/1011, the stored log unchanged; then a good turn
through the real SDK and CLI.

Hypothesis runs in a worker thread with a blocking WebSocket client while the host runs
on the test's event loop. After each message the test sends a ping: everything the host
sends before the pong is its whole answer, so nothing waits on a clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from kit.cli.stack import Stack
from kit.client import create_session
from tests.agents import stored_prompts
from tests.host import spec_model as spec
from tests.host.spec_model import Message, NotJson
from tests.host.wsdriver import Driver

EXAMPLES = 1000
"""Examples per run; each sends one to three connections' worth of messages (about 5,000
messages in all, plus a ping after each)."""
RECV_TIMEOUT_S = 10.0
FUZZ_TIMEOUT_S = 300.0
"""A bound on the whole run, far above what it takes: a hang fails rather than sits."""

T = TypeVar("T")

# -- what to send -----------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """A JSON number written as is (``1e999``, 5000 digits, ``-0``), with what it means."""

    text: str
    value: Any


def _literal(text: str) -> Literal:
    if any(c in text for c in ".eE"):
        return Literal(text, float(text))
    if len(text) > 40:  # past Python's int(str) limit for some: any huge int means the same
        return Literal(text, (-1 if text.startswith("-") else 1) * 10**100)
    return Literal(text, int(text))


TOKENS = ("$token", "$token-prefix", "$token-extra", "$token-surrogate")
"""Placeholders for the session's token and near misses, filled in when sent."""

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
CHARS = st.characters() | SURROGATES | st.sampled_from([" ", "\t", "\n", "\u3000", "é", "😀"])
STRINGS = st.lists(CHARS, max_size=10).map("".join)
SIZED = st.builds(lambda n, c: c * n, st.integers(0, 3) | st.integers(126, 130), CHARS)
NUMERALS = st.sampled_from(
    ["1e999", "-1e999", "1E2", "2.0", "-0", "0", "-1", "3", str(spec.MAX_SEQ), str(2**63)]
).map(_literal) | st.sampled_from(["9" * 25, "9" * 5000, "-" + "9" * 5000]).map(_literal)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | STRINGS
)
JSON: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(STRINGS, inner, max_size=3),
    max_leaves=8,
)


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Each strategy as often as its weight says (``one_of`` flattens nested ``one_of``s
    and drops repeats, so it cannot weigh)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


def _mostly(right: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> Any:
    """Three times in four a value the spec accepts, else one it may not."""
    return _weighted((3, right), (1, wrong))


VALID_STRINGS = st.text(min_size=1, max_size=8)
SEQS = _mostly(
    st.none() | st.integers(0, 5) | st.integers(1000, 1002), NUMERALS | JSON | st.integers(-2, -1)
)
TOKEN = _mostly(
    st.sampled_from(["$token"] * 3 + list(TOKENS)),
    STRINGS | st.builds(lambda n: "t" * n, st.integers(510, 514)) | JSON,
)
MSG_ID = _mostly(VALID_STRINGS, STRINGS | SIZED | JSON)
TEXT = _mostly(
    VALID_STRINGS,
    STRINGS | SIZED | st.builds(lambda n: "y" * n, st.integers(99_999, 100_001)) | JSON,
)
KEYS = st.sampled_from(["type", "token", "last_seq", "client_msg_id", "text", "seq"]) | STRINGS


def _maybe(key: str, value: st.SearchStrategy[Any]) -> st.SearchStrategy[list[tuple[str, Any]]]:
    """The field, usually; sometimes left out."""
    return _weighted((3, value.map(lambda v: [(key, v)])), (1, st.just([])))


def _frame(kind: st.SearchStrategy[Any], *fields: st.SearchStrategy[list[tuple[str, Any]]]) -> Any:
    """A frame as (key, value) pairs: ``type``, its fields, maybe an extra pair (its key
    may repeat one: the last wins), in any order."""
    parts = [
        kind.map(lambda k: [("type", k)]),
        *fields,
        st.lists(st.tuples(KEYS, JSON), max_size=1),
    ]
    return (
        st.tuples(*parts).map(lambda ps: [p for part in ps for p in part]).flatmap(st.permutations)
    )


FRAMES = _weighted(
    (3, _frame(st.just("hello"), _maybe("token", TOKEN), _maybe("last_seq", SEQS))),
    (2, _frame(st.just("user"), _maybe("client_msg_id", MSG_ID), _maybe("text", TEXT))),
    (2, _frame(st.just("ack"), _maybe("seq", SEQS))),
    (1, _frame(st.just("interrupt"))),
    (1, _frame(st.just("ping"))),
    (1, _frame(st.sampled_from(["Hello", "PING", "", "ping ", "welcome"]) | STRINGS | JSON)),
    (1, st.lists(st.tuples(KEYS, JSON), max_size=4)),  # any object, type or not
)


def _serialize(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Literal):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(_serialize(v, ascii_only) for v in value) + "]"
    if isinstance(value, dict):
        return _object(list(value.items()), ascii_only)
    return json.dumps(value, ensure_ascii=ascii_only)


def _object(pairs: list[tuple[str, Any]], ascii_only: bool) -> str:
    inner = ",".join(
        json.dumps(k, ensure_ascii=ascii_only) + ":" + _serialize(v, ascii_only) for k, v in pairs
    )
    return "{" + inner + "}"


def _as_received(text: str) -> str:
    """A string as a JSON parser gives it back: ``\\u`` escapes are UTF-16 code units, so
    an escaped surrogate pair is one character and a lone surrogate stays one."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _meaning(value: Any) -> Any:
    if isinstance(value, Literal):
        return value.value
    if isinstance(value, str):
        return _as_received(value)
    if isinstance(value, list):
        return [_meaning(v) for v in value]
    if isinstance(value, dict):
        return _meaning_of_pairs(list(value.items()))
    return value


def _meaning_of_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    meaning: dict[str, Any] = {}
    for key, value in pairs:  # a repeated key: the last one wins
        meaning[_as_received(key)] = _meaning(value)
    return meaning


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list | tuple):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


@dataclass(frozen=True)
class Frame:
    """A JSON object to send, as pairs still holding token placeholders."""

    pairs: list[tuple[str, Any]]
    ascii_only: bool
    pad: tuple[str, str]

    def fill(self, token: str) -> Message:
        pairs = [(k, _fill(v, token)) for k, v in self.pairs]
        # Surrogates can only travel as \u escapes: a WebSocket text is UTF-8.
        ascii_only = self.ascii_only or _has_surrogate(pairs)
        text = self.pad[0] + _object(pairs, ascii_only) + self.pad[1]
        return Message(text=text, value=_meaning_of_pairs(pairs))


def _fill(value: Any, token: str) -> Any:
    if isinstance(value, str) and value in TOKENS:
        return {
            "$token": token,
            "$token-prefix": token[:-1],
            "$token-extra": token + "x",
            "$token-surrogate": token + "\ud800",
        }[value]
    if isinstance(value, list):
        return [_fill(v, token) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, token) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Raw:
    """A message sent as is: ``text`` (with what it means) or ``binary``."""

    message: Message

    def fill(self, token: str) -> Message:
        return self.message


JSON_SPACE = st.text(alphabet=" \t\n\r", max_size=2)
OBJECTS = st.builds(Frame, FRAMES, st.booleans(), st.tuples(JSON_SPACE, JSON_SPACE))


def _truncated(frame: Frame) -> st.SearchStrategy[Raw]:
    text = _object(frame.pairs, True)
    return st.integers(0, len(text) - 1).map(lambda n: Raw(Message(text[:n], NotJson())))


NOT_JSON = [
    "",
    " ",
    "{",
    "[",
    "{'type':'ping'}",
    '{"type":"ping",}',
    '{"type":"ping"} x',
    '{"type":"ping"}{}',
    '{"type" "ping"}',
    "ping",
    '{"type":"pi\nng"}',
    '{"type":"\\x"}',
    '{"type":"\\ud80"}',
    '{"type":"ack","seq":01}',
    '{"type":"ack","seq":+1}',
    '{"type":"ack","seq":.5}',
    '{"type":"ack","seq":1.}',
    '{"type":"ping","x":NaN}',
    '{"type":"ack","seq":Infinity}',
    '{"type":"hello","token":"t","last_seq":-Infinity}',
    "tru",
    "nul",
    '"unterminated',
]


def _nested(depth: int, valid: bool) -> Raw:
    text = '{"type":"ping","x":' + "[" * depth + "]" * depth + "}"
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return Raw(Message(text, {"type": "ping", "x": value} if valid else NotJson()))


def _padded(target: int, char: str, kind: str) -> Raw:
    """A ``kind`` frame of about ``target`` UTF-8 bytes, padded with ``char``."""
    base = {"type": kind, "client_msg_id": "m", "text": "", "pad": ""}
    room = max(0, target - len(json.dumps(base, ensure_ascii=False).encode()))
    value = {**base, "pad": char * (room // len(char.encode()))}
    return Raw(Message(json.dumps(value, ensure_ascii=False), value))


RARE = st.one_of(
    st.integers(20_000, 60_000).map(lambda d: _nested(d, valid=False)),
    st.builds(
        _padded,
        st.integers(spec.MAX_FRAME_BYTES - 2, spec.MAX_FRAME_BYTES + 2),
        st.sampled_from(["x", "é", "😀"]),
        st.sampled_from(["ping", "user", "shout"]),
    ),
    st.integers(spec.WS_MAX_BYTES + 1, spec.WS_MAX_BYTES + 4).map(
        lambda n: Raw(Message("x" * n, NotJson()))
    ),
)
"""Deep and big messages: costly to send, and most close the connection."""
RAW = _weighted(
    (2, OBJECTS.flatmap(_truncated)),
    (2, st.sampled_from(NOT_JSON).map(lambda t: Raw(Message(t, NotJson())))),
    (
        1,
        st.lists(st.characters(exclude_categories=["Cs"]), max_size=8).map(
            lambda cs: Raw(Message("x" + "".join(cs), NotJson()))
        ),
    ),
    (1, st.integers(1, 40).map(lambda d: _nested(d, valid=True))),
    (
        1,
        JSON.filter(lambda v: not isinstance(v, dict)).map(
            lambda v: Raw(Message(_serialize(v, True), _meaning(v)))
        ),
    ),
    (1, st.binary(max_size=12).map(lambda b: Raw(Message(binary=b)))),
    (1, st.just(Raw(Message(binary=b'{"type":"ping"}')))),
    (
        1,
        st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc3", b"\xf4\x90\x80\x80"]).map(
            lambda bad: Raw(Message(not_utf8=b'{"type":"user","text":"' + bad + b'"}'))
        ),
    ),
    (1, RARE),
)
MESSAGES = _weighted((3, OBJECTS), (1, RAW))
GREET = st.sampled_from([None, None, None, 0, 1, 2, 3, -1])
"""Open with a good hello (its last_seq; -1: null) before the fuzzed messages, or not."""
TARGETS = st.sampled_from(["session"] * 6 + ["unknown", "not-a-uuid"])
CONNECTIONS = st.lists(
    st.tuples(TARGETS, GREET, st.lists(MESSAGES, min_size=1, max_size=6)), min_size=1, max_size=3
)

# -- sending and checking ---------------------------------------------------------------


class Target:
    """The host, the session under test and what its log held at the start; ``run`` runs
    a coroutine on the host's loop."""

    def __init__(self, stack: Stack, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self.stack = stack
        self.run = run
        self.base_ws = stack.url.replace("http", "ws", 1)
        self.session, self.before = run(_populated_session(stack))

    def url(self, target: str) -> str:
        sid = {
            "session": self.session.session_id,
            "unknown": str(uuid.uuid4()),
            "not-a-uuid": "Not-A-Session",
        }[target]
        return f"{self.base_ws}/v1/sessions/{sid}/ws"

    def check_stored(self) -> None:
        """Fail if the session's log changed; later examples (and the shrinker's replays)
        then get a fresh session, so they fail for their own reasons only."""
        if self.run(_stored(self.stack, self.session.session_id)) != self.before:
            self.session, self.before = self.run(_populated_session(self.stack))
            raise AssertionError("the stored log changed")


Stored = tuple[Any, list[Any]]


async def _stored(stack: Stack, session_id: str) -> Stored:
    """The session's stored log, read without loading it: its summary and its events."""
    summary = await stack.host.logs.summary(session_id)  # type: ignore[arg-type]
    events = await stack.host.logs.read_events(session_id)  # type: ignore[arg-type]
    return summary, events or []


async def _populated_session(stack: Stack) -> tuple[spec.Session, Stored]:
    """A new session holding three events and no turn: its model and its stored log."""
    info = await create_session(stack.url, stack.api_token)
    live = await stack.host.get(info.session_id)
    assert live is not None
    texts = ["Hi \U0001f600", "nul \x00 inside", "é" * 3]
    await live.emit_many([("text_delta", {"text": t}) for t in texts], None)
    stored = await _stored(stack, info.session_id)
    events = [
        {"seq": e.seq, "kind": e.kind, "data": e.data, "ts": e.ts, "turn_id": e.turn_id}
        for e in stored[1]
    ]
    return spec.Session(info.session_id, info.token, events), stored


def _recv(ws: ClientConnection) -> dict[str, Any]:
    raw = ws.recv(timeout=RECV_TIMEOUT_S)
    frame: dict[str, Any] = json.loads(raw)
    return frame


def _send(ws: ClientConnection, message: Message) -> None:
    if message.binary is not None:
        ws.send(message.binary)
    elif message.not_utf8 is not None:
        ws.send(message.not_utf8, text=True)
    else:
        assert message.text is not None
        ws.send(message.text)


def _closed_with(ws: ClientConnection) -> int | None:
    try:
        for _ in range(3):
            frame = _recv(ws)
            raise AssertionError(f"expected a close, got {frame}")
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    return None


def _exchange(ws: ClientConnection, message: Message, expected: spec.Answer) -> bool:
    """Send ``message`` and check the host's whole answer; true if it closed."""
    where = f"sent {message.text[:200] if message.text is not None else message!r}"
    try:
        _send(ws, message)
        if expected.close is None:
            ws.send('{"type":"ping"}')
    except ConnectionClosed:
        pass  # the transport refused it mid-send: the close code says why
    got = []
    try:
        for _ in range(len(expected.frames) + (expected.close is None)):
            got.append(_recv(ws))
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        assert code != 1011, f"{where}: the host failed (1011) after {got}"
        assert expected.close is not None, f"{where}: closed {code} after {got}"
        assert len(got) == len(expected.frames), f"{where}: closed {code} after {got}"
        assert code == expected.close, f"{where}: closed {code}, expected {expected.close}"
        return True
    assert all(f.get("code") != "internal" for f in got), f"{where}: {got}"
    answer, pong = (got, None) if expected.close is not None else (got[:-1], got[-1])
    assert len(answer) == len(expected.frames), f"{where}: got {got}, expected {expected}"
    for want, frame in zip(expected.frames, answer, strict=True):
        assert spec.matches(want, frame), f"{where}: got {frame}, expected {want}"
    if expected.close is None:
        assert pong == {"type": "pong"}, f"{where}: got {got}, expected {expected} then pong"
        return False
    code = _closed_with(ws)
    assert code == expected.close, f"{where}: closed {code}, expected {expected.close}"
    return True


def _connection(
    target: Target, where: str, greet: int | None, messages: list[Any], seen: Counter[str]
) -> None:
    """One connection: each message's answer checked against the model (counted in
    ``seen``), then a last ping, unless the host closed it."""
    conn = spec.Connection(target.session if where == "session" else None)
    token = target.session.token
    if greet is not None:
        hello = {"type": "hello", "token": token, "last_seq": None if greet < 0 else greet}
        messages = [Raw(Message(json.dumps(hello), hello)), *messages]
    with connect(target.url(where), max_size=2**24, open_timeout=RECV_TIMEOUT_S) as ws:
        for item in messages:
            message = item.fill(token)
            expected = spec.answer(message, conn)
            if expected.stores:
                continue  # a valid new message would be applied: not what this test sends
            seen[_kind(expected)] += 1
            if _exchange(ws, message, expected):
                return
        _exchange(ws, Message('{"type":"ping"}', {"type": "ping"}), spec.Answer([{"type": "pong"}]))


def _kind(answer: spec.Answer) -> str:
    """What an answer is, for counting: its first frame's code or type (and resume mode),
    and its close code."""
    first = answer.frames[0] if answer.frames else {}
    name = first.get("code") or first.get("type") or "nothing"
    if first.get("type") == "welcome":
        name += " " + first["resume"]
    return name if answer.close is None else f"{name} {answer.close}"


EVERY_ANSWER = {
    "bad_json",
    "bad_frame",
    "unknown_type",
    "too_large 1009",
    "nothing 1009",  # over the transport's limit
    "nothing 1007",  # not UTF-8: the transport refuses it
    "hello_required",
    "already_hello",
    "unauthorized 4401",
    "unknown_session 4404",
    "seq_ahead 4400",
    "welcome none",
    "welcome resuming",
    "event",  # the replay after an ack
    "nothing",  # an ack once live
    "pong",
    "interrupt_ack",
}
"""What the run must have asked for at least once, or the generator has gone blind."""


def _fuzz(target: Target) -> Counter[str]:
    """Run the examples; how often each kind of answer was checked."""
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=timedelta(seconds=RECV_TIMEOUT_S),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(CONNECTIONS)
    def example(connections: list[tuple[str, int | None, list[Any]]]) -> None:
        for where, greet, messages in connections:
            _connection(target, where, greet, messages, seen)
        target.check_stored()

    example()
    return seen


async def test_fuzzed_frames_get_the_spec_answer_and_change_nothing(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Thousands of fuzzed messages (bad JSON, wrong types, lone surrogates, huge numbers,
    oversized frames, binary, bad tokens, unknown ids, frames out of order) each get
    exactly the answer and close code the spec gives, never internal/1011 or a traceback;
    the stored log does not change; then a good turn runs through the real SDK and CLI."""
    loop = asyncio.get_running_loop()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(RECV_TIMEOUT_S)

    with caplog.at_level(logging.WARNING, logger="kit"):
        async with asyncio.timeout(FUZZ_TIMEOUT_S):
            target = await asyncio.to_thread(Target, stack, run)
            seen = await asyncio.to_thread(_fuzz, target)
    assert sum(seen.values()) >= 3000, seen
    assert set(seen) >= EVERY_ANSWER, EVERY_ANSWER - set(seen)
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR and not _known(r)]
    assert faults == [], [r.getMessage() for r in faults]
    session = target.session
    assert await _stored(stack, session.session_id) == target.before
    assert not (stack.transcripts_dir / session.session_id).exists()  # no sandbox ever ran
    await _good_turn(stack, target, len(session.events))


def _known(record: logging.LogRecord) -> bool:
    """uvicorn logs each text message that is not UTF-8 with a traceback before it closes
    the socket with 1007 (its websockets-sansio transport, in front of kit): noisy, but
    not kit's to quiet. Any other error record is a fault."""
    return record.name == "uvicorn.error" and record.getMessage().startswith("Invalid UTF-8")


async def _good_turn(stack: Stack, target: Target, last: int) -> None:
    """One message after the fuzz: its turn runs to a result and is the only prompt stored."""
    session_id = target.session.session_id
    driver = await Driver.open(target.url("session"))
    await driver.send({"type": "hello", "token": target.session.token, "last_seq": last})
    assert (await driver.recv())["resume"] == "none"
    await driver.send({"type": "user", "client_msg_id": "after-fuzz", "text": "hello again"})
    async with asyncio.timeout(180):
        frames = await driver.until("result")
    await driver.close()
    assert [f["data"]["code"] for f in frames if f.get("kind") == "error"] == []
    assert frames[-1]["data"]["is_error"] is False
    _, events = await _stored(stack, session_id)
    assert [e.data["text"] for e in events if e.kind == "user"] == ["hello again"]
    assert await stored_prompts(Path(stack.settings.state_dir), session_id) == {"hello again"}
