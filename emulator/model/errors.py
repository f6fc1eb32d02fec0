"""Errors of the offline model.

::

    KitError
    └── OfflineModelError      the offline model cannot do what was asked (it was built
        │                      without an API key, say)
        ├── ScenarioError      a scenario file is missing, unreadable or breaks the format;
        │                      the message names the file, the rule or check, the key and
        │                      what is allowed (emulator.model.schema)
        └── TemplateError      a reply template uses a placeholder or format that does not
                               exist (emulator.model.templates)

What the model answers its clients is not an exception: API errors it rehearses are data
(:class:`emulator.model.schema.ApiError`), and a broken scenario file is answered as a 500
naming the file (``emulator.model.app``).
"""

from __future__ import annotations

from kit.errors import KitError


class OfflineModelError(KitError):
    """The offline model cannot do what was asked."""
