"""Invariant 6 at host level: two real `kit dev` hosts share one moto S3 bucket (event logs
under a lease per session, transcripts in an S3 store), the way Fly gateway machines do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from kit.client import SessionClient, create_session
from kit.host.lease import S3Leases
from kit.protocol import errors as e
from kit.storage.s3 import unique_prefix
from kit.storage.s3io import S3Bucket
from tests.agents import RECOVERED_REPLY, until_prompt_stored, write_agent
from tests.conftest import BUCKET
from tests.e2e.test_kit_dev import DevProcess, _env, start_kit_dev, stop_kit_dev
from tests.host.wsdriver import Driver

LEASE_TTL_S = 2


class Balancer:
    """A TCP forwarder on loopback standing in for a load balancer: clients keep one
    address while the host behind it changes."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Balancer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target.removeprefix("http://").rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    dst.close()


async def _until_owner(log_url: str, session_id: str, owner: str) -> None:
    """Wait (at most 30 s) until ``owner`` holds the session's lease."""
    leases = S3Leases(S3Bucket.from_url(log_url), owner="test")
    for _ in range(300):
        lease = await leases.peek(session_id)
        if lease is not None and lease["owner"] == owner:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{owner} never took session {session_id} over")


@contextlib.asynccontextmanager
async def _hosts(
    kit_tmp: Path, s3_endpoint: str
) -> AsyncIterator[tuple[DevProcess, dict[str, str]]]:
    project = write_agent(kit_tmp / "agent")
    prefix = unique_prefix()
    query = f"endpoint_url={s3_endpoint}&region=us-east-1"
    env = _env(
        KIT_LOG_URL=f"s3://{BUCKET}/{prefix}/logs?{query}",
        KIT_STORE_URL=f"s3://{BUCKET}/{prefix}/transcripts?{query}",
        KIT_LEASE_TTL_S=str(LEASE_TTL_S),
    )
    a_env = {**env, "KIT_HOST_ID": "host-a", "KIT_STATE_DIR": str(kit_tmp / "state-a")}
    a = await start_kit_dev(project, a_env)
    try:
        yield a, env
    finally:
        await stop_kit_dev(a)


async def test_the_other_host_takes_over_when_the_owner_dies(
    kit_tmp: Path, s3_endpoint: str
) -> None:
    """While A lives, B sends the session's clients away (4409) and writes nothing. A is
    killed mid-tool: once its lease runs out B takes the session over on its own (no client
    asked), finishes the interrupted turn, and the client, reconnecting through the same
    address, gets every event once, in order."""
    async with _hosts(kit_tmp, s3_endpoint) as (a, env), Balancer(a.url) as lb:
        project = kit_tmp / "agent"
        token = (kit_tmp / "state-a" / "api-token").read_text().strip()
        info = await create_session(lb.url, token)
        b_env = {**env, "KIT_HOST_ID": "host-b", "KIT_STATE_DIR": str(kit_tmp / "state-b")}
        b = await start_kit_dev(project, b_env)
        try:
            # B refuses a session A owns, with an error that tells the client to retry.
            b_ws = b.url.replace("http://", "ws://") + f"/v1/sessions/{info.session_id}/ws"
            driver = await Driver.open(b_ws)
            await driver.send({"type": "hello", "token": info.token, "last_seq": None})
            refusal = await driver.recv()
            assert refusal["code"] == e.SESSION_ELSEWHERE
            assert "owned by host-a" in refusal["message"]
            assert (await driver.close_code()) == e.CLOSE_SESSION_ELSEWHERE

            seqs: list[int] = []
            texts: list[str] = []
            sandbox_hosts: list[str] = []
            killed = False
            client = SessionClient(info.ws_url, info.token)  # the balancer's address
            async with client:
                await client.send("run the slow tool")
                async with asyncio.timeout(120):
                    async for event in client.events():
                        seqs.append(event.seq)
                        if event.kind == "tool_use" and not killed:
                            await until_prompt_stored(
                                kit_tmp / "state-a",
                                info.session_id,
                                "run the slow tool",
                                env["KIT_STORE_URL"],
                            )
                            a.proc.kill()  # the owner dies mid-tool; its sandbox with it
                            await a.proc.wait()
                            # No client can reach B yet: B's sweep must take over alone.
                            await _until_owner(env["KIT_LOG_URL"], info.session_id, "host-b")
                            lb.target = b.url
                            killed = True
                        if event.kind == "sandbox":
                            sandbox_hosts.append(str(event.data.get("state")))
                        if event.kind == "assistant":
                            texts.append(str(event.data.get("text")))
                        if event.kind == "result":
                            break
                reconnects = client.reconnects
        finally:
            await stop_kit_dev(b)
    assert killed
    assert reconnects >= 1
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost, nothing twice
    assert RECOVERED_REPLY in texts[-1]
    assert sandbox_hosts[-2:] == ["starting", "running"]
