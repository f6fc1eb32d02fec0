"""The root of kit's exceptions.

Every package draws its own family under :class:`KitError`, in its ``errors`` module::

    KitError
    ├── kit.tiers.TierError                       a custom sandbox size the platform refuses
    ├── kit.protocol.errors.SessionProtocolError  the session protocol refused something
    ├── kit.bundle.errors.ConfigError             kit.toml / bundle problems
    ├── kit.storage.errors.StoreError             a transcript store failed or its URL is wrong
    ├── kit.host.errors.HostError                 session host failures (session, sandbox, log)
    ├── kit.runtime.errors.AgentRuntimeError      the runtime inside a sandbox failed
    ├── kit.client.errors.ClientError             the Python client gave up
    ├── kit.deploy.errors.DeployError             the runtime image or a deploy step failed
    ├── kit.mail.errors.MailChannelError          the email channel cannot take or send mail
    └── kit.cli.errors.CliError                   a ``kit`` command cannot go on

The emulator's packages draw theirs too (``emulator.durable_objects.errors``,
``emulator.model.errors``; ``emulator.sandbox`` raises :class:`kit.host.errors.SandboxError`,
the seam it implements). ``tests/test_errors.py`` checks that every exception class a
package defines is in its family and drawn in its tree.

Foreign errors (sqlite3, botocore, httpx, ``OSError``) are mapped once, at the seam that
calls the foreign code, with ``raise ... from exc``.

Messages read as sentences and name the fix (the setting, the file, the flag). The CLI's
single top-level handler prints ``str(error)`` and exits 1.
"""

from __future__ import annotations


class KitError(Exception):
    """Base class of every error kit raises on purpose."""
