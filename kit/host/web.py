"""The chat page's routes: the page itself, its config, and (``kit dev`` and its Fly
rehearsal only) a session for a page of this host without the API token.

==========================  ====================================================  ==========
route                       answers                                               auth
==========================  ====================================================  ==========
``GET /``                   the page (``kit/web/index.html``), under a strict     none
                            Content-Security-Policy
``GET /web/<file>``         its scripts and stylesheet (a fixed list of names)    none
``GET /web/config.json``    ``{"session_url": …}``: where the page gets a         none
                            session (``/web/session`` in ``kit dev``; the
                            operator's endpoint in production, the bundle's
                            ``[web] session_url``; null: none)
``POST /web/session``       ``kit dev`` and its Fly rehearsal only                same-origin
                            (:attr:`WebConfig.local_sessions`): a new session,    loopback
                            as ``POST /v1/sessions`` answers, for a page of       page
                            this host opened at a loopback name
``POST /web/mail``          ``kit dev`` only (:attr:`WebConfig.local_mail`, with  same-origin
                            local sessions): the agent's email threads with       loopback
                            their session tokens (kit/mail/routes.py)             page
==========================  ====================================================  ==========

``POST /web/session`` hands a session to a request only when its ``Origin`` is one of the
host's own loopback origins (the :class:`~kit.host.auth.OriginPolicy`'s ``own`` names, so
the host must listen on a loopback address; behind ``kit dev --target fly``'s proxy, the
proxy's: ``GatewayConfig.proxied_at``), its ``Host`` is a loopback name of the host
too, the two are the same origin, and ``Sec-Fetch-Site``, when sent, is ``same-origin``.
A page of another site cannot get one (its ``Origin`` is its own: CSRF), nor can a page
whose name resolves to this machine (its ``Host`` is that name: DNS rebinding). Anything
else is 403 ``forbidden_origin`` naming why. ``POST /web/mail`` is guarded by the same rule
(:func:`local_refusal`), and ``/web/config.json`` names it (``mail_url``) only where it is
served. A local process that forges the headers gets a
session, as it could read ``<state>/api-token`` (docs/web.md says so for shared machines).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kit.bundle.config import session_url_origin
from kit.host.auth import OriginPolicy, normalise_origin
from kit.host.errors import HostError
from kit.protocol import errors as e
from kit.web import WEB_DIR

PAGE_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "render.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
"""The files served under ``/web/`` and their types; nothing else of ``kit/web`` is."""

_ORIGIN_TEXT = re.compile(r"[\x21-\x7e]+")
"""What an ``Origin`` of this host can hold: printable ASCII, no spaces."""

SESSION_PATH = "/web/session"
MAIL_PATH = "/web/mail"
CONFIG_PATH = "/web/config.json"

PAGE_PATHS = ("/", CONFIG_PATH, *(f"/web/{name}" for name in PAGE_FILES))
"""HTTP paths of the page answered without the API token: the page, its files, its config."""

PAGE_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@dataclass(frozen=True)
class WebConfig:
    """How a host serves the chat page.

    ``local_sessions``: serve ``POST /web/session`` (``kit dev``: a page on a loopback
    address gets sessions without the API token). ``session_url``: otherwise, the URL the
    page asks for a session (an endpoint of the operator's, which calls ``POST
    /v1/sessions`` with the API token; docs/web.md); None: the page can only rejoin
    sessions it was linked to.
    """

    local_sessions: bool = False
    session_url: str | None = None
    session_url_from: Callable[[], str | None] | None = None
    """In place of ``session_url``, read at each request: a host whose bundle changes while
    it runs (the Fly gateway follows the deploy pointer) names the current bundle's. The
    config and the page's CSP follow it; a page loaded before a change to another origin
    can call the new URL once it is reloaded (its CSP is the one it was loaded with)."""

    local_mail: Callable[[Request], Awaitable[Response]] | None = None
    """``kit dev``: answers ``POST /web/mail`` (the email threads, with their session
    tokens) once :func:`local_refusal` let the request through; served only with
    ``local_sessions``. Hosts that never hand tokens to a page (``kit gateway``, Fly, the
    shim) leave it None."""

    @property
    def mail_served(self) -> bool:
        """Whether ``POST /web/mail`` is served."""
        return self.local_sessions and self.local_mail is not None

    def current_url(self) -> str | None:
        """The ``session_url`` the page is told now (:data:`SESSION_PATH` with local
        sessions)."""
        if self.local_sessions:
            return SESSION_PATH
        return self.session_url_from() if self.session_url_from else self.session_url


def public_paths(config: WebConfig) -> tuple[str, ...]:
    """The paths ``config``'s routes answer without the API token: :data:`PAGE_PATHS`, and
    ``/web/session`` and ``/web/mail`` where they are served (they check their own
    conditions)."""
    local = (SESSION_PATH,) if config.local_sessions else ()
    return (*PAGE_PATHS, *local, *((MAIL_PATH,) if config.mail_served else ()))


def content_security_policy(session_url: str | None) -> str:
    """The page's CSP: its own scripts and styles only, no inline code, no frames, no
    plugins; it connects to this host (and the origin of ``session_url``, when it is a
    well-formed one: :func:`~kit.bundle.config.session_url_origin`)."""
    connect = "'self'"
    origin = None if session_url is None else session_url_origin(session_url)
    if origin is not None:
        connect += f" {origin}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def local_refusal(
    policy: OriginPolicy, origin: str | None, host: str | None, site: str | None = None
) -> str | None:
    """Why a ``POST /web/session`` with this ``Origin``, ``Host`` and ``Sec-Fetch-Site``
    (``site``) is refused (None: it is a same-origin request from a page of this host at a
    loopback name). The shim applies the same rules (worker_shim/src/web.ts); both replay
    the cases of ``kit/host/golden/web_session.jsonl``."""
    if policy.own is None:
        return (
            "Sessions without the API token are given only to pages of a host listening on a "
            "loopback address (kit dev --host 127.0.0.1); use POST /v1/sessions with the token."
        )
    if origin is None:
        return (
            "The request has no Origin header: only this host's own page gets a session here; "
            "other clients use POST /v1/sessions with the API token."
        )
    # Only spaces and tabs around a header's value are not part of it; anything else (a
    # control character str.strip would drop, a tab inside that urlsplit would drop) makes
    # another origin, as the shim reads it.
    parts = None
    if _ORIGIN_TEXT.fullmatch(origin.strip(" \t")):
        with contextlib.suppress(HostError):
            parts = urlsplit(normalise_origin(origin))
    netloc = parts.netloc if parts is not None and parts.scheme == "http" else None
    if netloc is None or netloc not in policy.own:
        return (
            f"Origin {origin[:200]!r} is not this host's own loopback origin "
            f"({', '.join(sorted(policy.own))}); open the page from this host."
        )
    if host is None or host.strip(" \t").lower() != netloc:
        return (
            f"Host {(host or '')[:200]!r} is not the page's origin {netloc!r}: a session is "
            "given only to same-origin requests at a loopback name."
        )
    if site is not None and site != "same-origin":
        return f"Sec-Fetch-Site is {site[:50]!r}: only a same-origin request gets a session."
    return None


def web_routes(
    config: WebConfig,
    policy: OriginPolicy,
    create_session: Callable[[Request], Awaitable[Response]],
) -> list[BaseRoute]:
    """The page's routes (see the module docstring); ``create_session`` answers as
    ``POST /v1/sessions`` does."""
    page_headers = {
        **PAGE_HEADERS,
        "x-frame-options": "DENY",
        # A page of another site that opened this one gets no handle on it (window.opener
        # is cut both ways), so it cannot script or steer it.
        "cross-origin-opener-policy": "same-origin",
    }

    async def index(request: Request) -> Response:
        # The CSP names the session URL's origin as the config says it now (it may follow
        # the host's current bundle).
        csp = content_security_policy(config.current_url())
        return FileResponse(
            WEB_DIR / "index.html", headers={**page_headers, "content-security-policy": csp}
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        media_type = PAGE_FILES.get(name)
        if media_type is None:
            return JSONResponse(
                {"error": "not_found", "message": f"The page has no file {name[:100]!r}."},
                status_code=404,
            )
        return FileResponse(WEB_DIR / name, media_type=media_type, headers=PAGE_HEADERS)

    async def page_config(request: Request) -> Response:
        body: dict[str, str | None] = {"session_url": config.current_url()}
        if config.mail_served:
            body["mail_url"] = MAIL_PATH
        return JSONResponse(body, headers=PAGE_HEADERS)

    def refusal(request: Request) -> Response | None:
        headers = request.headers
        why = local_refusal(
            policy, headers.get("origin"), headers.get("host"), headers.get("sec-fetch-site")
        )
        if why is None:
            return None
        return JSONResponse({"error": e.FORBIDDEN_ORIGIN, "message": why}, status_code=403)

    async def local_session(request: Request) -> Response:
        return refusal(request) or await create_session(request)

    async def local_mail(request: Request) -> Response:
        assert config.local_mail is not None
        return refusal(request) or await config.local_mail(request)

    routes: list[BaseRoute] = [
        Route("/", index),
        Route(CONFIG_PATH, page_config),
        Route("/web/{name}", asset),
    ]
    if config.local_sessions:
        routes.insert(0, Route(SESSION_PATH, local_session, methods=["POST"]))
    if config.mail_served:
        routes.insert(0, Route(MAIL_PATH, local_mail, methods=["POST"]))
    return routes
