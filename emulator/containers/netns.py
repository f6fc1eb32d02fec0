"""Reach a TCP port inside a ``--network none`` container from the emulator's process.

A socket belongs to the network namespace it was created in, whatever thread uses it
afterwards. So a thread enters the container's namespace (``setns`` on
``/proc/<pid>/ns/net``), creates a socket, and returns to its own; the connection then
goes to the container's own ``127.0.0.1:<port>``. No traffic crosses any interface but the
container's loopback, and no port is opened on the host (ARCHITECTURE §9), so two
containers may both listen on 8080 as two Cloudflare containers do. It needs
``CAP_SYS_ADMIN`` (root), as running Docker containers here does.

:class:`NetnsTransport` is an httpx transport over such connections: the port proxy sends
each request with it, bodies streamed both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.abc
import httpcore
import httpx

# httpcore's wrapper of an anyio stream; it is not re-exported (httpcore 1.x).
from httpcore._backends.anyio import AnyIOStream

from emulator.containers.errors import ContainersEmulatorError, NotListening

CLONE_NEWNET = 0x40000000
CONNECT_LIMIT_S = 5.0
_LIBC = ctypes.CDLL(None, use_errno=True)
_SETNS_LOCK = threading.Lock()


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise ContainersEmulatorError(
            f"Cannot enter a container's network namespace: {os.strerror(err)}; run the "
            "emulator as root (it reaches --network none containers through their namespace)."
        )


def socket_in(pid: int) -> socket.socket:
    """A new TCP socket in the network namespace of process ``pid`` (blocking call)."""
    with _SETNS_LOCK:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            try:
                target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            except OSError as exc:
                raise NotListening(f"The container's process {pid} is gone.") from exc
            try:
                _setns(target)
                try:
                    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                finally:
                    _setns(own)
            finally:
                os.close(target)
        finally:
            os.close(own)


async def connect(pid: int, port: int) -> socket.socket:
    """A socket connected to ``127.0.0.1:port`` inside ``pid``'s network namespace;
    :class:`NotListening` when nothing listens there."""
    sock = await asyncio.to_thread(socket_in, pid)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(CONNECT_LIMIT_S):
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except (OSError, TimeoutError) as exc:
        sock.close()
        raise NotListening(f"connecting to port {port} failed: {exc!r}") from exc
    return sock


class _Backend(httpcore.AsyncNetworkBackend):
    def __init__(self, pid: int) -> None:
        self.pid = pid

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature; connect is bounded)
        local_address: str | None = None,
        socket_options: object = None,
    ) -> httpcore.AsyncNetworkStream:
        sock = await connect(self.pid, port)
        stream = await anyio.abc.SocketStream.from_socket(sock)
        return AnyIOStream(stream)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class NetnsTransport(httpx.AsyncBaseTransport):
    """httpx transport whose connections open inside a container's network namespace
    (the request URL's host is ignored: it is always the container's loopback)."""

    def __init__(self, pid: int) -> None:
        # A fresh connection per request: a kept-alive connection the container's server
        # has already closed would fail the next request with a protocol error.
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=_Backend(pid), max_keepalive_connections=0
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        with _httpx_errors(request):
            answer = await self._pool.handle_async_request(
                httpcore.Request(
                    method=request.method,
                    url=httpcore.URL(
                        scheme=request.url.raw_scheme,
                        host=request.url.raw_host,
                        port=request.url.port,
                        target=request.url.raw_path,
                    ),
                    headers=request.headers.raw,
                    content=request.stream,
                    extensions=request.extensions,
                )
            )
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_Body(answer, request),
            extensions=answer.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    """httpcore's errors as httpx's, which the port proxy answers with 502/503 JSON."""
    try:
        yield
    except httpcore.ConnectError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except httpcore.TimeoutException as exc:
        raise httpx.TimeoutException(str(exc), request=request) from exc
    except (httpcore.RemoteProtocolError, httpcore.ProtocolError) as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except httpcore.NetworkError as exc:
        raise httpx.NetworkError(str(exc), request=request) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, answer: httpcore.Response, request: httpx.Request) -> None:
        self._answer = answer
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for part in self._answer.aiter_stream():
                yield part

    async def aclose(self) -> None:
        await self._answer.aclose()


async def forward_out(
    pid: int, port: int, *, to_port: int | None = None, source: str | None = None
) -> asyncio.Server:
    """Listen on ``127.0.0.1:port`` inside ``pid``'s network namespace and relay each
    connection to the host's ``127.0.0.1:to_port`` (default ``port``), from the loopback
    address ``source`` if given: the container reaches that loopback service (the shim
    under ``wrangler dev``, the emulator's egress relay) at the URL it was given, and
    nothing else."""
    target = port if to_port is None else to_port
    local = None if source is None else (source, 0)
    sock = await asyncio.to_thread(socket_in, pid)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    sock.setblocking(False)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CONNECT_LIMIT_S):
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", target, local_addr=local
                )
        except (OSError, TimeoutError):
            writer.close()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(_pump(reader, up_writer))
            group.create_task(_pump(up_reader, writer))

    return await asyncio.start_server(relay, sock=sock)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until ``src`` ends (bounded by the connection: every read returns at its end)."""
    try:
        for _ in range(1 << 40):
            data = await src.read(65536)
            if not data:
                break
            dst.write(data)
            await dst.drain()
    except OSError:
        pass
    finally:
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()
        else:
            dst.close()
