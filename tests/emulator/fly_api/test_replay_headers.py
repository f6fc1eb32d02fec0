"""The proxy's headers as data: fly-replay parsed, forwarded headers rewritten."""

from __future__ import annotations

from emulator.fly_api.replay import (
    Replay,
    find,
    forwarded_request,
    forwarded_response,
    parse_replay,
    replay_src,
)


def test_fly_replay_fields_are_parsed_with_either_separator() -> None:
    """``;`` and ``,`` separate fields; spaces and unknown fields are ignored."""
    assert parse_replay("instance=abc; fallback=prefer_self, state=s1;colour=red") == Replay(
        instance="abc", fallback="prefer_self", state="s1"
    )
    assert parse_replay("elsewhere=true;region=ams") == Replay(elsewhere=True, region="ams")
    assert parse_replay("prefer_instance=x;app=other") == Replay(prefer_instance="x", app="other")


def test_a_forwarded_request_gets_flys_headers_and_loses_hop_by_hop_ones() -> None:
    """Hop-by-hop headers go, X-Forwarded-For is appended to, and a client cannot forge
    ``fly-replay-src`` (the target may trust its ``state``)."""
    out = forwarded_request(
        [
            (b"host", b"kit-gw.fly.dev"),
            (b"keep-alive", b"timeout=5"),
            (b"connection", b"keep-alive"),
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"fly-replay-src", b"instance=forged;state=secret"),
        ],
        client_ip="127.0.0.1",
        request_id="R-iad",
    )
    assert find(out, b"host") == "kit-gw.fly.dev"
    assert find(out, b"keep-alive") is None
    assert find(out, b"fly-replay-src") is None
    assert find(out, b"connection") == "close"
    assert find(out, b"x-forwarded-for") == "10.0.0.1, 127.0.0.1"
    assert find(out, b"fly-request-id") == "R-iad"


def test_an_upgrade_keeps_its_connection_and_upgrade_headers() -> None:
    """A WebSocket handshake reaches the machine still asking to upgrade."""
    out = forwarded_request(
        [(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket")],
        client_ip="127.0.0.1",
        request_id="R-iad",
    )
    assert find(out, b"connection") == "upgrade"
    assert find(out, b"upgrade") == "websocket"
    answer = forwarded_response(
        [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")], request_id="R", switching=True
    )
    assert find(answer, b"upgrade") == "websocket"


def test_fly_replay_src_names_the_source_and_state() -> None:
    """``instance=…;region=…;t=<µs>`` and the state only when given."""
    assert replay_src("m1", "iad", 5, "s") == (
        b"fly-replay-src",
        b"instance=m1;region=iad;t=5;state=s",
    )
    assert replay_src("m1", "iad", 5, None)[1] == b"instance=m1;region=iad;t=5"
