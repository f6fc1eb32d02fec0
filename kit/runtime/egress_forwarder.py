"""The sandbox's end of egress: a loopback listener piped to the host's egress proxy.

Inside the sandbox the only way out is the egress proxy's Unix socket, bound in by the
host. Tools expect an ``http://`` proxy on TCP (``HTTPS_PROXY``), so the runtime listens on
``127.0.0.1:<free port>`` and pipes each connection's bytes, unchanged, to that socket. It
reads nothing of them: authentication and the allowlist are the host proxy's business
(:mod:`kit.host.egress`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

from kit.protocol.egress import PROXY_USER

log = logging.getLogger("kit.runtime")

NO_PROXY = "localhost"
"""Hosts reached directly: the CLI calls the model at ``http://localhost`` over
``ANTHROPIC_UNIX_SOCKET``, which no proxy may take over."""
CHUNK_BYTES = 64 * 1024
_UNREACHABLE_BODY = b"kit's egress proxy cannot be reached from inside the sandbox.\n"
_UNREACHABLE = (
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
) % (len(_UNREACHABLE_BODY), _UNREACHABLE_BODY)


def proxy_env(url: str, model_base_url: str = "http://localhost") -> dict[str, str]:
    """The environment that sends the CLI's and its tools' traffic through ``url``, except
    its calls to the model (``localhost``, or the model proxy's host when it is on TCP)."""
    direct = [NO_PROXY]
    model_host = urlsplit(model_base_url).hostname
    if model_host and model_host != NO_PROXY:
        direct.append(model_host)
    env = {name: url for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
    env.update(NO_PROXY=",".join(direct), no_proxy=",".join(direct))
    return env


def proxy_url(url: str, token: str) -> str:
    """The egress proxy at ``url`` (``http://host:port``) with the sandbox's token in it:
    what ``HTTPS_PROXY`` should be."""
    parts = urlsplit(url)
    return f"http://{PROXY_USER}:{token}@{parts.netloc}"


class EgressForwarder:
    """Listens on loopback and pipes every connection to the egress proxy's Unix socket."""

    def __init__(self, unix_socket: str) -> None:
        self.unix_socket = unix_socket
        self.port = 0
        """The loopback port, once :meth:`start` has returned."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on ``127.0.0.1`` on a free port; return the port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=CHUNK_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def proxy_url(self, token: str) -> str:
        """``http://kit:<token>@127.0.0.1:<port>``: what ``HTTPS_PROXY`` should be."""
        return proxy_url(f"http://127.0.0.1:{self.port}", token)

    async def aclose(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
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
                up_reader, upstream = await asyncio.open_unix_connection(
                    self.unix_socket, limit=CHUNK_BYTES
                )
            except OSError as exc:
                log.warning("egress proxy socket %s: %s", self.unix_socket, exc)
                writer.write(_UNREACHABLE)
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
