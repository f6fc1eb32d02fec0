"""Errors of the runtime inside a sandbox.

::

    KitError
    └── AgentRuntimeError        the runtime could not do what was asked
        ├── AgentBusy            a turn was posted while another one runs (kit.runtime.agent)
        ├── AgentStopped         a turn was posted to an agent that is not running
        ├── HarnessDied          the agent harness (the CLI) died under the runtime
        ├── NotAFolder           a folder on a file's path is a link or a file
                                 (kit.runtime.files)
        └── JailError            the sandbox could not be confined: a namespace or mount
                                 the machine refused; carries ``errno`` (kit.runtime.jail)

A config the runtime cannot use is a
:class:`kit.protocol.runtime_config.RuntimeConfigError` (the config is the host-runtime
wire's). Light, like all of ``kit.runtime``: nothing here imports more than
:mod:`kit.errors`.
"""

from __future__ import annotations

from kit.errors import KitError


class AgentRuntimeError(KitError):
    """The runtime inside a sandbox could not do what was asked."""
