"""Fly's edge proxy for one app, on loopback, next to the emulator's :class:`FlyBackend`.

:func:`serve_proxy` listens on ``127.0.0.1:<port>``, standing for ``https://<app>.fly.dev``
(the rehearsal has no DNS names or TLS), and sends each HTTP/1.1 request and WebSocket
upgrade to a machine of the app (reference/fly.md §9, §10)::

    async with serve(token=token) as served, serve_proxy(served.backend, "kit-gw") as url:
        ...  # wss://kit-gw.fly.dev/... is ws://<url minus http://>/...

Emulated:

- routing to a ``started`` machine whose config has a service, at
  ``<private_ip>:<services[0].internal_port>``, round-robin (:mod:`~emulator.fly_api.routing`);
  autostart of a stopped or suspended machine when its service says ``autostart: true``; a
  503 with a sentence naming the fix when no machine can answer;
- ``fly-force-instance-id`` (that machine only) and ``fly-prefer-instance-id`` (that one if
  it can answer, else any);
- ``fly-replay`` answers (``instance``, ``prefer_instance``, ``region``, ``app``,
  ``elsewhere=true``, ``state``, ``fallback=prefer_self|force_self``): the answer is dropped
  and the same request (method, target, headers, body up to 1 MB) goes to the named machine
  with ``fly-replay-src: instance=…;region=…;t=<µs>;state=…``; also for a WebSocket upgrade,
  which the target then performs. At most :data:`MAX_REPLAYS` hops. A replay no machine can
  take is answered 503 with ``fly-replay-failed: reason=no_candidate`` (or, with a fallback,
  sent back to the source machine with that header); past the hop limit 502
  ``reason=retries_exhausted``;
- request headers ``Fly-Client-IP``, ``X-Forwarded-For``/``-Proto: https``/``-Port: 443``,
  ``fly-request-id`` (also on the answer) and ``Via: 1.1 fly.io``;
- responses streamed as the machine writes them; after a ``101`` the connection is relayed
  as raw bytes both ways, with no idle timeout, until either side closes.

Not emulated: TLS, HTTP/2, ``handlers``/``ports``/``force_https``, TCP-only services,
concurrency limits and least-connections balancing, health checks, autostop, JSON replays
(``application/vnd.fly.replay+json``), the replay cache, ``timeout=`` on a replay (the
autostart bound applies), region latency, and keep-alive towards machines (one connection
per request). A request body is held (up to 1 MB, so that it can be replayed) before the
machine is connected; the rest of a longer one is then streamed, and a ``fly-replay``
answer to such a request gets a 502 (``reason=body_too_large``, a name made up here). A
malformed request is dropped without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import h11

from emulator.fly_api import replay as hdr
from emulator.fly_api.backend import FlyBackend
from emulator.fly_api.errors import FlyEmulatorError
from emulator.fly_api.relay import Exchange, HttpPeer, MachineConnectionError, Upstream, answer
from emulator.fly_api.routing import RETRIES_EXHAUSTED, Router, Target, Unroutable

__all__ = ["MAX_REPLAYS", "REPLAY_BODY_LIMIT", "FlyProxy", "serve_proxy"]

MAX_REPLAYS = 5
"""Replays one request may take before the proxy gives up (502, ``retries_exhausted``)."""
REPLAY_BODY_LIMIT = 1024 * 1024
"""Fly replays request bodies up to 1 MB."""
MAX_REQUESTS_PER_CONNECTION = 100_000
EDGE_REGION = "iad"
"""The region the emulated edge says it is in (``fly-request-id``'s suffix)."""


class FlyProxy:
    """The proxy's routing and forwarding for one app; :func:`serve_proxy` serves it."""

    def __init__(
        self,
        backend: FlyBackend,
        app: str,
        *,
        router: Router | None = None,
        forwarded: tuple[str, int] = ("https", 443),
    ) -> None:
        self.backend = backend
        self.app = app
        self.router = router or Router(backend, app)
        self.forwarded = forwarded
        """The scheme and port machines are told clients used (Fly: https, 443)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection: requests one after another (keep-alive) until it
        closes, or until an upgrade hands it over to a machine."""
        peer = writer.get_extra_info("peername")
        client = HttpPeer(reader, writer, h11.Connection(h11.SERVER))
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                exchange = await client.read_request(REPLAY_BODY_LIMIT)
                if exchange is None:
                    return
                exchange.client_ip = str(peer[0]) if peer else "127.0.0.1"
                if await self._exchange(client, exchange):
                    return  # switched protocols: relayed until closed
                if client.conn.our_state is not h11.DONE or client.conn.their_state is not (
                    h11.DONE
                ):
                    return
                client.conn.start_next_cycle()
        except (h11.ProtocolError, OSError, asyncio.IncompleteReadError):
            return  # a broken client or machine connection: drop it, as a proxy does
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _exchange(self, client: HttpPeer, exchange: Exchange) -> bool:
        """Route one request, following replays; True when the connection switched
        protocols."""
        request_id = hdr.request_id(EDGE_REGION)
        headers = hdr.forwarded_request(
            exchange.request.headers,
            client_ip=exchange.client_ip,
            request_id=request_id,
            forwarded=self.forwarded,
        )
        exchange.request_id = request_id
        try:
            target = await self._first(exchange)
        except Unroutable as exc:
            await answer(client, exc.status, str(exc), request_id)
            return False
        started = time.monotonic()
        extra: list[tuple[bytes, bytes]] = []
        fallback_used = False
        for hop in range(MAX_REPLAYS + 1):
            upstream = await Upstream.open(target.host, target.port)
            if upstream is None:
                await answer(
                    client,
                    502,
                    f"fly-proxy: machine {target.machine.id} accepts no connection on "
                    f"{target.host}:{target.port}: its service must listen on its "
                    "private_ip (FLY_PRIVATE_IP) and internal_port.",
                    request_id,
                )
                return False
            async with upstream:
                try:
                    head = await upstream.send_request(exchange, [*headers, *extra], client)
                except MachineConnectionError as exc:
                    await answer(client, 502, str(exc), request_id)
                    return False
                value = None if fallback_used else hdr.find(head.headers, hdr.REPLAY)
                if value is None:
                    return await upstream.relay_answer(head, client, request_id)
            parsed = hdr.parse_replay(value)
            elapsed = int((time.monotonic() - started) * 1000)
            if not exchange.complete:
                await answer(
                    client,
                    502,
                    "fly-proxy: a request body over 1 MB cannot be replayed: send large "
                    "bodies with fly-force-instance-id instead.",
                    request_id,
                    [hdr.replay_failed("body_too_large", elapsed)],
                )
                return False
            if hop == MAX_REPLAYS:
                await answer(
                    client,
                    502,
                    f"fly-proxy: the request was replayed {MAX_REPLAYS} times without an "
                    "answer: a machine keeps answering fly-replay.",
                    request_id,
                    [hdr.replay_failed(RETRIES_EXHAUSTED, elapsed)],
                )
                return False
            source = target.machine
            try:
                target = await self._replay_target(parsed, source.id)
            except Unroutable as exc:
                failed = hdr.replay_failed(exc.reason, elapsed)
                if parsed.fallback in ("prefer_self", "force_self"):
                    extra, fallback_used = [failed], True
                    continue  # the source machine gets the request again
                await answer(client, exc.status, str(exc), request_id, [failed])
                return False
            now_us = int(self.backend.now() * 1_000_000)
            extra = [hdr.replay_src(source.id, source.region, now_us, parsed.state)]
        return False  # not reached: the last hop answers or gives up above

    async def _first(self, exchange: Exchange) -> Target:
        headers = exchange.request.headers
        forced = hdr.find(headers, hdr.FORCE_INSTANCE)
        if forced:
            return await self.router.instance(forced)
        preferred = hdr.find(headers, hdr.PREFER_INSTANCE)
        if preferred:
            with contextlib.suppress(Unroutable):
                return await self.router.instance(preferred)
        return await self.router.pick()

    async def _replay_target(self, parsed: hdr.Replay, source: str) -> Target:
        if parsed.instance:
            return await self.router.instance(parsed.instance, app=parsed.app)
        if parsed.prefer_instance:
            with contextlib.suppress(Unroutable):
                return await self.router.instance(parsed.prefer_instance, app=parsed.app)
        return await self.router.pick(
            app=parsed.app, region=parsed.region, exclude=source if parsed.elsewhere else None
        )


@contextlib.asynccontextmanager
async def serve_proxy(
    backend: FlyBackend,
    app: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    as_served: bool = False,
) -> AsyncIterator[str]:
    """Serve Fly's proxy for ``app`` on ``host:port`` (port 0: a free one) until the block
    ends; yields the base URL (``http://127.0.0.1:<port>``), which stands for
    ``https://<app>.fly.dev``. Machines are told clients came over https on 443, as on Fly;
    with ``as_served``, over what this proxy serves (http on its port: a rehearsal's
    clients must be sent back here). Connections still open at the end (WebSockets) are
    cut."""
    if host != "127.0.0.1":
        raise FlyEmulatorError(
            f"The emulated Fly proxy serves on loopback only, not {host!r}: use 127.0.0.1."
        )
    proxy = FlyProxy(backend, app)
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await proxy.handle(reader, writer)
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(on_connect, host, port)
    bound = server.sockets[0].getsockname()[1]
    if as_served:
        proxy.forwarded = ("http", bound)
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
