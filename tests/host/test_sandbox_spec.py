"""The one mapping from a sandbox spec to the runtime's config, for every provider."""

from __future__ import annotations

import pytest

from kit.host.errors import SandboxError
from kit.host.sandbox import Endpoint, SandboxSpec, SandboxView, runtime_config, store_folder
from kit.ids import SessionId

SESSION = SessionId("3f0c1a4e-0000-4000-8000-000000000001")


def _spec(model: str, egress: str | None, store: str) -> SandboxSpec:
    return SandboxSpec(
        session_id=SESSION,
        tier="basic",
        bundle_digest="ab" * 32,
        store_url=store,
        model=Endpoint(model, "model-token"),
        runtime_token="runtime-token",
        idle_timeout_s=60,
        egress=Endpoint(egress, "egress-token") if egress else None,
    )


def test_a_local_view_keeps_the_hosts_paths() -> None:
    """Unix sockets and a SQLite store keep their host paths where the sandbox sees them
    there (the local provider binds them at the same places)."""
    spec = _spec("unix:/run/kit/model.sock", "unix:/run/kit/egress.sock", "sqlite:///s/t.sqlite")
    view = SandboxView("/b", "/w", "/h", "/t", "unix:/r/runtime.sock")
    config = runtime_config(spec, view)
    assert (config.model_base_url, config.model_unix_socket) == (
        "http://localhost",
        "/run/kit/model.sock",
    )
    assert (config.egress_url, config.egress_token) == ("unix:/run/kit/egress.sock", "egress-token")
    assert config.store_url == "sqlite:///s/t.sqlite"
    assert config.bundle_digest == spec.bundle_digest
    assert (config.model_token, config.runtime_token) == ("model-token", "runtime-token")


def test_a_container_view_maps_mounted_paths() -> None:
    """A container sees the host's folders where they are mounted: sockets and the store
    are rewritten, the longest mount first (the store's options kept); other paths are
    left alone."""
    spec = _spec(
        "unix:/state/run/model.sock",
        "unix:/state/run/egress.sock",
        "sqlite:///state/tr/s1/t.sqlite?durability=fsync",
    )
    view = SandboxView(
        "/bundle",
        "/workspace",
        "/home/kit",
        "/tmp",
        "tcp:0.0.0.0:8080",
        mounts={"/state/run": "/kit/run", "/state/tr/s1": "/kit/transcript", "/state": "/nope"},
    )
    config = runtime_config(spec, view)
    assert config.model_unix_socket == "/kit/run/model.sock"
    assert config.egress_url == "unix:/kit/run/egress.sock"
    assert config.store_url == "sqlite:///kit/transcript/t.sqlite?durability=fsync"  # kept
    assert view.inside("/state/runner") == "/nope/runner"  # a prefix is not a folder
    assert view.inside("/elsewhere") == "/elsewhere"


def test_tcp_endpoints_pass_through() -> None:
    """A sandbox on another machine reaches the proxies over TCP: the URLs go as they are,
    and a network store has no host folder."""
    spec = _spec(
        "http://gateway.internal:9000", "http://gateway.internal:9001", "s3://bucket/prefix"
    )
    config = runtime_config(spec, SandboxView("/b", "/w", "/h", "/t", "tcp:0.0.0.0:8080"))
    assert (config.model_base_url, config.model_unix_socket) == (
        "http://gateway.internal:9000",
        None,
    )
    assert config.egress_url == "http://gateway.internal:9001"
    assert config.store_url == "s3://bucket/prefix"
    assert store_folder(config.store_url) is None
    assert str(store_folder("sqlite:///state/tr/s1/t.sqlite")) == "/state/tr/s1"
    assert str(store_folder("sqlite:///state/tr/s1/t.sqlite?durability=os")) == "/state/tr/s1"


@pytest.mark.parametrize(
    "url", ["unix:", "unix:relative.sock", "https://h:1", "http://h:1/path", "h:1"]
)
def test_an_endpoint_is_a_unix_path_or_an_http_address(url: str) -> None:
    """Anything else is refused when the endpoint is made, naming the forms it takes."""
    with pytest.raises(SandboxError, match="unix:/path or http://host:port"):
        Endpoint(url, "t")


def test_tokens_stay_out_of_reprs() -> None:
    """A spec or endpoint logged by accident does not print the sandbox's tokens."""
    spec = _spec("unix:/m.sock", "unix:/e.sock", "memory://")
    assert "model-token" not in repr(spec)
    assert "runtime-token" not in repr(spec)
    assert "egress-token" not in repr(spec)
