"""The Fly proxy's headers as data: ``fly-replay`` parsed, ``fly-replay-src`` and
``fly-replay-failed`` written, a forwarded request's and response's headers rewritten
(reference/fly.md §9). No sockets here; :mod:`emulator.fly_api.proxy` does the I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

REPLAY = b"fly-replay"
REPLAY_SRC = b"fly-replay-src"
REPLAY_FAILED = b"fly-replay-failed"
REQUEST_ID = b"fly-request-id"
FORCE_INSTANCE = b"fly-force-instance-id"
PREFER_INSTANCE = b"fly-prefer-instance-id"

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"upgrade",
    }
)
"""Headers that belong to one connection (RFC 9110 §7.6.1), not passed on as they are."""

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Replay:
    """A machine's ``fly-replay`` answer: where the proxy should send the request instead."""

    instance: str | None = None
    prefer_instance: str | None = None
    region: str | None = None
    app: str | None = None
    state: str | None = None
    elsewhere: bool = False
    fallback: str | None = None
    """``prefer_self`` or ``force_self``: on failure, the source machine gets the request
    again, with ``fly-replay-failed``."""


def parse_replay(value: str) -> Replay:
    """A ``fly-replay`` value (``instance=<id>;fallback=prefer_self``; ``,`` also separates);
    unknown fields are ignored, as Fly ignores them."""
    fields: dict[str, str] = {}
    for part in value.replace(",", ";").split(";"):
        key, _, val = part.strip().partition("=")
        if key:
            fields[key.strip().lower()] = val.strip()
    return Replay(
        instance=fields.get("instance") or None,
        prefer_instance=fields.get("prefer_instance") or None,
        region=fields.get("region") or None,
        app=fields.get("app") or None,
        state=fields.get("state") or None,
        elsewhere=fields.get("elsewhere", "").lower() == "true",
        fallback=fields.get("fallback") or None,
    )


def find(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), decoded; None when absent."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def without(headers: Iterable[tuple[bytes, bytes]], *names: bytes) -> Headers:
    """``headers`` without any header called one of ``names`` (lower case)."""
    return [(k, v) for k, v in headers if k.lower() not in names]


def request_id(region: str) -> str:
    """A new ``fly-request-id`` (26 characters, then the region, as Fly writes it)."""
    return f"{secrets.token_hex(13).upper()}-{region}"


def is_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request asks to switch protocols (``Connection: upgrade`` + ``Upgrade``)."""
    pairs = list(headers)
    connection = ",".join(v.decode("latin-1") for k, v in pairs if k.lower() == b"connection")
    tokens = {t.strip().lower() for t in connection.split(",")}
    return "upgrade" in tokens and find(pairs, b"upgrade") is not None


def forwarded_request(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client_ip: str,
    request_id: str,
    forwarded: tuple[str, int] = ("https", 443),
) -> Headers:
    """The request headers a machine sees: hop-by-hop ones dropped (an upgrade's
    ``Connection``/``Upgrade`` kept), Fly's routing headers dropped, and ``Fly-Client-IP``,
    ``X-Forwarded-For`` (appended), ``X-Forwarded-Proto``/``-Port`` (``forwarded``: Fly's
    https and 443 by default), ``fly-request-id`` and ``Via`` added."""
    pairs = list(headers)
    upgrade = is_upgrade(pairs)
    prior = find(pairs, b"x-forwarded-for")
    out = without(
        pairs,
        *(HOP_BY_HOP - ({b"connection", b"upgrade"} if upgrade else set())),
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"fly-client-ip",
        REQUEST_ID,
        REPLAY_SRC,
        REPLAY_FAILED,
    )
    if upgrade:
        out = [*without(out, b"connection"), (b"connection", b"upgrade")]
    else:
        out.append((b"connection", b"close"))
    out += [
        (b"fly-client-ip", client_ip.encode()),
        (b"x-forwarded-for", (f"{prior}, {client_ip}" if prior else client_ip).encode()),
        (b"x-forwarded-proto", forwarded[0].encode()),
        (b"x-forwarded-port", str(forwarded[1]).encode()),
        (b"x-forwarded-ssl", b"on" if forwarded[0] == "https" else b"off"),
        (REQUEST_ID, request_id.encode()),
        (b"via", b"1.1 fly.io"),
    ]
    return out


def replay_src(source: str, region: str, now_us: int, state: str | None) -> tuple[bytes, bytes]:
    """The ``fly-replay-src`` header a replay's target gets."""
    value = f"instance={source};region={region};t={now_us}"
    if state is not None:
        value += f";state={state}"
    return REPLAY_SRC, value.encode()


def replay_failed(reason: str, elapsed_ms: int) -> tuple[bytes, bytes]:
    """The ``fly-replay-failed`` header: ``reason=no_candidate|retries_exhausted|…``."""
    return REPLAY_FAILED, f"reason={reason};elapsed_ms={elapsed_ms}".encode()


def forwarded_response(
    headers: Iterable[tuple[bytes, bytes]], *, request_id: str, switching: bool = False
) -> Headers:
    """The response headers the client sees: hop-by-hop ones dropped (kept on a 101), a
    ``fly-replay`` not acted on (a fallback's answer) dropped, ``fly-request-id``,
    ``Server: Fly/emulated`` and ``Via`` added."""
    pairs = list(headers)
    out = pairs if switching else without(pairs, *HOP_BY_HOP)
    out = without(out, REQUEST_ID, REPLAY, b"server", b"via")
    return [
        *out,
        (REQUEST_ID, request_id.encode()),
        (b"server", b"Fly/emulated"),
        (b"via", b"1.1 fly.io"),
    ]
