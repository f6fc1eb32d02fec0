"""The session host: durable event log, resume, sandbox lifecycle, recovery, model and
egress proxies."""

from kit.host.app import create_app
from kit.host.egress import EgressProxy
from kit.host.errors import HostError, LogError, SandboxError, UnknownSession
from kit.host.eventlog import LogStore, SessionLog, SQLiteLogStore, Turn, TurnState
from kit.host.host import NewSession, SessionHost
from kit.host.launch import Release, SessionEnv
from kit.host.proxy import ModelProxy
from kit.host.sandbox import (
    EgressAccess,
    ExitInfo,
    ModelAccess,
    Sandbox,
    SandboxProvider,
    SandboxSpec,
    SandboxState,
)
from kit.host.session import Session

__all__ = [
    "EgressAccess",
    "EgressProxy",
    "ExitInfo",
    "HostError",
    "LogError",
    "LogStore",
    "ModelAccess",
    "ModelProxy",
    "NewSession",
    "Release",
    "SQLiteLogStore",
    "Sandbox",
    "SandboxError",
    "SandboxProvider",
    "SandboxSpec",
    "SandboxState",
    "Session",
    "SessionEnv",
    "SessionHost",
    "SessionLog",
    "Turn",
    "TurnState",
    "UnknownSession",
    "create_app",
]
