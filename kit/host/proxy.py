"""The model proxy: the only way a sandbox reaches the Messages API.

A sandbox's ``ANTHROPIC_API_KEY`` is a per-session token issued here. The proxy accepts only
``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` carrying a live token, replaces
the credentials with the real key (which never leaves the host) and forwards the request.

It works at the byte level: each request's head is parsed and rewritten, its body forwarded
as-is, and the upstream's response bytes are piped back untouched — status, retry headers
and SSE chunks exactly as sent, with no buffering. Each client connection gets its own
upstream connection, so keep-alive behaves as it would directly.

It enforces the spend limits of the token's release (``kit.toml`` ``[limits]``, see
:mod:`kit.host.spend`): the body's ``model`` is read (a body that is not a JSON object with
a ``model`` string, or repeats a key, is refused with 400), and a call to a model outside
``limits.models``, or made once a limit is reached, is answered here with **402**
``billing_error`` and ``x-should-retry: false``, naming the setting, and never reaches the
upstream. (The bundled CLI ends the turn at once on a 402; it retries a 400 five times and
words a 403 as "Failed to authenticate".) Responses are read for usage as they stream
(:mod:`kit.host.usage`); so that they can be, the proxy asks the upstream for
``accept-encoding: identity``. A sandbox that hangs up in the middle of a reply does not
escape its count: the proxy reads the rest of that reply from the upstream (discarding it,
for up to :data:`DRAIN_LIMIT_S`), because the output tokens are only reported at its end;
nor does one that stops reading (:data:`CLIENT_STALL_S`). A session may have at most
:data:`MAX_CALLS_IN_FLIGHT` calls under way at once (more get a retryable 429), since a
call's output is counted only as it comes: that bounds how far parallel calls can overshoot
a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kit.bundle.limits import DEFAULT_LIMITS, Limits, Tokens
from kit.host.spend import SpendMeter
from kit.host.tokens import SessionTokens
from kit.host.usage import Call, UsageReader
from kit.ids import SessionId

log = logging.getLogger("kit.host")

ALLOWED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
MAX_CALLS_IN_FLIGHT = 16
"""Model calls one session may have under way at once (subagents run in parallel)."""
CLIENT_STALL_S = 60.0
"""A client that takes longer than this to accept more of a reply is hung up on (and the
reply read to its end, to count it)."""
DRAIN_LIMIT_S = 600.0
"""How long a reply the sandbox hung up on is still read, to count it (the CLI's own API
timeout)."""
PARSE_IN_THREAD_BYTES = 1024 * 1024
"""A request body at least this big is decoded off the event loop."""
_DROP = {
    b"x-api-key",
    b"authorization",
    b"host",
    b"proxy-authorization",
    b"proxy-connection",
    b"accept-encoding",
}


class ModelProxy:
    """Issues per-session tokens and forwards their model calls upstream with the real key."""

    def __init__(
        self,
        upstream_url: str,
        api_key: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        meter: SpendMeter | None = None,
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
        self._limits: dict[bytes, Limits] = {}
        self.meter = meter or SpendMeter()
        """Each session's and turn's usage; the session host tells it when turns start."""
        self.requests_forwarded = 0
        self._servers: list[asyncio.Server] = []
        self._draining: set[asyncio.Task[None]] = set()
        self._in_flight: dict[SessionId, int] = {}

    def issue(self, session_id: SessionId, limits: Limits | None = None) -> str:
        """A new token for ``session_id``'s sandbox, whose calls ``limits`` governs (those
        of the release it runs; default: kit's defaults)."""
        token = self._tokens.issue(session_id)
        self._limits[_digest(token.encode())] = limits or DEFAULT_LIMITS
        return token

    def revoke(self, token: str) -> None:
        """Stop accepting ``token`` (its sandbox is gone)."""
        self._tokens.revoke(token)
        self._limits.pop(_digest(token.encode()), None)

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

    @property
    def draining(self) -> int:
        """Replies still being read to their end after their sandbox hung up (to count them)."""
        return len(self._draining)

    async def aclose(self) -> None:
        """Stop listening and drop open connections."""
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        for task in list(self._draining):
            task.cancel()
        await asyncio.gather(*self._draining, return_exceptions=True)

    # -- one client connection -----------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        usage = UsageReader()
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
                session_id = self.session_for(credential) if credential else None
                limits = self._limits.get(_digest(credential))
                if session_id is None or limits is None:
                    await _reply(
                        writer, 401, "authentication_error", "Unknown or revoked session token."
                    )
                    continue
                model = await _requested_model(body)
                if model is None:
                    await _reply(
                        writer,
                        400,
                        "invalid_request_error",
                        "kit's model proxy reads the request's model: send a JSON object "
                        'with a "model" string and no repeated keys.',
                    )
                    continue
                costs = path != b"/v1/messages/count_tokens"
                refusal = self.meter.check(session_id, limits, model, costs=costs)
                if refusal is not None:
                    await _reply(writer, 402, "billing_error", refusal.message)
                    continue
                if self._in_flight.get(session_id, 0) >= MAX_CALLS_IN_FLIGHT:
                    await _reply(
                        writer,
                        429,
                        "rate_limit_error",
                        f"kit's model proxy allows {MAX_CALLS_IN_FLIGHT} model calls under way "
                        "at once per session; retry when one has ended.",
                        retry=True,
                    )
                    continue
                if upstream is None or upstream.is_closing():
                    try:
                        up_reader, up_writer = await asyncio.wait_for(
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
                    usage = UsageReader()  # a new connection: its responses start afresh
                    upstream = up_writer
                    pump = asyncio.create_task(_pipe(up_reader, writer, up_writer, usage))
                assert upstream is not None
                self._in_flight[session_id] = self._in_flight.get(session_id, 0) + 1
                usage.expect(
                    Call(costs, self._charger(session_id, limits, model), self._ender(session_id))
                )
                upstream.write(self._rewrite(head, target) + body)
                await upstream.drain()
                self.requests_forwarded += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            # The client is gone or was refused: nothing more to relay. A reply still
            # streaming is read to its end by its pump, so that its usage is counted.
            writer.close()
            if pump is not None and not pump.done() and not usage.idle:
                self._drain(pump)
            else:
                if pump is not None and not pump.done():
                    pump.cancel()
                if upstream is not None:
                    upstream.close()
                usage.close()  # a pump cancelled before it ran never closes it

    def _ender(self, session_id: SessionId) -> Callable[[], None]:
        def done() -> None:
            left = self._in_flight.get(session_id, 0) - 1
            if left > 0:
                self._in_flight[session_id] = left
            else:
                self._in_flight.pop(session_id, None)

        return done

    def _drain(self, pump: asyncio.Task[None]) -> None:
        """Let ``pump`` read the reply under way to its end, for up to :data:`DRAIN_LIMIT_S`."""
        self._draining.add(pump)
        timer = asyncio.get_running_loop().call_later(DRAIN_LIMIT_S, _give_up, pump)

        def done(task: asyncio.Task[None]) -> None:
            self._draining.discard(task)
            timer.cancel()

        pump.add_done_callback(done)

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
        out.append(b"accept-encoding: identity")  # so the usage can be read on the way
        return b"\r\n".join(out) + b"\r\n\r\n"

    def _charger(
        self, session_id: SessionId, limits: Limits, model: str
    ) -> Callable[[Tokens], None]:
        def charge(tokens: Tokens) -> None:
            self.meter.charge(session_id, limits, model, tokens)

        return charge


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


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: asyncio.StreamWriter,
    usage: UsageReader,
) -> None:
    """Upstream bytes to the client, as they come, read for usage after they are written.

    Closes both connections when the upstream closes, or when the usage cannot be read (a
    call that cannot be counted must not be followed by more on this connection). Once the
    client is gone, it reads (and drops) the rest of the reply under way, then stops.
    """
    try:
        while data := await reader.read(65536):
            gone = writer.is_closing()
            if not gone:
                writer.write(data)
            usage.feed(data)
            if usage.broken is not None:
                log.warning("model proxy: cannot count the upstream's usage (%s)", usage.broken)
                return
            if gone:
                if usage.idle:
                    return  # the reply its sandbox hung up on is counted
                continue
            try:
                await asyncio.wait_for(writer.drain(), CLIENT_STALL_S)
            except TimeoutError:
                log.warning(
                    "model proxy: the sandbox stopped reading a reply for %.0f s; hung up on "
                    "it (the reply is still read to its end, to count it)",
                    CLIENT_STALL_S,
                )
                writer.close()
            except ConnectionError:
                pass  # a client gone is noticed on the next round
        usage.eof()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
        upstream.close()
        usage.close()


def _give_up(pump: asyncio.Task[None]) -> None:
    if not pump.done():
        log.warning(
            "model proxy: a reply its sandbox hung up on was still streaming after %.0f s; "
            "stopped reading it (its usage so far is counted)",
            DRAIN_LIMIT_S,
        )
        pump.cancel()


async def _requested_model(body: bytes) -> str | None:
    """The ``model`` of a Messages API request body; None when the body is not a JSON
    object with a non-empty ``model`` string, or repeats a key anywhere (the upstream might
    read the other ``model``)."""
    try:
        if len(body) >= PARSE_IN_THREAD_BYTES:
            request = await asyncio.to_thread(_decode, body)
        else:
            request = _decode(body)
    except (ValueError, RecursionError):
        return None
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) and model else None


def _decode(body: bytes) -> Any:
    return json.loads(body, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    decoded = dict(pairs)
    if len(decoded) != len(pairs):
        raise ValueError("a repeated key")
    return decoded


def _digest(credential: bytes) -> bytes:
    return hashlib.sha256(credential).digest()


async def _reply(
    writer: asyncio.StreamWriter, status: int, kind: str, message: str, *, retry: bool = False
) -> None:
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    reason = {
        400: "Bad Request",
        401: "Unauthorized",
        402: "Payment Required",
        403: "Forbidden",
        411: "Length Required",
        429: "Too Many Requests",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
    }[status]
    retry_headers = "x-should-retry: true\r\nretry-after: 1" if retry else "x-should-retry: false"
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{retry_headers}\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
