"""Errors of the email channel.

::

    KitError
    └── MailChannelError      the email channel cannot take, route or send something
        ├── MailError         mail kit cannot read: too large, no usable Message-ID, MIME
        │                     nested too deeply (kit.mail.message); a relay should bounce it
        ├── RelayError        ``KIT_SMTP_RELAY`` is not a relay kit can use (kit.mail.relay)
        └── Refusal           a webhook request not taken: its HTTP status, code and
                              sentence (kit.mail.webhook)

Mail the rules refuse (loops, strangers, duplicates) is no error: it is a
:class:`~kit.mail.channel.Receipt` with a reason, recorded and silent.
"""

from __future__ import annotations

from kit.errors import KitError


class MailChannelError(KitError):
    """The email channel cannot take, route or send something."""
