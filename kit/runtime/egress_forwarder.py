"""The sandbox's ends of the host's proxies: loopback listeners piped to them.

Inside the sandbox the only way out is the egress proxy, often a Unix socket bound in by the
host. Tools expect an ``http://`` proxy on TCP (``HTTPS_PROXY``), so the runtime listens on
``127.0.0.1:<free port>`` and pipes each connection's bytes, unchanged, to that socket. It
reads nothing of them: authentication and the allowlist are the host proxy's business
(:mod:`kit.host.egress`).

When the model proxy is on TCP (a sandbox on another machine), the CLI reaches it through a
second such listener at ``http://localhost:<port>``: so ``NO_PROXY`` is only ``localhost``,
and nothing else on the model proxy's host escapes the egress proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from urllib.parse import urlsplit

from kit.protocol.egress import PROXY_USER

log = logging.getLogger("kit.runtime")

NO_PROXY = "localhost"
"""Hosts reached directly: the CLI calls the model at ``http://localhost`` (over
``ANTHROPIC_UNIX_SOCKET``, or a :class:`Forwarder` to a model proxy on TCP), which no proxy
may take over."""
CHUNK_BYTES = 64 * 1024


def _unreachable(name: str) -> bytes:
    """The 502 a client of a forwarder reads when ``name`` (the proxy) cannot be reached."""
    body = f"kit's {name} cannot be reached from inside the sandbox.\n".encode()
    return (
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
    ) % (len(body), body)


def proxy_env(url: str) -> dict[str, str]:
    """The environment that sends the CLI's and its tools' traffic through ``url``, except
    its calls to the model (``localhost``)."""
    env = {name: url for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
    env.update(NO_PROXY=NO_PROXY, no_proxy=NO_PROXY)
    return env


def proxy_url(url: str, token: str) -> str:
    """The egress proxy at ``url`` (``http://host:port``) with the sandbox's token in it:
    what ``HTTPS_PROXY`` should be."""
    parts = urlsplit(url)
    return f"http://{PROXY_USER}:{token}@{parts.netloc}"


class Forwarder:
    """Listens on loopback and pipes every connection to ``target``: ``unix:/path`` or
    ``http://host:port``."""

    def __init__(self, target: str, name: str = "egress proxy") -> None:
        self.target = target
        self.name = name
        """What ``target`` is, for the 502 a client reads when it cannot be reached."""
        self.port = 0
        """The loopback port, once :meth:`start` has returned."""
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on ``127.0.0.1`` on a free port, and on ``::1`` at the same port where the
        sandbox has IPv6 (``localhost`` may resolve to either); return the port."""
        sockets = _loopback_pair()
        self.port = sockets[0].getsockname()[1]
        for sock in sockets:
            server = await asyncio.start_server(self._accept, sock=sock, limit=CHUNK_BYTES)
            self._servers.append(server)
        return self.port

    @property
    def url(self) -> str:
        """``http://localhost:<port>``: the target, as the sandbox's processes reach it."""
        return f"http://{NO_PROXY}:{self.port}"

    def proxy_url(self, token: str) -> str:
        """``http://kit:<token>@127.0.0.1:<port>``: what ``HTTPS_PROXY`` should be."""
        return proxy_url(f"http://127.0.0.1:{self.port}", token)

    async def aclose(self) -> None:
        """Stop listening and end every open connection."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, upstream = await self._connect()
            except OSError as exc:
                log.warning("%s at %s: %s", self.name, self.target, exc)
                writer.write(_unreachable(self.name))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                return
            out = asyncio.create_task(_pump(reader, upstream))
            back = asyncio.create_task(_pump(up_reader, writer))
            try:
                await _both(out, back)
            finally:
                for pump in (out, back):
                    pump.cancel()
                await asyncio.gather(out, back, return_exceptions=True)
        finally:
            self._tasks.discard(task)
            for side in (upstream, writer):
                if side is not None:
                    side.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target.startswith("unix:"):
            path = self.target.removeprefix("unix:")
            return await asyncio.open_unix_connection(path, limit=CHUNK_BYTES)
        parts = urlsplit(self.target)
        return await asyncio.open_connection(parts.hostname, parts.port, limit=CHUNK_BYTES)


def _loopback_pair(attempts: int = 32) -> list[socket.socket]:
    """A listening socket on ``127.0.0.1`` and one on ``::1`` at the same free port (just the
    first where the sandbox has no IPv6): ``localhost:<port>`` is then this listener, never
    another process's on the other address."""
    for _ in range(attempts):
        v4 = socket.create_server(("127.0.0.1", 0))
        try:
            v6 = socket.create_server(("::1", v4.getsockname()[1]), family=socket.AF_INET6)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                v4.close()
                continue  # another port
            return [v4]  # no IPv6 loopback here
        return [v4, v6]
    raise OSError(
        errno.EADDRINUSE, f"no loopback port free on both 127.0.0.1 and ::1 in {attempts} tries"
    )


async def _both(out: asyncio.Task[None], back: asyncio.Task[None]) -> None:
    """Until both pumps end; a reset in either ends both."""
    while pending := [t for t in (out, back) if not t.done()]:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if any(t.done() and not t.cancelled() and t.exception() for t in (out, back)):
            return


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until ``src`` ends, then half-close ``dst``; back-pressure through ``drain``."""
    while data := await src.read(CHUNK_BYTES):
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof() and not dst.is_closing():
        dst.write_eof()
