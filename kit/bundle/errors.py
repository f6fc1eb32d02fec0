"""Errors about an agent project or its bundle.

::

    KitError
    └── ConfigError        kit.toml, a SKILL.md or a bundle is wrong; the message names the
        └── BundleError    file, the key and what is allowed
"""

from __future__ import annotations

from kit.errors import KitError


class ConfigError(KitError):
    """An agent project's configuration is wrong."""


class BundleError(ConfigError):
    """A bundle could not be built, or a built bundle does not verify."""
