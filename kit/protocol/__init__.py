"""The kit session protocol, sans I/O: frames, the host and client state machines, resume.

Stdlib only. The host (``kit.host``), the Python client (``kit.client``) and the
TypeScript shim all follow docs/protocol.md; the golden transcripts in ``golden/`` are
replayed by each of them.
"""

from kit.protocol.client import (
    ClientConnection,
    ClientInput,
    ClientState,
    ErrorReceived,
    EventReceived,
    GapDetected,
    InterruptAcked,
    PongReceived,
    Welcomed,
)
from kit.protocol.errors import InvalidStateError, ProtocolError, SessionProtocolError
from kit.protocol.frames import (
    EVENT_KINDS,
    MAX_FRAME_BYTES,
    MAX_TEXT_CHARS,
    PROTOCOL_VERSION,
    Ack,
    ClientFrame,
    Event,
    Hello,
    Interrupt,
    Ping,
    ResumeMode,
    User,
    encode_client_frame,
    parse_client_frame,
)
from kit.protocol.server import (
    Acked,
    ConnectionState,
    HandshakeAcked,
    HelloReceived,
    InterruptRequested,
    ServerConnection,
    ServerInput,
    UserReceived,
)

__all__ = [
    "EVENT_KINDS",
    "MAX_FRAME_BYTES",
    "MAX_TEXT_CHARS",
    "PROTOCOL_VERSION",
    "Ack",
    "Acked",
    "ClientConnection",
    "ClientFrame",
    "ClientInput",
    "ClientState",
    "ConnectionState",
    "ErrorReceived",
    "Event",
    "EventReceived",
    "GapDetected",
    "HandshakeAcked",
    "Hello",
    "HelloReceived",
    "Interrupt",
    "InterruptAcked",
    "InterruptRequested",
    "InvalidStateError",
    "Ping",
    "PongReceived",
    "ProtocolError",
    "ResumeMode",
    "ServerConnection",
    "ServerInput",
    "SessionProtocolError",
    "User",
    "UserReceived",
    "Welcomed",
    "encode_client_frame",
    "parse_client_frame",
]
