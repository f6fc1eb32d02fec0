"""Who may use a host's routes: the API token on every HTTP route, and the browser origins
allowed to open a session socket.

Every HTTP request to a host carries ``Authorization: Bearer <API token>`` except the few
routes a host names public (``/healthz``, which says only whether the host is up). Session
WebSockets authenticate in the protocol itself (the ``hello`` frame's session token), so the
upgrade passes through; what a browser may do before ``hello`` is bounded by the
:class:`OriginPolicy`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from kit.host.edge import authenticated
from kit.host.errors import HostError
from kit.loopback import is_loopback_host

UNAUTHORIZED_MESSAGE = "Send Authorization: Bearer <the host's API token>."


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (constant time)."""
    scheme, _, got = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(got.strip().encode(), token.encode())


def key_matches(headers: Mapping[str, str], key: str) -> bool:
    """Whether ``x-api-key`` or a bearer ``Authorization`` carries ``key`` (constant time):
    how Messages API clients authenticate."""
    sent = headers.get("x-api-key")
    if sent is not None:
        return hmac.compare_digest(sent.encode(), key.encode())
    return bearer_matches(headers.get("authorization", ""), key)


def unauthorized() -> JSONResponse:
    """The host's 401: JSON ``{"error", "message"}`` naming what to send."""
    return JSONResponse(
        {"error": "unauthorized", "message": UNAUTHORIZED_MESSAGE},
        status_code=401,
        headers={"www-authenticate": "Bearer"},
    )


class RequireToken:
    """ASGI middleware: HTTP requests need the API token, whatever their path.

    Paths in ``public`` pass without it, as do WebSocket upgrades (they authenticate with
    ``hello``) and lifespan messages. An unknown path without the token is 401, not 404:
    nothing about the routes is learnt without it.
    """

    def __init__(self, app: ASGIApp, *, token: str, public: Iterable[str] = ()) -> None:
        if not token:
            raise HostError("RequireToken needs a non-empty API token.")
        self.app = app
        self.token = token
        self.public = frozenset(public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.public:
            authorization = ""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            if not bearer_matches(authorization, self.token):
                await unauthorized()(scope, receive, send)
                return
            authenticated(scope)  # the connection no longer counts against its peer's cap
        await self.app(scope, receive, send)


class OriginPolicy:
    """Which browser origins may open a session socket.

    A request without ``Origin`` is not from a browser page and is unaffected (it still
    needs a session token). A browser's ``Origin`` must be the host's own origin or one of
    ``allowed`` (exact ``scheme://host[:port]`` strings, as ``KIT_ALLOWED_ORIGINS`` lists
    them).

    The host's own origin is ``own`` when given (``host:port`` values, e.g. the loopback
    names of the address ``kit dev`` listens on: then a page on another name that resolves
    to this machine, a DNS-rebinding attack, is refused); otherwise an origin whose
    ``host[:port]`` equals the request's ``Host`` header (a host behind a proxy or a
    platform's router, whose public name kit does not know).
    """

    def __init__(self, allowed: Iterable[str] = (), *, own: Iterable[str] | None = None) -> None:
        self.allowed = frozenset(normalise_origin(origin) for origin in allowed)
        self.own = None if own is None else frozenset(h.lower() for h in own)

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a socket with this ``Origin`` (None: none sent) to ``Host`` may open."""
        if origin is None:
            return True
        try:
            normal = normalise_origin(origin)
        except HostError:
            return False  # "null" (a file: page, a sandboxed frame) and anything malformed
        if normal in self.allowed:
            return True
        netloc = urlsplit(normal).netloc
        if self.own is not None:
            return netloc in self.own
        return host is not None and netloc == host.strip().lower()


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case; :class:`HostError` for anything else."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:  # an unclosed IPv6 bracket, say
        raise HostError(
            f"{origin!r} is not an origin like https://example.com or http://host:8080"
        ) from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise HostError(f"{origin!r} is not an origin like https://example.com or http://host:8080")
    try:
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        raise HostError(f"{origin!r} has a bad port") from None
    return f"{parts.scheme}://{parts.netloc.lower()}"


def is_loopback_name(host: str | None) -> bool:
    """Whether ``host`` (a name or address, IPv6 without brackets) is ``localhost`` or a
    loopback address."""
    return is_loopback_host(host)


def loopback_hosts(host: str, port: int) -> list[str]:
    """The ``Host`` values a browser sends to a host listening on a loopback ``host``:
    the address itself, ``localhost`` and the other loopback address family."""
    names = {host.lower(), "localhost", "127.0.0.1", "[::1]"}
    names = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
    return sorted(f"{name}:{port}" for name in names)
