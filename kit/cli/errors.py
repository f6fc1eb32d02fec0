"""Errors of the ``kit`` commands.

::

    KitError
    └── CliError              a ``kit`` command cannot go on; the message names the fix
        ├── SettingsError     an environment variable of ``kit dev`` is wrong (kit.cli.settings)
        ├── ChatError         ``kit chat`` cannot find or open a session (kit.cli.chat)
        ├── ControlError      the control API refused, or ``kit dev`` could not be reached
        │                     (kit.cli.rehearse)
        └── MailCliError      ``kit mail`` cannot send or list (kit.cli.mail)

The one top-level handler (:func:`kit.cli.main.main`) prints any :class:`KitError` — these
and the library's — as a sentence and exits 1 (a traceback with ``KIT_DEBUG=1``). httpx's
errors are mapped where the commands call a running ``kit dev`` (:mod:`kit.cli.rehearse`,
:mod:`kit.cli.logs`).
"""

from __future__ import annotations

from kit.errors import KitError


class CliError(KitError):
    """A ``kit`` command cannot go on."""
