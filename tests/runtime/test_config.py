"""The runtime's start-up config: the transcript store waits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit.protocol.runtime_config import (
    STORE_DEADLINE_S,
    STORE_RETRY_S,
    RuntimeConfig,
    RuntimeConfigError,
)

BASE = {
    "session_id": "s",
    "bundle_dir": "/b",
    "workspace": "/w",
    "home": "/h",
    "tmp_dir": "/t",
    "store_url": "memory://",
    "listen": "unix:/r.sock",
    "model_base_url": "http://localhost",
    "model_unix_socket": None,
    "model_token": "m",
    "runtime_token": "r",
}


def test_store_waits_default_and_round_trip() -> None:
    """Without them the defaults apply; set, they survive the trip over stdin."""
    config = RuntimeConfig.from_json(json.dumps(BASE))
    assert (config.store_retry_s, config.store_deadline_s) == (STORE_RETRY_S, STORE_DEADLINE_S)
    assert config.workspace == Path("/w")
    short = RuntimeConfig.from_json(json.dumps({**BASE, "store_retry_s": 1, "store_deadline_s": 3}))
    assert RuntimeConfig.from_json(short.to_json()) == short
    assert (short.store_retry_s, short.store_deadline_s) == (1, 3)


@pytest.mark.parametrize(
    ("retry", "deadline", "says"),
    [
        (0, 10, "positive"),
        (1, "soon", "positive"),
        (55, 120, "at most 50 s"),
        (10, 5, "at least store_retry_s"),
    ],
)
def test_bad_store_waits_are_refused(retry: object, deadline: object, says: str) -> None:
    """Waits the SDK could not honour, or that contradict each other, are a clear error."""
    raw = json.dumps({**BASE, "store_retry_s": retry, "store_deadline_s": deadline})
    with pytest.raises(RuntimeConfigError, match=says):
        RuntimeConfig.from_json(raw)


def test_egress_settings_default_to_none_and_round_trip() -> None:
    """Without egress settings there are none; set, they survive the trip through the file."""
    assert RuntimeConfig.from_json(json.dumps(BASE)).egress_url is None
    raw = {**BASE, "egress_url": "unix:/run/egress.sock", "egress_token": "kit-egress-x"}
    config = RuntimeConfig.from_json(json.dumps(raw))
    assert (config.egress_url, config.egress_token) == ("unix:/run/egress.sock", "kit-egress-x")
    assert RuntimeConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "extra", [{"egress_url": "unix:/run/egress.sock"}, {"egress_token": "kit-egress-x"}]
)
def test_egress_socket_and_token_go_together(extra: dict[str, str]) -> None:
    """One egress setting without the other is refused, naming both."""
    with pytest.raises(RuntimeConfigError, match="egress_url and egress_token"):
        RuntimeConfig.from_json(json.dumps({**BASE, **extra}))
