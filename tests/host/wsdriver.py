"""A small WebSocket driver for tests: send frames, read frames, replay golden transcripts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from kit.protocol.golden import load_golden, matches, substitute

FRAME_TIMEOUT_S = 60.0


class Driver:
    """One raw WebSocket to a session."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._pushed: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, ws_url: str) -> Driver:
        """Connect to ``ws_url``."""
        return cls(await websockets.connect(ws_url, max_size=2**24))

    async def send(self, frame: dict[str, Any] | str) -> None:
        """Send a frame (a dict is JSON-encoded)."""
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        """The next frame from the host."""
        if self._pushed:
            return self._pushed.pop(0)
        raw = await asyncio.wait_for(self.ws.recv(), FRAME_TIMEOUT_S)
        frame: dict[str, Any] = json.loads(raw)
        return frame

    def push_back(self, frame: dict[str, Any]) -> None:
        """Make ``frame`` the next one :meth:`recv` returns."""
        self._pushed.insert(0, frame)

    async def until(self, kind: str) -> list[dict[str, Any]]:
        """Frames up to and including the first event of ``kind``."""
        frames = []
        for _ in range(10_000):
            frame = await self.recv()
            frames.append(frame)
            if frame.get("type") == "event" and frame.get("kind") == kind:
                return frames
        raise AssertionError(f"no {kind} event in 10000 frames")

    async def close_code(self) -> int | None:
        """Wait for the host to close; its close code."""
        try:
            for _ in range(100):
                await asyncio.wait_for(self.ws.recv(), FRAME_TIMEOUT_S)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        raise AssertionError("the host kept the socket open")

    async def close(self) -> None:
        """Close from the client side."""
        await self.ws.close()


async def replay_golden(name: str, ws_url: str, variables: dict[str, Any]) -> None:
    """Replay golden transcript ``name`` against the host; AssertionError on a mismatch."""
    driver: Driver | None = None
    ignored: list[object] = []
    for step in load_golden(name):
        if step.action == "ignore":
            ignored.append(step.value)
            continue
        if step.action == "connect":
            if driver is not None:
                await driver.close()
            driver = await Driver.open(ws_url)
            continue
        assert driver is not None
        if step.action == "send":
            await driver.send(substitute(step.value, variables))
        elif step.action == "send_raw":
            await driver.send(str(step.value))
        elif step.action == "expect":
            frame = await driver.recv()
            while any(matches(p, frame, variables) for p in ignored):
                frame = await driver.recv()
            assert matches(step.value, frame, variables), (
                f"{name}: {frame} does not match {step.value}"
            )
            if step.repeat:
                for _ in range(100_000):
                    frame = await driver.recv()
                    if any(matches(p, frame, variables) for p in ignored):
                        continue
                    if not matches(step.value, frame, variables):
                        driver.push_back(frame)
                        break
        elif step.action == "expect_close":
            assert await driver.close_code() == step.value
    if driver is not None:
        await driver.close()
