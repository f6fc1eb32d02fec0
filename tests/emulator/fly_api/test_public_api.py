"""The emulator's public names, pinned."""

from __future__ import annotations

import emulator.fly_api


def test_the_public_surface_is_curated() -> None:
    """``emulator.fly_api.__all__`` is what others wire in; each name exists."""
    assert sorted(emulator.fly_api.__all__) == [
        "ApiError",
        "Clock",
        "DockerRunner",
        "ExecResult",
        "Exit",
        "FLY_RATE_LIMITS",
        "FakeClock",
        "FlyBackend",
        "FlyEmulatorError",
        "InProcessRunner",
        "LaunchSpec",
        "NONCE_HEADER",
        "Rate",
        "RateLimits",
        "Runner",
        "RunnerError",
        "Served",
        "SystemClock",
        "create_app",
        "serve",
    ]
    assert all(hasattr(emulator.fly_api, name) for name in emulator.fly_api.__all__)
