"""A container reaches the loopback services its env names (the shim under ``wrangler
dev``), at the same URL, and nothing else of the host."""

from __future__ import annotations

from emulator.containers.runner import loopback_ports
from tests.emulator.containers.conftest import Emu, python_image

FETCH = """
import os, sys, urllib.request
try:
    body = urllib.request.urlopen(os.environ["TARGET"], timeout=10).read()
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(7)
sys.exit(0 if b'"ok"' in body else 1)
"""


def test_loopback_ports_are_read_from_every_url_in_the_env() -> None:
    """Plain and JSON values, ``127.0.0.1`` and ``localhost``; once each; not other hosts."""
    env = {
        "A": "http://127.0.0.1:8787/store",
        "B": '{"model_base_url": "http://localhost:9000", "x": "kit+http://127.0.0.1:8787/s"}',
        "C": "https://api.anthropic.com:443/v1",
        "D": "not a url 127.0.0.1:5",
    }
    assert loopback_ports(env) == [8787, 9000]


async def test_a_loopback_url_in_the_env_is_reachable_inside(emu: Emu) -> None:
    """The container fetches the emulator's own ``/healthz`` at its host URL: exit 0."""
    await emu.start(
        "c1",
        image=python_image(),
        env={"TARGET": f"{emu.served.url}/healthz"},
        entrypoint=["python3", "-c", FETCH],
    )
    assert (await emu.monitor("c1")).json() == {"exit_code": 0, "oom": False}


async def test_a_port_the_env_does_not_name_is_unreachable(emu: Emu) -> None:
    """The same fetch with the URL hidden from the env's scan (built inside): refused."""
    port = emu.served.url.rsplit(":", 1)[1]
    await emu.start(
        "c1",
        image=python_image(),
        env={"TARGET_PORT": port},
        entrypoint=[
            "python3",
            "-c",
            "import os; os.environ['TARGET'] = 'http://127.0.0.1:' + os.environ['TARGET_PORT'] "
            "+ '/healthz'\n" + FETCH,
        ],
    )
    assert (await emu.monitor("c1")).json() == {"exit_code": 7, "oom": False}
