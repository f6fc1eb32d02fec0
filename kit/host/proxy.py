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
a limit. A reply still streaming :data:`DRAIN_LIMIT_S` after its sandbox hung up is charged
as if it had produced the request's ``max_tokens``.

Every sandbox shares the proxy's socket, so no connection may hold the host's memory or
descriptors before it has shown a live token. The head is parsed strictly and refused with
400 when the upstream might read it otherwise (any Transfer-Encoding, a repeated
Content-Length or credential, a folded line, space before a colon); the method, path and
token are checked before the body is read; the forwarded head is built from the parsed
fields. A head must arrive within :data:`HEAD_TIMEOUT_S` and a body within
:data:`BODY_TIMEOUT_S` (else 408); at most :data:`MAX_UNPROVEN_CONNECTIONS` connections
without a token are open at once (over that, a new one is closed unanswered), and
:data:`MAX_CONNECTIONS_PER_TOKEN` per token (then 429). A request that arrives while the
previous reply on its connection still streams is read but answered only after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kit.bundle.limits import DEFAULT_LIMITS, Limits, Tokens
from kit.hoptrace import hop
from kit.host.errors import HostError
from kit.host.gate import ConnectionGate, quiet_accept_errors
from kit.host.spend import SpendMeter
from kit.host.tokens import SessionTokens
from kit.host.usage import Call, UsageReader
from kit.ids import SessionId

log = logging.getLogger("kit.host")

ALLOWED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
HEAD_TIMEOUT_S = 30.0
"""How long a new connection may take to send its first request head (then: 408, closed)."""
IDLE_TIMEOUT_S = 120.0
"""How long a kept-alive connection may wait, after a reply, to send its next request head."""
BODY_TIMEOUT_S = 60.0
"""How long a request body may take to arrive (then: 408, closed)."""
MAX_UNPROVEN_CONNECTIONS = 64
"""Connections open at once, over all sandboxes, that have not yet shown a live token; one
more is closed at once."""
MAX_CONNECTIONS_PER_TOKEN = 32
"""Connections open at once that showed one session's token (the CLI keeps a few)."""
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
    b"content-length",
}
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(rb"[0-9]+")


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
            raise HostError(f"The model upstream must be an http(s) URL, got {upstream_url!r}.")
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
        self._gate = ConnectionGate(
            unproven=MAX_UNPROVEN_CONNECTIONS, per_token=MAX_CONNECTIONS_PER_TOKEN
        )

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
        quiet_accept_errors(asyncio.get_running_loop())
        server = await asyncio.start_unix_server(
            self._connection, path=str(path), limit=MAX_HEAD_BYTES
        )
        self._servers.append(server)
        return server

    async def serve_tcp(self, host: str, port: int) -> asyncio.Server:
        """Listen on TCP (sandboxes on other machines reach the host this way)."""
        quiet_accept_errors(asyncio.get_running_loop())
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
        ticket = self._gate.enter()
        if ticket is None:
            writer.close()  # too many connections without a token: anybody's, so no answer
            return
        upstream: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        usage = UsageReader()
        calls = _Calls()
        first = True
        try:
            while True:
                head = await _next_head(reader, writer, calls, first)
                if head is None:
                    return
                first = False
                hop("proxy: model request")
                request = _parse_head(head)
                if isinstance(request, str):
                    await _reply(writer, 400, "invalid_request_error", request, close=True)
                    return
                path = request.target.split(b"?", 1)[0]
                if request.method != b"POST" or path.decode(errors="replace") not in ALLOWED_PATHS:
                    await _reply(
                        writer,
                        403,
                        "permission_error",
                        "kit's model proxy forwards only POST /v1/messages.",
                        close=True,
                    )
                    return
                credential = request.credential
                session_id = self.session_for(credential) if credential else None
                limits = self._limits.get(_digest(credential))
                if session_id is None or limits is None:
                    await _reply(
                        writer,
                        401,
                        "authentication_error",
                        "Unknown or revoked session token.",
                        close=True,
                    )
                    return
                if not ticket.prove(_digest(credential)):
                    if ticket.key is not None:
                        message = "A connection to kit's model proxy carries one session token."
                        await _reply(writer, 401, "authentication_error", message, close=True)
                    else:
                        message = (
                            f"kit's model proxy allows {MAX_CONNECTIONS_PER_TOKEN} open "
                            "connections per session; retry when one has closed."
                        )
                        await _reply(
                            writer, 429, "rate_limit_error", message, retry=True, close=True
                        )
                    return
                if request.length > MAX_BODY_BYTES:
                    await _reply(
                        writer,
                        413,
                        "request_too_large",
                        "kit's model proxy takes request bodies of at most 32 MiB.",
                        close=True,
                    )
                    return
                try:
                    body = await asyncio.wait_for(
                        reader.readexactly(request.length), BODY_TIMEOUT_S
                    )
                except TimeoutError:
                    await _reply(
                        writer,
                        408,
                        "invalid_request_error",
                        f"The request body did not arrive within {BODY_TIMEOUT_S:.0f} s.",
                        close=True,
                    )
                    return
                wanted = await _requested(body)
                if wanted is None:
                    await _reply(
                        writer,
                        400,
                        "invalid_request_error",
                        "kit's model proxy reads the request's model: send a JSON object "
                        'with a "model" string and no repeated keys.',
                    )
                    continue
                model, max_tokens = wanted
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
                            close=True,
                        )
                        return
                    usage = UsageReader()  # a new connection: its responses start afresh
                    upstream = up_writer
                    pump = asyncio.create_task(_pipe(up_reader, writer, up_writer, usage))
                assert upstream is not None
                self._in_flight[session_id] = self._in_flight.get(session_id, 0) + 1
                charge = _Charge(self.meter, session_id, limits, model, max_tokens if costs else 0)
                calls.start(charge)
                usage.expect(Call(costs, charge, self._ender(session_id, calls, charge)))
                upstream.write(self._rewrite(request) + body)
                await upstream.drain()
                hop("proxy: request forwarded")
                self.requests_forwarded += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            ticket.leave()
            # The client is gone or was refused: nothing more to relay. A reply still
            # streaming is read to its end by its pump, so that its usage is counted.
            writer.close()
            if pump is not None and not pump.done() and not usage.idle:
                self._drain(pump, calls)
            else:
                if pump is not None and not pump.done():
                    pump.cancel()
                if upstream is not None:
                    upstream.close()
                usage.close()  # a pump cancelled before it ran never closes it

    def _ender(self, session_id: SessionId, calls: _Calls, charge: _Charge) -> Callable[[], None]:
        def done() -> None:
            calls.end(charge)
            left = self._in_flight.get(session_id, 0) - 1
            if left > 0:
                self._in_flight[session_id] = left
            else:
                self._in_flight.pop(session_id, None)

        return done

    def _drain(self, pump: asyncio.Task[None], calls: _Calls) -> None:
        """Let ``pump`` read the reply under way to its end, for up to :data:`DRAIN_LIMIT_S`
        (then charge its calls as if they had produced their ``max_tokens``)."""
        self._draining.add(pump)
        timer = asyncio.get_running_loop().call_later(DRAIN_LIMIT_S, _give_up, pump, calls)

        def done(task: asyncio.Task[None]) -> None:
            self._draining.discard(task)
            timer.cancel()

        pump.add_done_callback(done)

    def _rewrite(self, request: _Head) -> bytes:
        """The head to send upstream, built from the parsed fields."""
        out = [
            request.method + b" " + self._prefix + request.target + b" " + request.version,
            b"host: " + self._host_header,
        ]
        out += [name + b": " + value for name, value in request.fields if name not in _DROP]
        out.append(b"content-length: %d" % request.length)
        out.append(b"x-api-key: " + self._api_key)
        out.append(b"accept-encoding: identity")  # so the usage can be read on the way
        return b"\r\n".join(out) + b"\r\n\r\n"


@dataclass(frozen=True)
class _Head:
    """A request head that passed :func:`_parse_head`."""

    method: bytes
    target: bytes
    version: bytes
    fields: list[tuple[bytes, bytes]]
    """Header fields in order, names lower-cased, values trimmed."""
    length: int
    """The body's Content-Length (0 when absent)."""
    credential: bytes
    """The ``x-api-key``, or the ``Authorization: Bearer`` value; b"" when neither."""


def _parse_head(head: bytes) -> _Head | str:
    """The request in ``head`` (which ends in a blank line), or why it is refused.

    Strict, so that the proxy and the upstream cannot read the request differently: no bare
    CR or LF, no folded lines or space before a colon, no Transfer-Encoding, no repeated
    Content-Length or credential, and a Content-Length of digits only.
    """
    text = head[:-4]
    if b"\n" in text.replace(b"\r\n", b"") or b"\r" in text.replace(b"\r\n", b""):
        return "Malformed request head (a bare CR or LF)."
    lines = text.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return "Malformed request line."
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or _FIELD_NAME.fullmatch(name) is None:
            return "Malformed header line (folded, or with a space before its colon)."
        fields.append((name.lower(), value.strip(b" \t")))
    found = dict(fields)
    if b"transfer-encoding" in found:
        return "kit's model proxy takes a Content-Length body, not Transfer-Encoding."
    names = [name for name, _ in fields]
    for single in (b"content-length", b"x-api-key", b"authorization"):
        if names.count(single) > 1:
            return f"Header {single.decode()} given twice."
    length = found.get(b"content-length", b"0")
    if _DIGITS.fullmatch(length) is None:
        return "Malformed Content-Length."
    credential = found.get(b"x-api-key", b"")
    if not credential:
        scheme, _, value = found.get(b"authorization", b"").partition(b" ")
        credential = value.strip(b" ") if scheme.lower() == b"bearer" else b""
    # Past 12 digits the body is over MAX_BODY_BYTES whatever the rest says.
    size = int(length) if len(length) <= 12 else MAX_BODY_BYTES + 1
    return _Head(parts[0], parts[1], parts[2], fields, size, credential)


async def _next_head(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, calls: _Calls, first: bool
) -> bytes | None:
    """The next request head, read only once the reply under way (if any) has ended, so
    that the proxy's own answers never overtake it; None when the connection is to end.

    A client may take :data:`HEAD_TIMEOUT_S` for its first head (then it gets 408) and
    :data:`IDLE_TIMEOUT_S` between a reply's end and its next head (then it is closed).
    """
    read = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    pending: list[asyncio.Future[Any]] = [read]
    try:
        if not calls.quiet.is_set():
            # Watch for the next request and for a hang-up (so the reply can be drained
            # and counted) while the reply streams; answer nothing before its end.
            ended = asyncio.ensure_future(calls.quiet.wait())
            pending.append(ended)
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            gone = (asyncio.IncompleteReadError, ConnectionError)
            if read.done() and isinstance(read.exception(), gone):
                return None  # the client hung up: its reply is drained, to count it
            if not ended.done():
                await asyncio.wait([ended], timeout=DRAIN_LIMIT_S)
                if not ended.done():
                    return None
        return await asyncio.wait_for(read, HEAD_TIMEOUT_S if first else IDLE_TIMEOUT_S)
    except TimeoutError:
        if first:
            await _reply(
                writer,
                408,
                "invalid_request_error",
                f"The request head did not arrive within {HEAD_TIMEOUT_S:.0f} s.",
                close=True,
            )
        return None
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    except asyncio.LimitOverrunError:
        await _reply(writer, 431, "invalid_request_error", "Request headers too large.", close=True)
        return None
    finally:
        for future in pending:
            if not future.done():
                future.cancel()


class _Calls:
    """One client connection's calls whose replies have not ended."""

    def __init__(self) -> None:
        self.open: list[_Charge] = []
        self.quiet = asyncio.Event()
        """Set while no reply is under way."""
        self.quiet.set()

    def start(self, charge: _Charge) -> None:
        self.open.append(charge)
        self.quiet.clear()

    def end(self, charge: _Charge) -> None:
        with contextlib.suppress(ValueError):
            self.open.remove(charge)
        if not self.open:
            self.quiet.set()


@dataclass
class _Charge:
    """Charges one call's usage to its session as it grows (a :class:`Call`'s ``on_usage``)."""

    meter: SpendMeter
    session_id: SessionId
    limits: Limits
    model: str
    max_output: int
    """The request's ``max_tokens``: what a reply given up on is charged as output."""
    output: int = 0
    """Output tokens charged so far."""

    def __call__(self, tokens: Tokens) -> None:
        self.meter.charge(self.session_id, self.limits, self.model, tokens)
        self.output += tokens.output

    def give_up(self) -> None:
        """The reply's end will never be read: charge output up to ``max_tokens``."""
        if self.max_output > self.output:
            self(Tokens(output=self.max_output - self.output))


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
            hop("proxy: reply bytes")
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


def _give_up(pump: asyncio.Task[None], calls: _Calls) -> None:
    if not pump.done():
        log.warning(
            "model proxy: a reply its sandbox hung up on was still streaming after %.0f s; "
            "stopped reading it (charged as if it had produced its max_tokens)",
            DRAIN_LIMIT_S,
        )
        for charge in list(calls.open):
            charge.give_up()
        pump.cancel()


async def _requested(body: bytes) -> tuple[str, int] | None:
    """The ``model`` and ``max_tokens`` (0 when not a positive integer) of a Messages API
    request body; None when the body is not a JSON object with a non-empty ``model``
    string, or repeats a key anywhere (the upstream might read the other ``model``)."""
    try:
        if len(body) >= PARSE_IN_THREAD_BYTES:
            request = await asyncio.to_thread(_decode, body)
        else:
            request = _decode(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(request, dict):
        return None
    model, max_tokens = request.get("model"), request.get("max_tokens")
    if not isinstance(model, str) or not model:
        return None
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        max_tokens = 0  # the upstream refuses such a request, unbilled
    return model, max_tokens


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
    writer: asyncio.StreamWriter,
    status: int,
    kind: str,
    message: str,
    *,
    retry: bool = False,
    close: bool = False,
) -> None:
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    reason = {
        400: "Bad Request",
        401: "Unauthorized",
        402: "Payment Required",
        403: "Forbidden",
        408: "Request Timeout",
        413: "Content Too Large",
        429: "Too Many Requests",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
    }[status]
    retry_headers = "x-should-retry: true\r\nretry-after: 1" if retry else "x-should-retry: false"
    if close:
        retry_headers += "\r\nconnection: close"
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{retry_headers}\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
