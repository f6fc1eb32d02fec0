"""The emulator's Durable Objects: the layer the session host runs on in ``kit dev``.

A :class:`Namespace` keeps one live instance per object id, a SQLite file per object
(``<root>/<id>.sqlite``; alarms in ``<root>/metadata.sqlite``), write coalescing with an
output gate, ``blockConcurrencyWhile``, alarms (at-least-once, retried with backoff),
hibernation after idling and Cloudflare's limits with Cloudflare's error texts.
:class:`DOLogStore` puts the host's event log in it; :func:`create_control_app` serves the
test hooks (evict, hibernate, run the alarm now, list ids). What is faithful and what is
approximated: emulator/ARCHITECTURE.md.

Modules: ``errors``, ``limits`` (constants and texts), ``storage`` (SQL, KV, alarm,
coalescing), ``namespace`` (instances, gates, alarms, hooks), ``logstore``, ``control``.
"""

from emulator.durable_objects.control import create_control_app
from emulator.durable_objects.errors import (
    DurableObjectError,
    LimitExceeded,
    MessageTooLarge,
    ObjectEvicted,
    StorageError,
)
from emulator.durable_objects.limits import (
    MAX_BOUND_PARAMETERS,
    MAX_COLUMNS,
    MAX_STATEMENT_BYTES,
    MAX_VALUE_BYTES,
    MAX_WS_MESSAGE_BYTES,
    check_ws_message,
)
from emulator.durable_objects.logstore import DOLogStore, DOSessionLog, SessionLogObject
from emulator.durable_objects.namespace import (
    AlarmInfo,
    AlarmRun,
    DurableObject,
    Namespace,
    ObjectState,
)
from emulator.durable_objects.storage import Cursor, Storage

__all__ = [
    "MAX_BOUND_PARAMETERS",
    "MAX_COLUMNS",
    "MAX_STATEMENT_BYTES",
    "MAX_VALUE_BYTES",
    "MAX_WS_MESSAGE_BYTES",
    "AlarmInfo",
    "AlarmRun",
    "Cursor",
    "DOLogStore",
    "DOSessionLog",
    "DurableObject",
    "DurableObjectError",
    "LimitExceeded",
    "MessageTooLarge",
    "Namespace",
    "ObjectEvicted",
    "ObjectState",
    "SessionLogObject",
    "Storage",
    "StorageError",
    "check_ws_message",
    "create_control_app",
]
