"""Errors about an agent project or its bundle.

::

    KitError
    └── ConfigError            kit.toml, a SKILL.md or a bundle is wrong; the message names
        │                      the file, the key and what is allowed
        ├── BundleError        a bundle could not be built, or does not verify
        └── EgressRuleError    an egress allowlist entry is malformed (kit.bundle.allowlist);
                               ``problem`` is the phrase to put after the entry

A damaged manifest's decoding errors (``KeyError``, ``TypeError``, ``ValueError``) are
mapped to :class:`BundleError` once, where :func:`kit.bundle.open_bundle` reads it.
"""

from __future__ import annotations

from kit.errors import KitError


class ConfigError(KitError):
    """An agent project's configuration is wrong."""


class BundleError(ConfigError):
    """A bundle could not be built, or a built bundle does not verify."""


class EgressRuleError(ConfigError):
    """An egress allowlist entry is malformed.

    ``problem`` says what is wrong as a phrase (``"has a path"``) to put after the entry
    in a message that names where the entry came from.
    """

    def __init__(self, entry: str, problem: str, allowed: str) -> None:
        super().__init__(f"The egress entry {entry!r} {problem}; allowed: {allowed}.")
        self.entry = entry
        self.problem = problem
