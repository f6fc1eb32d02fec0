"""Where the runtime listens: ``tcp:${FLY_PRIVATE_IP}:PORT`` is the machine's private
address (each emulated machine has its own loopback address)."""

from __future__ import annotations

import pytest

from kit.protocol.runtime_config import RuntimeConfigError
from kit.runtime.server import bind


def test_the_private_address_is_read_from_the_environment() -> None:
    """``${FLY_PRIVATE_IP}`` becomes FLY_PRIVATE_IP (here a loopback address of the 127/8
    range, as the emulator gives each machine); IPv6 with brackets binds too."""
    sock = bind("tcp:${FLY_PRIVATE_IP}:0", {"FLY_PRIVATE_IP": "127.0.0.9"})
    try:
        assert sock.getsockname()[0] == "127.0.0.9"
    finally:
        sock.close()
    sock = bind("tcp:[::1]:0", {})
    try:
        assert sock.getsockname()[0] == "::1"
    finally:
        sock.close()


def test_a_listen_value_of_another_kind_is_refused() -> None:
    """Neither unix: nor tcp:: a config error naming both forms."""
    with pytest.raises(RuntimeConfigError, match="unix:/path or tcp:HOST:PORT"):
        bind("udp:1.2.3.4:5")
