"""The egress allowlist's grammar: what ``kit.toml`` ``[sandbox] egress`` entries mean.

An entry is one of::

    api.github.com          that host, on ports 443 and 80
    api.github.com:8443     that host, on that port only
    *.pypi.org              any subdomain of pypi.org (files.pypi.org, a.b.pypi.org),
                            but not pypi.org itself; ports 443 and 80
    *.pypi.org:8443         the same, on that port only
    127.0.0.1:8080          an IPv4 address (and optional port), compared as written

Host names compare case-insensitively and without a trailing dot. There are no IPv6
entries, no URLs and no paths: the allowlist names where a connection may go, not what
it may ask for. The host's egress proxy (:mod:`kit.host.egress`) matches each request's
target against these rules; :mod:`kit.bundle.config` uses :func:`parse_rule` to refuse a
bad entry when the project loads.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kit.bundle.errors import EgressRuleError

DEFAULT_PORTS = (443, 80)
"""The ports an entry without ``:port`` admits (HTTPS and plain HTTP)."""
ALLOWED_FORMS = (
    "a host name (api.github.com), a *. wildcard (*.pypi.org) or an IPv4 address "
    "(127.0.0.1), each with an optional :port from 1 to 65535"
)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True)
class EgressRule:
    """One parsed allowlist entry."""

    host: str
    """Lowercase host name or IPv4 address; for a wildcard, the domain after ``*.``."""
    wildcard: bool
    port: int | None
    """None: :data:`DEFAULT_PORTS`."""

    def matches(self, host: str, port: int) -> bool:
        """Whether a connection to ``host:port`` (``host`` as :func:`normalize_host` gives
        it) is admitted by this rule."""
        if port not in ((self.port,) if self.port is not None else DEFAULT_PORTS):
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def parse_rule(entry: str) -> EgressRule:
    """Parse one entry; :class:`EgressRuleError` says what is wrong with it (its
    ``problem``: a phrase such as ``"has a path"``, to be put after the entry in a message)."""
    if not entry.strip():
        raise EgressRuleError(entry, "is empty", ALLOWED_FORMS)
    if entry != entry.strip() or any(c.isspace() for c in entry):
        raise EgressRuleError(entry, "contains spaces", ALLOWED_FORMS)
    if "://" in entry:
        raise EgressRuleError(
            entry, "is a URL; write the host alone, without its scheme", ALLOWED_FORMS
        )
    if any(c in entry for c in "/?#@"):
        raise EgressRuleError(
            entry, "has a path or other URL parts; write the host alone", ALLOWED_FORMS
        )
    if entry.startswith("[") or entry.count(":") > 1:
        raise EgressRuleError(
            entry, "looks like an IPv6 address, which is not supported", ALLOWED_FORMS
        )
    text, sep, port_text = entry.partition(":")
    port: int | None = None
    if sep:
        if not _PORT.match(port_text) or not 1 <= int(port_text) <= 65535:
            raise EgressRuleError(
                entry, "has a port that is not a number from 1 to 65535", ALLOWED_FORMS
            )
        port = int(port_text)
    wildcard = text.startswith("*.")
    host = normalize_host(text[2:] if wildcard else text)
    if host is None:
        raise EgressRuleError(entry, "is not a host name or an IPv4 address", ALLOWED_FORMS)
    if wildcard and (_is_ipv4(host) or host.count(".") < 1):
        raise EgressRuleError(
            entry, "is a wildcard over a whole top-level domain or an address", ALLOWED_FORMS
        )
    return EgressRule(host, wildcard, port)


def normalize_host(host: str) -> str | None:
    """``host`` lowercased without a trailing dot, if it is a valid host name or a
    dotted-quad IPv4 address; None otherwise (``*`` anywhere, IPv6, ``127.1``, ``0x7f.1``,
    a name ending in a numeric label: forms a resolver may read as an address)."""
    host = host.lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if _is_ipv4(host):
        return host
    if not host or len(host) > 253:
        return None
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return None
    if labels[-1].startswith("0x") and all(c in "0123456789abcdefx" for c in labels[-1]):
        return None
    return host


def allows(rules: Iterable[EgressRule], host: str, port: int) -> bool:
    """Whether any rule admits ``host:port``; ``host`` need not be normalized (a host
    that is not a valid name or IPv4 address is never admitted)."""
    normal = normalize_host(host)
    return normal is not None and any(rule.matches(normal, port) for rule in rules)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
