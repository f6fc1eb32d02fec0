"""The shapes the client sends (``TypedDict``s named after the spec's schemas, so a test can
hold every field to ``fly-machines-openapi.json``) and the ones it returns (frozen
dataclasses parsed leniently from Fly's JSON, each keeping the ``raw`` answer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NewType, TypedDict

AppName = NewType("AppName", str)
MachineId = NewType("MachineId", str)

MachineState = Literal[
    "created",
    "starting",
    "started",
    "stopping",
    "stopped",
    "suspending",
    "suspended",
    "replacing",
    "restarting",
    "updating",
    "destroying",
    "destroyed",
    "failed",
    "launch_failed",
    "replaced",
    "migrated",
]
WaitState = Literal["started", "stopped", "suspended", "destroyed", "failed", "settled"]
IPType = Literal["v4", "v6", "shared_v4", "private_v6"]
StopSignal = Literal["SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM"]
"""The signals ``stop`` and ``stop_config`` take."""
Signal = Literal[
    "SIGABRT",
    "SIGALRM",
    "SIGFPE",
    "SIGHUP",
    "SIGILL",
    "SIGINT",
    "SIGKILL",
    "SIGPIPE",
    "SIGQUIT",
    "SIGSEGV",
    "SIGTERM",
    "SIGTRAP",
    "SIGUSR1",
    "SIGUSR2",
]
"""The signals ``signal`` takes."""


# -- what the client sends (spec schema in each docstring) -----------------------------------


class MachineGuest(TypedDict, total=False):
    """``fly.MachineGuest``."""

    cpu_kind: Literal["shared", "performance"]
    cpus: int
    memory_mb: int


class MachineFile(TypedDict, total=False):
    """``fly.File``: ``raw_value`` is base64."""

    guest_path: str
    raw_value: str
    secret_name: str
    mode: int


class MachineInit(TypedDict, total=False):
    """``fly.MachineInit``."""

    cmd: list[str]
    entrypoint: list[str]
    exec: list[str]


class MachineRestart(TypedDict, total=False):
    """``fly.MachineRestart``: ``policy`` no | always | on-failure."""

    policy: Literal["no", "always", "on-failure"]
    max_retries: int


class StopConfig(TypedDict, total=False):
    """``fly.StopConfig``: ``timeout`` as a Go duration (``"30s"``)."""

    signal: StopSignal
    timeout: str


class HTTPOptions(TypedDict, total=False):
    """``fly.HTTPOptions``."""

    idle_timeout: int
    headers_read_timeout: int


class MachinePort(TypedDict, total=False):
    """``fly.MachinePort``."""

    port: int
    handlers: list[str]
    force_https: bool
    http_options: HTTPOptions


class ServiceConcurrency(TypedDict, total=False):
    """``fly.MachineServiceConcurrency``."""

    type: Literal["connections", "requests"]
    soft_limit: int
    hard_limit: int


class MachineCheck(TypedDict, total=False):
    """``fly.MachineCheck``: durations as Go durations (``"10s"``)."""

    type: Literal["tcp", "http"]
    port: int
    method: str
    path: str
    interval: str
    timeout: str
    grace_period: str
    kind: Literal["informational", "readiness"]


class MachineService(TypedDict, total=False):
    """``fly.MachineService``: ``autostop`` off | stop | suspend."""

    protocol: Literal["tcp", "udp"]
    internal_port: int
    ports: list[MachinePort]
    autostart: bool
    autostop: Literal["off", "stop", "suspend"]
    min_machines_running: int
    concurrency: ServiceConcurrency


class MachineConfig(TypedDict, total=False):
    """``fly.MachineConfig``: always sent whole (Fly has no partial update)."""

    image: str
    guest: MachineGuest
    env: dict[str, str]
    files: list[MachineFile]
    metadata: dict[str, str]
    services: list[MachineService]
    checks: dict[str, MachineCheck]
    restart: MachineRestart
    auto_destroy: bool
    init: MachineInit
    stop_config: StopConfig


# -- what the client returns ------------------------------------------------------------------


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Lease:
    """A machine's lease; ``nonce`` goes in ``fly-machine-lease-nonce`` on every mutation."""

    nonce: str
    expires_at: int
    owner: str
    description: str
    version: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, body: Any) -> Lease:
        """Both shapes: the spec's flat ``Lease`` and the live ``{status, data: Lease}``."""
        data = body.get("data") if isinstance(body, dict) and "data" in body else body
        if not isinstance(data, dict):
            data = {}
        expires = data.get("expires_at")
        return cls(
            nonce=_str(data, "nonce"),
            expires_at=expires if isinstance(expires, int) else 0,
            owner=_str(data, "owner"),
            description=_str(data, "description"),
            version=_str(data, "version"),
            raw=data,
        )


@dataclass(frozen=True)
class Machine:
    """A machine as Fly shows it; ``version`` is the 26-char id of its current config
    (``instance_id`` is the deprecated name). ``nonce`` is set when it was created with
    ``lease_ttl`` (the caller then holds its lease)."""

    id: MachineId
    name: str
    state: str
    region: str
    version: str
    private_ip: str
    config: dict[str, Any]
    nonce: str
    created_at: str
    updated_at: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def metadata(self) -> dict[str, str]:
        """The config's metadata (the keys kit lists machines by)."""
        meta = self.config.get("metadata")
        return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}

    @classmethod
    def parse(cls, body: Any) -> Machine:
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        config = data.get("config")
        return cls(
            id=MachineId(_str(data, "id")),
            name=_str(data, "name"),
            state=_str(data, "state"),
            region=_str(data, "region"),
            version=_str(data, "version") or _str(data, "instance_id"),
            private_ip=_str(data, "private_ip"),
            config=config if isinstance(config, dict) else {},
            nonce=_str(data, "nonce"),
            created_at=_str(data, "created_at"),
            updated_at=_str(data, "updated_at"),
            raw=data,
        )


@dataclass(frozen=True)
class WaitResult:
    """``/wait``'s answer: the state reached and the version it was reached at."""

    state: str
    version: str
    event_id: str

    @classmethod
    def parse(cls, body: Any) -> WaitResult:
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        return cls(_str(data, "state"), _str(data, "version"), _str(data, "event_id"))


@dataclass(frozen=True)
class MachineEvent:
    """One of a machine's events; on an exit, ``exit_code`` and ``oom_killed`` come from
    ``request.exit_event`` (untyped in the spec)."""

    id: str
    type: str
    status: str
    source: str
    timestamp: int
    exit_code: int | None
    oom_killed: bool
    requested_stop: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, body: Any) -> MachineEvent:
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        request = data.get("request")
        exit_event = request.get("exit_event") if isinstance(request, dict) else None
        exit_event = exit_event if isinstance(exit_event, dict) else {}
        code = exit_event.get("exit_code")
        stamp = data.get("timestamp")
        return cls(
            id=_str(data, "id"),
            type=_str(data, "type"),
            status=_str(data, "status"),
            source=_str(data, "source"),
            timestamp=stamp if isinstance(stamp, int) else 0,
            exit_code=code if isinstance(code, int) else None,
            oom_killed=exit_event.get("oom_killed") is True,
            requested_stop=exit_event.get("requested_stop") is True,
            raw=data,
        )


@dataclass(frozen=True)
class ExecResult:
    """What ``exec`` ran: Fly answers 200 whatever the exit code, so check it
    (:meth:`fly.FlyClient.exec` does unless asked not to)."""

    exit_code: int
    exit_signal: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """The command exited 0, not by a signal."""
        return self.exit_code == 0 and self.exit_signal == 0

    @classmethod
    def parse(cls, body: Any) -> ExecResult:
        """Fly (Go, ``omitempty``) leaves zero fields out: no ``exit_code`` means 0."""
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        code, sig = data.get("exit_code"), data.get("exit_signal")
        return cls(
            exit_code=code if isinstance(code, int) else 0,
            exit_signal=sig if isinstance(sig, int) else 0,
            stdout=_str(data, "stdout"),
            stderr=_str(data, "stderr"),
        )


@dataclass(frozen=True)
class App:
    """An app: its name, status and organisation slug."""

    id: str
    name: AppName
    status: str
    org_slug: str
    machine_count: int
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, body: Any) -> App:
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        org = data.get("organization")
        count = data.get("machine_count")
        return cls(
            id=_str(data, "id"),
            name=AppName(_str(data, "name")),
            status=_str(data, "status"),
            org_slug=_str(org, "slug") if isinstance(org, dict) else "",
            machine_count=count if isinstance(count, int) else 0,
            raw=data,
        )


@dataclass(frozen=True)
class IPAssignment:
    """An address assigned to an app."""

    ip: str
    region: str
    shared: bool
    service_name: str

    @classmethod
    def parse(cls, body: Any) -> IPAssignment:
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        return cls(
            _str(data, "ip"),
            _str(data, "region"),
            data.get("shared") is True,
            _str(data, "service_name"),
        )


@dataclass(frozen=True)
class SecretInfo:
    """A secret's name and digest (its value is never read back)."""

    name: str
    digest: str

    @classmethod
    def parse(cls, body: Any) -> SecretInfo:
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        return cls(_str(data, "name"), _str(data, "digest"))
