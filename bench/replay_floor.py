"""The floor under bench/host.py's replay figure (c): what its client alone spends on a
replay, with no host and no socket.

    .venv/bin/python bench/replay_floor.py [--events 10002] [--reps 7]

bench/host.py's driver reads a replay with websockets' sans-I/O client parser (its ``Wire``)
and ``json.loads`` each frame (its ``Client``). Here those very classes are fed the bytes a kit
host writes for a replay of ``--events`` events (frames made by kit's own ``event_frame``,
as read back from a log: ``text_delta`` events of 40 characters, as the bench's synthetic
turns stream), after a real opening handshake, and each text frame is decoded as the
driver does. The time is the least any host's replay can measure on this machine with that
client: a replay figure (c) below it is not possible, whatever the host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from host import Client, Wire
from websockets.utils import accept_key

from kit.protocol.frames import Event, event_frame

READ = 65536
"""Bytes handed to the parser at once (what one socket read gives the driver)."""


def server_frame(text: str) -> bytes:
    """One unmasked text frame, as a server writes it."""
    data = text.encode()
    n = len(data)
    if n < 126:
        head = bytes([0x81, n])
    elif n < 1 << 16:
        head = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return head + data


def replay_bytes(events: int) -> bytes:
    """What a host writes for a replay of ``events`` events."""
    data = {"text": "x" * 40}
    stored = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return b"".join(
        server_frame(
            event_frame(
                Event(
                    seq=seq,
                    kind="text_delta",
                    data=data,
                    ts=1_700_000_000_000 + seq,
                    turn_id="t1",
                    data_json=stored,
                ),
                replay=True,
            )
        )
        for seq in range(1, events + 1)
    )


class NullTransport(asyncio.Transport):
    """Takes what the client writes (its handshake, its pongs) and drops it."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def read_once(wire_bytes: bytes, events: int) -> float:
    """Seconds for bench/host.py's own client (its ``Wire`` and ``Client``) to take in a
    replay: the bytes arrive in socket-sized reads, and the client reads each event as
    ``measure_replay`` does (``Client.event``: decoded, its seq checked, its flag read)."""
    wire = Wire("ws://127.0.0.1/v1/sessions/x/ws")
    wire.connection_made(NullTransport())
    request = wire.proto.connect()
    wire.proto.send_request(request)
    key = accept_key(request.headers["Sec-WebSocket-Key"])
    wire.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {key}\r\n\r\n".encode()
    )
    await wire.opened
    client = Client(wire, "floor", 0)
    started = time.perf_counter()
    offset = 0
    for _ in range(events):
        while not wire.texts and offset < len(wire_bytes):  # the next socket read
            wire.data_received(wire_bytes[offset : offset + READ])
            offset += READ
        event = await client.event()
        if event["replay"] is not True:
            raise SystemExit(f"replay_floor: seq {event['seq']} not flagged replay")
    elapsed = time.perf_counter() - started
    if client.last_seq != events:
        raise SystemExit(f"replay_floor: read {client.last_seq} events of {events}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_002, help="events in the replay")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    if args.events < 1 or args.reps < 1:
        parser.error("--events and --reps must be positive")
    wire = replay_bytes(args.events)
    times = [asyncio.run(read_once(wire, args.events)) for _ in range(args.reps)]
    print(
        f"bench/host.py's client alone, a replay of {args.events:,} events "
        f"({len(wire) / 1e6:.2f} MB): median {statistics.median(times) * 1000:.1f} ms, "
        f"min {min(times) * 1000:.1f} ms ({args.reps} reps)"
    )
    print(
        f"command: .venv/bin/python bench/replay_floor.py --events {args.events} --reps {args.reps}"
    )


if __name__ == "__main__":
    main()
