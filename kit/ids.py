"""Identifiers that must not be mixed up with each other."""

from __future__ import annotations

import uuid
from typing import NewType

SessionId = NewType("SessionId", str)
TurnId = NewType("TurnId", str)
SandboxId = NewType("SandboxId", str)


def new_session_id() -> SessionId:
    """A fresh session id; a UUID because the Agent SDK requires one for ``session_id``."""
    return SessionId(str(uuid.uuid4()))


def is_session_id(value: str) -> bool:
    """Whether ``value`` is a well-formed session id (a canonical lowercase UUID)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
