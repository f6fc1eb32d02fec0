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
    Endpoint,
    ExitInfo,
    Sandbox,
    SandboxProvider,
    SandboxSpec,
    SandboxState,
    SandboxView,
)
from kit.host.session import Session

__all__ = [
    "EgressProxy",
    "Endpoint",
    "ExitInfo",
    "HostError",
    "LogError",
    "LogStore",
    "ModelProxy",
    "NewSession",
    "Release",
    "SQLiteLogStore",
    "Sandbox",
    "SandboxError",
    "SandboxProvider",
    "SandboxSpec",
    "SandboxState",
    "SandboxView",
    "Session",
    "SessionEnv",
    "SessionHost",
    "SessionLog",
    "Turn",
    "TurnState",
    "UnknownSession",
    "create_app",
]
