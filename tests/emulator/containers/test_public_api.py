"""The container emulator's public names, pinned."""

from __future__ import annotations

import emulator.containers


def test_the_public_surface_is_curated() -> None:
    """``emulator.containers.__all__`` is what ``kit dev`` wires in; each name exists."""
    assert sorted(emulator.containers.__all__) == [
        "ApiError",
        "CLOUDFLARE_INSTANCES",
        "Container",
        "ContainersBackend",
        "ContainersEmulatorError",
        "DockerRunner",
        "EMULATOR_AUTH",
        "Exit",
        "LaunchSpec",
        "LocalRunner",
        "MONITOR_LIMIT_S",
        "NotListening",
        "Runner",
        "RunnerError",
        "Served",
        "State",
        "create_app",
        "main",
        "serve",
    ]
    assert all(hasattr(emulator.containers, name) for name in emulator.containers.__all__)
    assert emulator.containers.CLOUDFLARE_INSTANCES == (
        "lite",
        "basic",
        "standard-1",
        "standard-2",
        "standard-3",
        "standard-4",
    )
