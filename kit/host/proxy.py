"""The model proxy: the only way a sandbox reaches the Messages API.

A sandbox's ``ANTHROPIC_API_KEY`` is a per-session token issued here. The proxy accepts only
``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` carrying a live token, replaces
the credentials with the real key (which never leaves the host) and forwards the request.

It works at the byte level: each request's head is parsed and rewritten, its body forwarded
as-is, and the upstream's response bytes are piped back untouched — status, retry headers,
``content-encoding`` and SSE chunks exactly as sent, with no buffering. Each client
connection gets its own upstream connection, so keep-alive behaves as it would directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from kit.host.tokens import SessionTokens
from kit.ids import SessionId

log = logging.getLogger("kit.host")

ALLOWED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
_DROP = {b"x-api-key", b"authorization", b"host", b"proxy-authorization", b"proxy-connection"}


class ModelProxy:
    """Issues per-session tokens and forwards their model calls upstream with the real key."""

    def __init__(
        self, upstream_url: str, api_key: str, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"model upstream must be an http(s) URL, got {upstream_url!r}")
        self.upstream_url = upstream_url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._host_header = parts.netloc.encode()
        self._prefix = parts.path.rstrip("/").encode()
        self._ssl = (
            (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        )
        self._api_key = api_key.encode()
        self._tokens = SessionTokens("kit-model-")
        self.requests_forwarded = 0
        self._servers: list[asyncio.Server] = []

    def issue(self, session_id: SessionId) -> str:
        """A new token for ``session_id``'s sandbox."""
        return self._tokens.issue(session_id)

    def revoke(self, token: str) -> None:
        """Stop accepting ``token`` (its sandbox is gone)."""
        self._tokens.revoke(token)

    def session_for(self, credential: bytes) -> SessionId | None:
        """The session a credential (``x-api-key`` or bearer value) belongs to, if any."""
        return self._tokens.session_for(credential)

    async def serve_unix(self, path: Path) -> asyncio.Server:
        """Listen on a Unix socket (what local sandboxes use)."""
        server = await asyncio.start_unix_server(
            self._connection, path=str(path), limit=MAX_HEAD_BYTES
        )
        self._servers.append(server)
        return server

    async def serve_tcp(self, host: str, port: int) -> asyncio.Server:
        """Listen on TCP (sandboxes on other machines reach the host this way)."""
        server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEAD_BYTES)
        self._servers.append(server)
        return server

    async def aclose(self) -> None:
        """Stop listening and drop open connections."""
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    # -- one client connection -----------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await _reply(writer, 431, "invalid_request_error", "Request headers too large.")
                    return
                request = _parse_head(head)
                if request is None:
                    await _reply(writer, 400, "invalid_request_error", "Malformed request.")
                    return
                method, target, headers = request
                length = int(headers.get(b"content-length", b"0") or b"0")
                if b"chunked" in headers.get(b"transfer-encoding", b"") or length > MAX_BODY_BYTES:
                    await _reply(
                        writer,
                        411,
                        "invalid_request_error",
                        "Send a Content-Length body of at most 32 MiB.",
                    )
                    return
                body = await reader.readexactly(length) if length else b""
                path = target.split(b"?", 1)[0]
                if method != b"POST" or path.decode(errors="replace") not in ALLOWED_PATHS:
                    await _reply(
                        writer,
                        403,
                        "permission_error",
                        "kit's model proxy forwards only POST /v1/messages.",
                    )
                    continue
                credential = headers.get(b"x-api-key") or headers.get(
                    b"authorization", b""
                ).removeprefix(b"Bearer ")
                if not credential or self.session_for(credential) is None:
                    await _reply(
                        writer, 401, "authentication_error", "Unknown or revoked session token."
                    )
                    continue
                if upstream is None or upstream.is_closing():
                    try:
                        up_reader, upstream = await asyncio.wait_for(
                            asyncio.open_connection(self._host, self._port, ssl=self._ssl),
                            CONNECT_TIMEOUT_S,
                        )
                    except (OSError, TimeoutError) as exc:
                        await _reply(
                            writer,
                            502,
                            "api_error",
                            f"kit's model proxy could not reach the model upstream: {type(exc).__name__}.",
                        )
                        return
                    pump = asyncio.create_task(_pipe(up_reader, writer))
                assert upstream is not None
                upstream.write(self._rewrite(head, target) + body)
                await upstream.drain()
                self.requests_forwarded += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            # The client is gone or was refused: nothing more to relay.
            if pump is not None and not pump.done():
                pump.cancel()
            if upstream is not None:
                upstream.close()
            writer.close()

    def _rewrite(self, head: bytes, target: bytes) -> bytes:
        lines = head.split(b"\r\n")
        method, _, rest = lines[0].partition(b" ")
        _, _, version = rest.rpartition(b" ")
        out = [
            method + b" " + self._prefix + target + b" " + version,
            b"host: " + self._host_header,
        ]
        out += [
            line
            for line in lines[1:]
            if line and line.split(b":", 1)[0].strip().lower() not in _DROP
        ]
        out.append(b"x-api-key: " + self._api_key)
        return b"\r\n".join(out) + b"\r\n\r\n"


def _parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]] | None:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Upstream bytes to the client, as they come; close the client when upstream closes."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _reply(writer: asyncio.StreamWriter, status: int, kind: str, message: str) -> None:
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    reason = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        411: "Length Required",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
    }[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-should-retry: false\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
