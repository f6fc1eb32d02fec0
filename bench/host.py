"""Session host vs Durable Object: one load driver for kit's host, a DO under `wrangler dev`
and kit's Cloudflare shim under `wrangler dev`.

    .venv/bin/python bench/host.py [--target kit|do|shim|both|all] [--messages 500]
        [--burst 10000] [--clients 10] [--replay 10000] [--sessions 100] [--per-session 20]
        [--per-commit 100]

Targets (``both`` is kit and do; ``all`` adds shim): ``kit`` is one kit session host
process (bench/kit_host.py: SessionHost + kit.host.app on uvicorn, SQLite event log in a
temp dir, synthetic in-process runtimes); ``do`` is the reference Durable Object in
bench/do_host under ``wrangler dev --local`` (tools installed by scripts/setup-workers, which
this script runs when they are missing); ``shim`` is kit's Cloudflare host (worker_shim/:
Worker + SessionDO) under ``wrangler dev`` as ``kit dev --target cloudflare`` runs it, its
containers synthetic runtimes behind kit's container emulator (bench/shim_containers.py).
All run the same synthetic turn (bench/synthetic_runtime.py): ``burst N [per_commit]`` → N
``text_delta`` events and a ``result``, ``per_commit`` events to a commit (to a runtime
chunk for kit and the shim); any other text → one ``text_delta`` and a ``result``.
Measured from the client side over real WebSockets:

(a) one ``user`` frame → its ``user`` event, p50/p95/p99 over ``--messages`` sequential
    messages (each waits for its turn's ``result``; the ``result`` time is printed too);
(b) a ``--burst``-event turn delivered to 1 and to ``--clients`` connected clients: events/s
    at the clients, from the ``user`` frame to the last client's ``result``;
(c) replay of ``--replay`` events on a fresh connection (hello last_seq 0 → ack → the whole
    log): time to receive all, median of ``--replay-reps``;
(d) ``--sessions`` sessions x ``--per-session`` messages at once (each session one client
    sending its next message on the previous ``result``): aggregate turn events/s;
(e) ``--sessions`` sessions opened one after the other: ``POST /v1/sessions``, then the
    WebSocket's opening handshake and hello → welcome, p50/p99 of each.

Every client checks every event it gets: seq = previous + 1 from its hello's last_seq, no
gap, no duplicate, and each client of a session ends on the same seq. Any breach stops the
run with an error (exit 1). Prints the figures, the host's RSS and CPU, and this command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from host_targets import (
    BenchError,
    Running,
    cpu_s,
    do_target,
    kit_target,
    rss_mib,
    shim_target,
)
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from kit.durability import Durability
from kit.protocol.errors import CLOSE_NORMAL

FRAME_TIMEOUT_S = 60.0
"""The longest wait for any one frame."""
MAX_FRAMES_PER_TURN = 2_000_000


@dataclass(frozen=True)
class Sizes:
    """How much load each measure puts on a host."""

    messages: int = 500
    warmup: int = 20
    burst: int = 10_000
    clients: int = 10
    replay: int = 10_000
    replay_reps: int = 5
    sessions: int = 100
    per_session: int = 20
    per_commit: int = 100


# --- the client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionInfo:
    """A created session."""

    session_id: str
    token: str
    ws_url: str


async def create_session(http: httpx.AsyncClient, running: Running) -> SessionInfo:
    """POST /v1/sessions."""
    answer = await http.post(
        f"{running.url}/v1/sessions", headers={"authorization": f"Bearer {running.api_token}"}
    )
    if answer.status_code != 201:
        raise BenchError(f"POST /v1/sessions answered {answer.status_code}: {answer.text[:300]}")
    body = answer.json()
    return SessionInfo(body["session_id"], body["token"], body["ws_url"])


class Wire(asyncio.Protocol):
    """A client WebSocket: websockets' sans-I/O protocol under a bare asyncio protocol.

    Frames are parsed in bulk as bytes arrive, so the driver spends a few µs per event
    rather than the ~15 µs of a ``recv()`` call each; with 10 clients on a 2-CPU machine the
    driver would otherwise be what is measured.
    """

    def __init__(self, url: str) -> None:
        self.proto = ClientProtocol(parse_uri(url), max_size=2**24)
        self.transport: asyncio.Transport | None = None
        self.texts: deque[bytes] = deque()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: str | None = None
        self._wake: asyncio.Future[None] | None = None
        self._partial: list[bytes] = []

    @classmethod
    async def open(cls, url: str) -> Wire:
        """Connect and complete the opening handshake."""
        uri = parse_uri(url)
        _, wire = await asyncio.get_running_loop().create_connection(
            lambda: cls(url), uri.host, uri.port
        )
        wire.proto.send_request(wire.proto.connect())
        wire._flush()
        await asyncio.wait_for(wire.opened, FRAME_TIMEOUT_S)
        return wire

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Response):
                exc = self.proto.handshake_exc
                if exc is None:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(BenchError(f"WebSocket handshake failed: {exc}"))
            elif not isinstance(event, Frame):
                continue
            elif event.opcode is Opcode.TEXT or event.opcode is Opcode.CONT:
                self._partial.append(bytes(event.data))
                if event.fin:
                    self.texts.append(b"".join(self._partial))
                    self._partial.clear()
            elif event.opcode is Opcode.CLOSE:
                self.lost = (
                    f"closed by the host ({self.proto.close_code} {self.proto.close_reason})"
                )
        self._flush()  # pongs and the closing handshake
        self._wakeup()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.lost or f"connection lost ({exc})"
        if not self.opened.done():
            self.opened.set_exception(BenchError(f"WebSocket closed during the handshake: {exc}"))
        self._wakeup()

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.proto.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def send(self, text: str) -> None:
        """Send one text message."""
        self.proto.send_text(text.encode())
        self._flush()

    async def recv(self) -> bytes:
        """The next text message; waits only when none has arrived yet."""
        for _ in range(1_000_000):
            if self.texts:
                return self.texts.popleft()
            if self.lost is not None:
                raise ConnectionError(self.lost)
            self._wake = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._wake, FRAME_TIMEOUT_S)
        raise ConnectionError("no message after a million wake-ups")

    def close(self) -> None:
        """Start the closing handshake and drop the connection."""
        if self.lost is None:
            self.proto.send_close(CLOSE_NORMAL)
            self._flush()
        if self.transport is not None:
            self.transport.close()


class Client:
    """One WebSocket to a session that checks every event (seq = previous + 1)."""

    def __init__(self, wire: Wire, label: str, last_seq: int) -> None:
        self.wire = wire
        self.label = label
        self.last_seq = last_seq
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(cls, info: SessionInfo, label: str, last_seq: int = 0) -> Client:
        """Open the socket, say hello, take the welcome, ack when the host waits for it."""
        client = cls(await Wire.open(info.ws_url), label, last_seq)
        client.send({"type": "hello", "token": info.token, "last_seq": last_seq})
        welcome = await client._frame()
        if welcome.get("type") != "welcome":
            raise BenchError(f"{label}: expected welcome, got {welcome}")
        client.welcome = welcome
        if welcome["resume"] != "none":
            client.send({"type": "ack", "seq": last_seq})
        return client

    def send(self, frame: dict[str, Any]) -> None:
        self.wire.send(json.dumps(frame))

    def say(self, client_msg_id: str, text: str) -> None:
        """Send a user frame."""
        self.send({"type": "user", "client_msg_id": client_msg_id, "text": text})

    async def _frame(self) -> dict[str, Any]:
        try:
            raw = await self.wire.recv()
        except TimeoutError:
            raise BenchError(f"{self.label}: no frame for {FRAME_TIMEOUT_S:g} s") from None
        except ConnectionError as exc:
            raise BenchError(f"{self.label}: {exc}") from None
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def event(self) -> dict[str, Any]:
        """The next event; BenchError on a gap, a duplicate or an error frame."""
        for _ in range(1000):
            frame = await self._frame()
            kind = frame.get("type")
            if kind == "event":
                seq = frame["seq"]
                if seq != self.last_seq + 1:
                    what = "a duplicate" if seq <= self.last_seq else "a gap"
                    raise BenchError(f"{self.label}: seq {seq} after {self.last_seq}: {what}")
                self.last_seq = seq
                return frame
            if kind == "error":
                raise BenchError(f"{self.label}: error frame {frame}")
        raise BenchError(f"{self.label}: 1000 frames and no event")

    async def turn(self, client_msg_id: str) -> tuple[float, float, int]:
        """Read until the result of the turn opened by ``client_msg_id``.

        Returns (time its user event arrived, time its result arrived, events of the turn).
        """
        turn_id: str | None = None
        user_at, count = 0.0, 0
        for _ in range(MAX_FRAMES_PER_TURN):
            event = await self.event()
            if turn_id is None:
                if event["kind"] == "user" and event["data"]["client_msg_id"] == client_msg_id:
                    turn_id, user_at, count = event["turn_id"], time.perf_counter(), 1
                continue
            if event["turn_id"] == turn_id and event["kind"] != "sandbox":  # the 1st starts one
                count += 1
                if event["kind"] == "result":
                    return user_at, time.perf_counter(), count
        raise BenchError(f"{self.label}: no result for {client_msg_id}")

    def close(self) -> None:
        self.wire.close()


# --- the measures ---------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def same_end(clients: list[Client]) -> None:
    """Every client of one session ended on the same seq."""
    ends = {c.last_seq for c in clients}
    if len(ends) != 1:
        raise BenchError(f"clients of one session ended on different seqs: {sorted(ends)}")


async def measure_latency(http: httpx.AsyncClient, r: Running, sizes: Sizes) -> dict[str, Any]:
    """(a) user frame → its user event (and → its result), sequential messages."""
    client = await Client.connect(await create_session(http, r), "latency")
    to_user: list[float] = []
    to_result: list[float] = []
    for i in range(sizes.warmup + sizes.messages):
        msg_id = f"lat-{i}"
        sent = time.perf_counter()
        client.say(msg_id, "hello")
        user_at, result_at, count = await client.turn(msg_id)
        if count != 3:
            raise BenchError(f"latency: turn {msg_id} had {count} events, not 3")
        if i >= sizes.warmup:
            to_user.append((user_at - sent) * 1000)
            to_result.append((result_at - sent) * 1000)
    client.close()
    return {
        "messages": sizes.messages,
        "user_ms": {q: pct(to_user, q) for q in (50, 95, 99)},
        "user_mean_ms": statistics.mean(to_user),
        "result_ms": {q: pct(to_result, q) for q in (50, 95, 99)},
    }


async def measure_burst(
    http: httpx.AsyncClient, r: Running, sizes: Sizes, clients: int
) -> dict[str, Any]:
    """(b) one burst turn, every event to ``clients`` clients."""
    info = await create_session(http, r)
    readers = [await Client.connect(info, f"burst{clients}-{k}") for k in range(clients)]
    sent = time.perf_counter()
    readers[0].say("burst", f"burst {sizes.burst} {sizes.per_commit}")
    done = await asyncio.gather(*(c.turn("burst") for c in readers))
    end = max(result_at for _, result_at, _ in done)
    events = sizes.burst + 2
    for c, (_, _, count) in zip(readers, done, strict=True):
        if count != events:
            raise BenchError(f"{c.label}: the burst turn had {count} events, not {events}")
    same_end(readers)
    for c in readers:
        c.close()
    seconds = end - sent
    return {
        "clients": clients,
        "events": events,
        "seconds": seconds,
        "per_client_eps": events / seconds,
        "total_eps": events * clients / seconds,
        "first_user_event_ms": (min(u for u, _, _ in done) - sent) * 1000,
    }


async def measure_replay(http: httpx.AsyncClient, r: Running, sizes: Sizes) -> dict[str, Any]:
    """(c) a fresh connection (hello last_seq 0) receives the whole log."""
    info = await create_session(http, r)
    writer = await Client.connect(info, "replay-writer")
    writer.say("fill", f"burst {max(0, sizes.replay - 2)} {sizes.per_commit}")
    await writer.turn("fill")
    writer.close()
    times = []
    events = 0
    for rep in range(sizes.replay_reps):
        started = time.perf_counter()
        client = await Client.connect(info, f"replay-{rep}", last_seq=0)
        events = client.welcome["last_seq"]
        if client.welcome["resume"] != "resuming":
            raise BenchError(f"replay: resume mode {client.welcome['resume']}, not resuming")
        for _ in range(events):
            event = await client.event()
            if event["replay"] is not True:
                raise BenchError(f"replay: seq {event['seq']} came live, not replayed")
        times.append(time.perf_counter() - started)
        if client.last_seq != writer.last_seq:
            raise BenchError(f"replay ended on {client.last_seq}, the log on {writer.last_seq}")
        client.close()
    median = statistics.median(times)
    return {
        "events": events,
        "reps": sizes.replay_reps,
        "median_s": median,
        "max_s": max(times),
        "eps": events / median,
    }


async def measure_many(http: httpx.AsyncClient, r: Running, sizes: Sizes) -> dict[str, Any]:
    """(d) many sessions, each one client chatting, all at once."""
    infos = await asyncio.gather(*(create_session(http, r) for _ in range(sizes.sessions)))
    clients = await asyncio.gather(
        *(Client.connect(info, f"many-{k}") for k, info in enumerate(infos))
    )
    latencies: list[float] = []

    async def chat(client: Client) -> int:
        count = 0
        for m in range(sizes.per_session):
            msg_id = f"m{m}"
            sent = time.perf_counter()
            client.say(msg_id, "hello")
            _, result_at, n = await client.turn(msg_id)
            latencies.append((result_at - sent) * 1000)
            count += n
        return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(chat(c) for c in clients))
    seconds = time.perf_counter() - started
    events = sum(counts)
    if events != sizes.sessions * sizes.per_session * 3:
        raise BenchError(
            f"many: {events} turn events, not {sizes.sessions * sizes.per_session * 3}"
        )
    for c in clients:
        c.close()
    return {
        "sessions": sizes.sessions,
        "per_session": sizes.per_session,
        "events": events,
        "seconds": seconds,
        "eps": events / seconds,
        "result_ms": {q: pct(latencies, q) for q in (50, 99)},
    }


async def measure_open(http: httpx.AsyncClient, r: Running, sizes: Sizes) -> dict[str, Any]:
    """(e) sessions created, then connected to (open + hello → welcome), one at a time."""
    create: list[float] = []
    connect: list[float] = []
    for k in range(sizes.sessions):
        started = time.perf_counter()
        info = await create_session(http, r)
        created = time.perf_counter()
        client = await Client.connect(info, f"open-{k}")
        create.append((created - started) * 1000)
        connect.append((time.perf_counter() - created) * 1000)
        client.close()
    return {
        "sessions": sizes.sessions,
        "create_ms": {q: pct(create, q) for q in (50, 99)},
        "connect_ms": {q: pct(connect, q) for q in (50, 99)},
    }


async def run_measures(r: Running, sizes: Sizes) -> dict[str, Any]:
    """Every measure against one running host, with the CPU each phase cost."""
    results: dict[str, Any] = {"target": r.name, "url": r.url, "versions": r.versions}
    phases: dict[str, Callable[[httpx.AsyncClient], Awaitable[dict[str, Any]]]] = {
        "latency": lambda http: measure_latency(http, r, sizes),
        "burst_1": lambda http: measure_burst(http, r, sizes, 1),
        f"burst_{sizes.clients}": lambda http: measure_burst(http, r, sizes, sizes.clients),
        "replay": lambda http: measure_replay(http, r, sizes),
        "many": lambda http: measure_many(http, r, sizes),
        "open": lambda http: measure_open(http, r, sizes),
    }
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(trust_env=False, timeout=FRAME_TIMEOUT_S, limits=limits) as http:
        for name, phase in phases.items():
            host0, helper0, runtimes0 = (
                cpu_s(r.host_pids),
                cpu_s(r.helper_pids),
                cpu_s(r.runtime_pids),
            )
            driver0, wall0 = time.process_time(), time.perf_counter()
            result = await phase(http)
            result["cpu"] = {
                "wall_s": time.perf_counter() - wall0,
                "host_s": cpu_s(r.host_pids) - host0,
                "helpers_s": cpu_s(r.helper_pids) - helper0,
                "runtimes_s": cpu_s(r.runtime_pids) - runtimes0,
                "driver_s": time.process_time() - driver0,
            }
            results[name] = result
    rss, peak = rss_mib(r.host_pids)
    results["host_rss_mib"] = {"now": rss, "peak": peak}
    results["helpers_rss_mib"] = rss_mib(r.helper_pids)[0]
    results["runtimes_rss_mib"] = rss_mib(r.runtime_pids)[0]
    results["host_cpu_s"] = cpu_s(r.host_pids)
    return results


# --- output ---------------------------------------------------------------------------------


def table(results: list[dict[str, Any]], sizes: Sizes) -> str:
    """The figures as a markdown table, one column per target."""
    k = sizes.clients

    def cell(res: dict[str, Any], key: str) -> str:
        lat, b1, bk, rep, many, opened = (
            res["latency"],
            res["burst_1"],
            res[f"burst_{k}"],
            res["replay"],
            res["many"],
            res["open"],
        )
        cells = {
            "a": "{:.2f} / {:.2f} / {:.2f}".format(*lat["user_ms"].values()),
            "a2": "{:.2f} / {:.2f} / {:.2f}".format(*lat["result_ms"].values()),
            "b1": f"{b1['per_client_eps']:,.0f}",
            "bk": f"{bk['per_client_eps']:,.0f} ({bk['total_eps']:,.0f} in all)",
            "c": f"{rep['median_s']:.3f} (max {rep['max_s']:.3f}; {rep['eps']:,.0f} events/s)",
            "d": f"{many['eps']:,.0f} (p50 {many['result_ms'][50]:.1f} / p99 {many['result_ms'][99]:.1f} ms)",
            "e": "{:.2f} / {:.2f}".format(*opened["create_ms"].values()),
            "e2": "{:.2f} / {:.2f}".format(*opened["connect_ms"].values()),
            "rss": f"{res['host_rss_mib']['now']:.0f} / {res['host_rss_mib']['peak']:.0f}",
            "helpers": f"{res['helpers_rss_mib']:.0f}" if res["target"] != "kit" else "—",
            "runtimes": f"{res['runtimes_rss_mib']:.0f}" if res["target"] == "shim" else "—",
        }
        return cells[key]

    rows = [
        ("a", f"(a) `user` → its `user` event, ms p50 / p95 / p99 ({sizes.messages} messages)"),
        ("a2", "(a) `user` → its turn's `result`, ms p50 / p95 / p99"),
        ("b1", f"(b) {sizes.burst:,}-event burst → 1 client, events/s"),
        ("bk", f"(b) {sizes.burst:,}-event burst → {k} clients, events/s per client"),
        (
            "c",
            f"(c) replay of {sizes.replay:,} events on resume, s (median of {sizes.replay_reps})",
        ),
        (
            "d",
            f"(d) {sizes.sessions} sessions x {sizes.per_session} messages, turn events/s "
            "(`user` → `result`)",
        ),
        ("e", f"(e) `POST /v1/sessions`, ms p50 / p99 ({sizes.sessions} one after the other)"),
        ("e2", "(e) connect: WebSocket open + `hello` → `welcome`, ms p50 / p99"),
        ("rss", "host RSS after the run / peak, MiB"),
        ("helpers", "wrangler's node + proxy workerd RSS, MiB"),
        ("runtimes", "container emulator + synthetic runtimes RSS, MiB"),
    ]
    names = {
        "kit": "kit host",
        "do": "Durable Object (wrangler dev)",
        "shim": "kit's shim (wrangler dev)",
    }
    lines = [
        "| measure | " + " | ".join(names[r["target"]] for r in results) + " |",
        "|---" * (len(results) + 1) + "|",
    ]
    for key, label in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r, key) for r in results) + " |")
    return "\n".join(lines)


def cpu_table(results: list[dict[str, Any]], sizes: Sizes) -> str:
    """CPU seconds per phase: host, what stands in front of it, the shim's runtimes, the
    driver; and wall time."""
    lines = [
        "| phase | target | wall s | host CPU s | wrangler/proxy CPU s | runtimes CPU s "
        "| driver CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("latency", "burst_1", f"burst_{sizes.clients}", "replay", "many", "open"):
        for r in results:
            c = r[name]["cpu"]
            lines.append(
                f"| {name} | {r['target']} | {c['wall_s']:.2f} | {c['host_s']:.2f} | "
                f"{c['helpers_s']:.2f} | {c.get('runtimes_s', 0.0):.2f} | {c['driver_s']:.2f} |"
            )
    return "\n".join(lines)


TARGETS = {"both": ["kit", "do"], "all": ["kit", "do", "shim"]}


def start_target(
    name: str, work: Path, args: argparse.Namespace
) -> AbstractAsyncContextManager[Running]:
    """The host called ``name``, to start in ``work``."""
    if name == "kit":
        return kit_target(work, args.profile, args.kit_durability, args.kit_log)
    if name == "do":
        return do_target(work, direct=args.do_direct)
    return shim_target(work)


async def run(args: argparse.Namespace, sizes: Sizes) -> list[dict[str, Any]]:
    targets = TARGETS.get(args.target, [args.target])
    results = []
    with tempfile.TemporaryDirectory(prefix="kit-bench-host-") as tmp:
        for name in targets:
            work = Path(tmp) / name
            work.mkdir()
            target = start_target(name, work, args)
            async with asyncio.timeout(args.max_seconds), target as running:
                print(f"bench: {name} at {running.url}", file=sys.stderr)
                results.append(await run_measures(running, sizes))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Sizes()
    parser.add_argument(
        "--target",
        choices=["kit", "do", "shim", "both", "all"],
        default="both",
        help="both: kit and do; all: kit, do and shim",
    )
    parser.add_argument("--messages", type=int, default=d.messages, help="(a) messages measured")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="(a) messages not measured")
    parser.add_argument("--burst", type=int, default=d.burst, help="(b) events in the burst")
    parser.add_argument("--clients", type=int, default=d.clients, help="(b) clients of the burst")
    parser.add_argument("--replay", type=int, default=d.replay, help="(c) events replayed")
    parser.add_argument("--replay-reps", type=int, default=d.replay_reps)
    parser.add_argument("--sessions", type=int, default=d.sessions, help="(d) sessions at once")
    parser.add_argument("--per-session", type=int, default=d.per_session, help="(d) messages each")
    parser.add_argument(
        "--per-commit", type=int, default=d.per_commit, help="burst events per commit (both hosts)"
    )
    parser.add_argument(
        "--do-direct",
        action="store_true",
        help="talk to the DO's workerd directly, skipping wrangler's proxy workerd",
    )
    parser.add_argument("--profile", type=Path, help="kit: write a cProfile of the host here")
    parser.add_argument(
        "--kit-log",
        choices=["do", "sqlite"],
        default="do",
        help="kit: event logs on the emulator's Durable Objects (kit dev's default) or SQLite",
    )
    parser.add_argument(
        "--kit-durability",
        choices=[d.value for d in Durability],
        default=Durability.OS.value,
        help="kit: KIT_DURABILITY of the event logs (os, kit dev's default: committed to the "
        "OS; fsync, kit gateway's: a grouped fsync before an event counts)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="per target")
    args = parser.parse_args()
    sizes = Sizes(
        messages=args.messages,
        warmup=args.warmup,
        burst=args.burst,
        clients=args.clients,
        replay=args.replay,
        replay_reps=args.replay_reps,
        sessions=args.sessions,
        per_session=args.per_session,
        per_commit=args.per_commit,
    )
    if min(asdict(sizes).values()) < 0 or min(sizes.messages, sizes.clients, sizes.sessions) < 1:
        parser.error("sizes must be positive")
    try:
        results = asyncio.run(run(args, sizes))
    except BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/host.py", *sys.argv[1:]])
    versions = "; ".join(
        f"{r['target']}: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        for r in results
    )
    print(f"session hosts ({os.cpu_count()} CPUs; {versions})")
    print(f"every client got seq 1..n with no gap or duplicate; per_commit={sizes.per_commit}\n")
    print(table(results, sizes))
    print("\nCPU by phase:\n")
    print(cpu_table(results, sizes))
    print(f"\ncommand: {command}")
    if args.json is not None:
        args.json.write_text(json.dumps({"sizes": asdict(sizes), "results": results}, indent=1))


if __name__ == "__main__":
    main()
