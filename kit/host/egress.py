"""The egress proxy: a sandbox's only way to the network besides the model proxy.

A sandbox's network namespace holds nothing but loopback; the host binds this proxy's Unix
socket into it, and the runtime's loopback forwarder (:mod:`kit.runtime.egress_forwarder`)
is what ``HTTPS_PROXY`` points at. The proxy speaks the HTTP proxy protocol:

- ``CONNECT host:port`` opens a tunnel (HTTPS, or anything else over TCP);
- an absolute-URI request such as ``GET http://host:port/path`` is forwarded with its
  request line rewritten to origin form (``GET /path``): one request per connection.

Every request must carry ``Proxy-Authorization: Basic base64("kit:" + token)``
(:data:`kit.protocol.egress.PROXY_USER`) with a live per-session token
(:meth:`EgressProxy.issue`). The target must be on the agent's allowlist
(``kit.toml`` ``[sandbox] egress``, grammar in :mod:`kit.bundle.allowlist`). Answers of the
proxy's own, each with a plain-text body that names the fix:

====  ==============================================================================
400   not a proxy request (origin-form or ``https://`` target, bad head, bad host)
403   target not on the allowlist: add it to ``[sandbox] egress`` in kit.toml
407   no ``Proxy-Authorization``, or an unknown or revoked token
411   a chunked request body on plain HTTP (send ``Content-Length``, or use HTTPS)
429   the token already has :data:`MAX_CONNECTIONS_PER_TOKEN` connections open
431   request head over :data:`MAX_HEAD_BYTES`
502   the target refused the connection or did not resolve
504   the target did not accept within :data:`CONNECT_TIMEOUT_S`
====  ==============================================================================

A connection must send its head within :data:`HEAD_TIMEOUT_S`, and at most
:data:`MAX_UNPROVEN_CONNECTIONS` may be open at once before showing a live token (over
that, a connection is closed unanswered): the socket is shared by every sandbox.

Each refusal is logged in one line (never with the token). Past the head, bytes flow
untouched in both directions with back-pressure (no more than one read buffer per
direction is held); an end of stream on one side is passed on as a half-close, and the
connection closes when both directions are done (plain HTTP: when the response ends).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kit.bundle.allowlist import EgressRule, allows, normalize_host, parse_rule
from kit.host.errors import HostError
from kit.host.gate import ConnectionGate, quiet_accept_errors
from kit.host.tokens import SessionTokens
from kit.ids import SessionId
from kit.protocol.egress import PROXY_USER

log = logging.getLogger("kit.host")

MAX_HEAD_BYTES = 32 * 1024
HEAD_TIMEOUT_S = 30.0
"""How long a new connection may take to send its request head."""
CONNECT_TIMEOUT_S = 10.0
MAX_UNPROVEN_CONNECTIONS = 64
"""Connections open at once, over all sandboxes, that have not yet shown a live token; one
more is closed at once, unanswered."""
MAX_CONNECTIONS_PER_TOKEN = 128
"""Connections (tunnels) open at once with one sandbox's token; one more gets 429."""
CHUNK_BYTES = 64 * 1024
_HOP_BY_HOP = {
    b"connection",
    b"host",
    b"keep-alive",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
}
_ABSOLUTE = re.compile(r"^http://([^/?#]*)([^#]*)", re.IGNORECASE)
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PORT = re.compile(r"^[0-9]{1,5}$")
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    411: "Length Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class _Request:
    method: str
    host: str
    port: int
    upstream_head: bytes
    """What to send the target first: b"" for a tunnel, the rewritten head otherwise."""
    body_bytes: int | None
    """Bytes of the client's body to forward; None for a tunnel (everything)."""


class _Refused(HostError):
    def __init__(self, status: int, message: str, why: str) -> None:
        super().__init__(message)
        self.status, self.message, self.why = status, message, why


class EgressProxy:
    """Issues per-session tokens and relays their sandboxes' connections to allowed hosts."""

    def __init__(self, allow: Sequence[str]) -> None:
        self.rules: tuple[EgressRule, ...] = tuple(parse_rule(entry) for entry in allow)
        self._tokens = SessionTokens("kit-egress-")
        self._live: dict[bytes, set[asyncio.Task[None]]] = {}
        """Open connections per token, so revoking a token ends them."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []
        self._gate = ConnectionGate(
            unproven=MAX_UNPROVEN_CONNECTIONS, per_token=MAX_CONNECTIONS_PER_TOKEN
        )
        self.forwarded = 0
        """Connections (tunnels and plain-HTTP requests) relayed to a target so far."""

    def allow(self, entries: Sequence[str]) -> None:
        """Replace the allowlist (a reload of the bundle): new connections of every sandbox
        follow it; open ones carry on."""
        self.rules = tuple(parse_rule(entry) for entry in entries)

    def issue(self, session_id: SessionId) -> str:
        """A new token for ``session_id``'s sandbox."""
        return self._tokens.issue(session_id)

    def revoke(self, token: str) -> None:
        """Stop accepting ``token`` and end the connections it opened (its sandbox is gone)."""
        self._tokens.revoke(token)
        for task in self._live.pop(token.encode(), set()):
            task.cancel()

    def session_for(self, token: bytes) -> SessionId | None:
        """The session a token belongs to, if it is live."""
        return self._tokens.session_for(token)

    async def serve_unix(self, path: Path | str) -> asyncio.Server:
        """Listen on a Unix socket (bound into each sandbox)."""
        quiet_accept_errors(asyncio.get_running_loop())
        server = await asyncio.start_unix_server(self._accept, path=str(path), limit=MAX_HEAD_BYTES)
        self._servers.append(server)
        return server

    async def serve_tcp(self, host: str, port: int) -> asyncio.Server:
        """Listen on TCP (sandboxes on other machines reach the host this way); the
        per-session token in ``Proxy-Authorization`` is what admits a client."""
        quiet_accept_errors(asyncio.get_running_loop())
        server = await asyncio.start_server(self._accept, host, port, limit=MAX_HEAD_BYTES)
        self._servers.append(server)
        return server

    def close(self) -> None:
        """Stop listening and end every open connection."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        for task in self._tasks:
            task.cancel()

    async def aclose(self) -> None:
        """:meth:`close`, then wait until every connection has ended."""
        self.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one client connection -----------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ticket = self._gate.enter()
        if ticket is None:
            writer.close()  # too many connections without a token: anybody's, so no answer
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        token = b""
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                raise _Refused(
                    431,
                    f"The request head is over {MAX_HEAD_BYTES} bytes.",
                    "head too large",
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                return  # not a request: nothing to answer
            token, request = self._parse(head)
            if not ticket.prove(token):
                raise _Refused(
                    429,
                    f"kit's egress proxy allows {MAX_CONNECTIONS_PER_TOKEN} open connections "
                    "per sandbox; close some and retry.",
                    "too many connections for one token",
                )
            self._live.setdefault(token, set()).add(task)
            up_reader, upstream = await _open(request)
            self.forwarded += 1
            if request.upstream_head:
                upstream.write(request.upstream_head)
            else:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await _relay(reader, writer, up_reader, upstream, request.body_bytes)
        except _Refused as refusal:
            log.warning("egress proxy answered %s: %s", refusal.status, refusal.why)
            await _reply(writer, refusal.status, refusal.message)
        except (ConnectionError, OSError):
            pass  # either side went away: nothing more to relay
        finally:
            ticket.leave()
            self._tasks.discard(task)
            live = self._live.get(token)
            if live is not None:
                live.discard(task)
                if not live:
                    del self._live[token]
            for side in (upstream, writer):
                if side is not None:
                    side.close()

    def _parse(self, head: bytes) -> tuple[bytes, _Request]:
        """The token and the checked request; :class:`_Refused` when it may not pass."""
        if b"\n" in head[:-4].replace(b"\r\n", b"") or b"\r" in head[:-4].replace(b"\r\n", b""):
            # A bare LF or CR splits lines differently for the proxy and the target.
            raise _Refused(400, "Malformed request head (bare CR or LF).", "bare CR or LF")
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise _Refused(400, "Malformed request line.", "malformed request line")
        method, target, version = (p.decode("latin-1") for p in parts)
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or _FIELD_NAME.fullmatch(name) is None:
                raise _Refused(400, "Malformed header line.", "malformed header")
            headers.append((name.lower(), value.strip()))
        names = [name for name, _ in headers]
        for single in (b"content-length", b"host", b"proxy-authorization", b"transfer-encoding"):
            if names.count(single) > 1:
                raise _Refused(
                    400, f"Header {single.decode()} given twice.", f"duplicate {single.decode()}"
                )
        fields = dict(headers)
        token = _basic_token(fields.get(b"proxy-authorization", b""))
        session = self.session_for(token) if token else None
        if session is None:
            raise _Refused(
                407,
                "kit's egress proxy needs Proxy-Authorization: Basic with user "
                f"{PROXY_USER!r} and this sandbox's token (HTTPS_PROXY carries both); the "
                "token given is missing, unknown or revoked.",
                "no live token",
            )
        if method == "CONNECT":
            host, port = _authority(target, None)
            request = _Request(method, host, port, b"", None)
        else:
            request = self._plain(method, target, version, headers)
        if not allows(self.rules, request.host, request.port):
            where = f"{request.host}:{request.port}"
            raise _Refused(
                403,
                f"kit's egress proxy refused {where}: it is not on this agent's egress "
                f'allowlist. Add it to [sandbox] egress in kit.toml (egress = ["{where}"], or '
                f'"{request.host}" for ports 443 and 80) and restart the agent.',
                f"{method} {where} for session {session} is not on the allowlist",
            )
        return token, request

    def _plain(
        self, method: str, target: str, version: str, headers: list[tuple[bytes, bytes]]
    ) -> _Request:
        match = _ABSOLUTE.match(target)
        if match is None:
            raise _Refused(
                400,
                "kit's egress proxy takes CONNECT host:port (for HTTPS) or an absolute "
                "http:// URI; set HTTPS_PROXY and HTTP_PROXY rather than calling it directly.",
                f"{method} with a {target[:8]!r}... target",
            )
        authority, path = match.group(1), match.group(2) or "/"
        host, port = _authority(authority, 80)
        fields = dict(headers)
        if b"transfer-encoding" in fields:
            raise _Refused(
                411,
                "kit's egress proxy forwards plain-HTTP bodies with Content-Length only; "
                "use HTTPS (CONNECT) for chunked uploads.",
                "chunked plain-HTTP body",
            )
        length = fields.get(b"content-length", b"0")
        if not length.isdigit():
            raise _Refused(400, "Malformed Content-Length.", "malformed content-length")
        if not path.startswith("/"):
            path = "/" + path
        out = [
            f"{method} {path} {version}".encode("latin-1"),
            b"Host: " + authority.encode("latin-1"),
            *(name + b": " + value for name, value in headers if name not in _HOP_BY_HOP),
            b"Connection: close",
        ]
        return _Request(method, host, port, b"\r\n".join(out) + b"\r\n\r\n", int(length))


def _basic_token(value: bytes) -> bytes:
    """The password of a ``Basic`` credential for :data:`PROXY_USER`; b"" otherwise."""
    scheme, _, credential = value.partition(b" ")
    if scheme.lower() != b"basic":
        return b""
    try:
        decoded = base64.b64decode(credential.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""
    user, sep, token = decoded.partition(b":")
    return token if sep and user == PROXY_USER.encode() else b""


def _authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` as (normalized host, port); :class:`_Refused` when malformed."""
    host, sep, port_text = authority.rpartition(":")
    if not sep:
        host, port_text = authority, str(default_port or "")
    port = int(port_text) if _PORT.match(port_text) else 0
    normal = normalize_host(host) if "@" not in host else None
    if normal is None or not 1 <= port <= 65535:
        raise _Refused(
            400,
            "The target must be host:port with a host name or IPv4 address "
            "(IPv6 and user info are not supported).",
            "malformed target",
        )
    return normal, port


async def _address(host: str, port: int) -> str:
    """The address to connect to. A name must resolve to a public address: one on the
    allowlist must not become a way to the host's own loopback or private network (DNS
    rebinding); an agent that should reach such an address names it in kit.toml."""
    with contextlib.suppress(ValueError):
        ipaddress.IPv4Address(host)
        return host  # an address literal: on the allowlist as it is
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM),
            CONNECT_TIMEOUT_S,
        )
    except (OSError, TimeoutError) as exc:
        raise _Refused(
            502,
            f"kit's egress proxy could not resolve {host}: {exc}.",
            f"{host} did not resolve",
        ) from None
    found = [str(info[4][0]) for info in infos]
    public = [a for a in found if ipaddress.IPv4Address(a).is_global]
    if not public:
        raise _Refused(
            403,
            f"kit's egress proxy refused {host}:{port}: it resolves to {', '.join(found)}, "
            "not a public address. If the agent should reach it, add the address itself to "
            f'[sandbox] egress in kit.toml (egress = ["{found[0] if found else "ADDRESS"}:{port}"]).',
            f"{host} resolves to a non-public address {found}",
        )
    return public[0]


async def _open(request: _Request) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    where = f"{request.host}:{request.port}"
    address = await _address(request.host, request.port)
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(address, request.port, limit=CHUNK_BYTES),
            CONNECT_TIMEOUT_S,
        )
    except TimeoutError:
        raise _Refused(
            504,
            f"kit's egress proxy could not connect to {where} within {CONNECT_TIMEOUT_S:.0f} s.",
            f"{where} timed out",
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _Refused(
            502,
            f"kit's egress proxy could not connect to {where}: {reason}.",
            f"{where} unreachable: {reason}",
        ) from None


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None) -> None:
    """Copy ``src`` to ``dst`` until its end (then half-close ``dst``) or ``limit`` bytes."""
    left = limit
    while left is None or left > 0:
        data = await src.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
        if not data:
            if limit is None and dst.can_write_eof() and not dst.is_closing():
                dst.write_eof()
            return
        dst.write(data)
        await dst.drain()
        if left is not None:
            left -= len(data)


async def _relay(
    client_reader: asyncio.StreamReader,
    client: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
    body_bytes: int | None,
) -> None:
    """Relay until both directions end (a tunnel) or the response ends (plain HTTP, whose
    request body is ``body_bytes`` long); a reset on either side ends both."""
    out = asyncio.create_task(_pump(client_reader, upstream, body_bytes))
    back = asyncio.create_task(_pump(up_reader, client, None))
    try:
        while not back.done() or (body_bytes is None and not out.done()):
            pending = [t for t in (out, back) if not t.done()]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.done() and not t.cancelled() and t.exception() for t in (out, back)):
                return
    finally:
        for task in (out, back):
            task.cancel()
        await asyncio.gather(out, back, return_exceptions=True)


async def _reply(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = (message + "\n").encode()
    extra = 'proxy-authenticate: Basic realm="kit egress"\r\n' if status == 407 else ""
    writer.write(
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n{extra}"
        f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
