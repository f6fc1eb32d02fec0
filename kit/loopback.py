"""Whether a host name stays on this machine: one answer for every part of kit."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str | None, *, subdomains: bool = False) -> bool:
    """Whether ``host`` (a name or address, IPv6 without brackets) is ``localhost`` or a
    loopback address; with ``subdomains``, ``*.localhost`` too (RFC 6761 reserves them for
    loopback, and browsers resolve them there; a socket bind does not, so binding asks
    without)."""
    if host is None:
        return False
    name = host.lower()
    if name == "localhost" or (subdomains and name.endswith(".localhost")):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
