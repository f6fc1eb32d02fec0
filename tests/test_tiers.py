"""The tier table and the platforms' custom-size rules."""

from __future__ import annotations

import pytest

from kit.tiers import TierError, cloudflare_custom, fly_sized, get_tier


def test_named_tiers_match_the_platform_tables() -> None:
    """Cloudflare's six instance types and a Fly preset, with legacy names."""
    assert (get_tier("dev").name, get_tier("dev").vcpu, get_tier("dev").memory_mib) == (
        "lite",
        0.0625,
        256,
    )
    assert get_tier("standard").name == "standard-1"
    assert (get_tier("standard-4").vcpu, get_tier("standard-4").disk_mb) == (4.0, 20000)
    assert get_tier("performance-2x").memory_mib == 4096


def test_cloudflare_custom_sizes_follow_the_rules() -> None:
    """1-4 vCPU, 3 GiB per vCPU up to 12 GiB, 2 GB disk per GiB."""
    assert cloudflare_custom(2, 8192, 16000).memory_mib == 8192
    for args, rule in [
        ((0.5, 4096, 8000), "between 1 and 4"),
        ((1, 2048, 4000), "at least 3 GiB per vCPU"),
        ((4, 16384, 20000), "at most 12288"),
        ((1, 4096, 9000), "at most 2 GB per GiB"),
    ]:
        with pytest.raises(TierError, match=rule):
            cloudflare_custom(*args)


def test_fly_memory_follows_the_preset_rules() -> None:
    """Shared: 256 MB-2 GB per CPU; performance: 2-8 GB per CPU; multiples of 256."""
    assert fly_sized("shared-cpu-1x", 1024).memory_mib == 1024
    assert fly_sized("performance-1x", 8192).vcpu == 1.0
    for preset, memory in [
        ("shared-cpu-1x", 4096),
        ("performance-1x", 1024),
        ("shared-cpu-2x", 600),
    ]:
        with pytest.raises(TierError, match="multiple of 256"):
            fly_sized(preset, memory)
