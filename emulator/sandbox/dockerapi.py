"""A small client of the Docker Engine API over its unix socket: just what container
sandboxes need (create, start, wait, inspect, kill, list by label, remove, stats).

The API rather than the ``docker`` CLI: every call is one HTTP request with a JSON answer
and a status code (no process per call, no parsing of human output, no CLI/daemon version
skew), ``wait`` is one long-poll instead of a poller, and errors come back with Docker's
own message, which is mapped here, once, to :class:`~kit.host.errors.SandboxError`
(nothing above this module sees httpx).

Networks are ``none`` or ``host`` only (ARCHITECTURE §9): a spec asking for anything else
(the default bridge's 172.17.x addresses above all) is refused before Docker is called.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from kit.host.errors import SandboxError

DEFAULT_SOCKET = "/var/run/docker.sock"
API_VERSION = "1.41"
"""Docker 20.10's API; later daemons accept it too."""
ALLOWED_NETWORKS = ("none", "host")

Network = Literal["none", "host"]


class DockerUnavailable(SandboxError):
    """No Docker daemon answers on the socket."""


@dataclass(frozen=True)
class Bind:
    """A host path mounted into the container at the same or another path."""

    source: str
    target: str
    read_only: bool = False

    def mount(self) -> dict[str, Any]:
        """Docker's ``HostConfig.Mounts`` entry: a bind that is not recursive, so a folder
        mounted inside ``source`` (which a read-only bind would leave writable on Docker
        before 25) is not brought in; the container sees exactly ``source``."""
        return {
            "Type": "bind",
            "Source": self.source,
            "Target": self.target,
            "ReadOnly": self.read_only,
            "BindOptions": {"NonRecursive": True},
        }


@dataclass(frozen=True)
class ContainerSpec:
    """One container to create: image, command, user, mounts, limits and labels."""

    image: str
    name: str
    user: str
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    binds: tuple[Bind, ...] = ()
    tmpfs: dict[str, str] = field(default_factory=dict)
    """Container path → mount options, e.g. ``{"/tmp": "rw,nosuid,size=64m"}``."""
    memory_bytes: int | None = None
    """Memory limit; swap is held to the same figure (no swap on top)."""
    nano_cpus: int | None = None
    pids_limit: int | None = None
    read_only_root: bool = True
    network: Network = "none"
    working_dir: str | None = None
    extra_hosts: tuple[str, ...] = ()
    """``name:address`` lines added to the container's /etc/hosts."""

    def body(self) -> dict[str, Any]:
        """The ``POST /containers/create`` request body."""
        if self.network not in ALLOWED_NETWORKS:
            raise SandboxError(
                f"Container network {self.network!r} is not allowed: use 'none' (talk over "
                "mounted unix sockets) or 'host' bound to 127.0.0.1 (ARCHITECTURE §9)."
            )
        host: dict[str, Any] = {
            "NetworkMode": self.network,
            "ReadonlyRootfs": self.read_only_root,
            "Mounts": [b.mount() for b in self.binds],
            "Tmpfs": dict(self.tmpfs),
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Init": True,  # tini as PID 1: forwards signals, reaps the tools' orphans
        }
        if self.extra_hosts:
            host["ExtraHosts"] = list(self.extra_hosts)
        if self.memory_bytes is not None:
            host["Memory"] = self.memory_bytes
            host["MemorySwap"] = self.memory_bytes
        if self.nano_cpus is not None:
            host["NanoCpus"] = self.nano_cpus
        if self.pids_limit is not None:
            host["PidsLimit"] = self.pids_limit
        body: dict[str, Any] = {
            "Image": self.image,
            "User": self.user,
            "Labels": dict(self.labels),
            "Env": [f"{k}={v}" for k, v in self.env.items()],
            "HostConfig": host,
            # NetworkMode none is loopback only either way; a disabled network also leaves
            # /etc/hosts empty, so ExtraHosts needs it enabled.
            "NetworkDisabled": self.network == "none" and not self.extra_hosts,
        }
        if self.entrypoint is not None:
            body["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            body["Cmd"] = self.cmd
        if self.working_dir:
            body["WorkingDir"] = self.working_dir
        return body


class DockerClient:
    """Docker Engine API calls over the daemon's unix socket."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, api_version: str = API_VERSION):
        self.socket_path = socket_path
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url=f"http://docker/v{api_version}",
            timeout=httpx.Timeout(60.0),
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        limit_s: float | None = 60.0,
        ok: tuple[int, ...] = (200, 201, 204),
    ) -> Any:
        try:
            response = await self._http.request(
                method,
                path,
                params=params,
                json=body,
                timeout=httpx.Timeout(limit_s),
            )
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise DockerUnavailable(
                f"No Docker daemon answers on {self.socket_path} ({exc}); start one with "
                "scripts/docker-up (as root)."
            ) from exc
        except httpx.HTTPError as exc:
            raise SandboxError(f"Docker API {method} {path} failed: {exc!r}.") from exc
        if response.status_code not in ok:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise SandboxError(
                f"Docker refused {method} {path} ({response.status_code}): {message.strip()}"
            )
        if not response.content:
            return None
        return response.json()

    async def version(self) -> dict[str, Any]:
        """The daemon's version record (also the cheapest way to see it answers)."""
        result: dict[str, Any] = await self._call("GET", "/version", limit_s=10.0)
        return result

    async def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container; its id."""
        created = await self._call(
            "POST", "/containers/create", params={"name": spec.name}, body=spec.body()
        )
        return str(created["Id"])

    async def start(self, container: str) -> None:
        """Start a created container."""
        await self._call("POST", f"/containers/{container}/start", ok=(204, 304))

    async def wait(self, container: str) -> int:
        """Block until the container is not running; its exit code."""
        done = await self._call(
            "POST",
            f"/containers/{container}/wait",
            params={"condition": "not-running"},
            limit_s=None,
        )
        return int(done["StatusCode"])

    async def inspect(self, container: str) -> dict[str, Any]:
        """The container's full record (``State.OOMKilled``, ``State.ExitCode``, …)."""
        result: dict[str, Any] = await self._call("GET", f"/containers/{container}/json")
        return result

    async def kill(self, container: str, signal: int) -> bool:
        """Send ``signal`` to the container's processes; False when it was not running."""
        try:
            await self._call(
                "POST", f"/containers/{container}/kill", params={"signal": str(signal)}
            )
        except SandboxError as exc:
            if "is not running" in str(exc):
                return False
            raise
        return True

    async def remove(self, container: str) -> None:
        """Remove the container (killing it first if it runs); absent is fine."""
        await self._call(
            "DELETE",
            f"/containers/{container}",
            params={"force": "true", "v": "true"},
            ok=(204, 404),
        )

    async def list(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all of ``labels``."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        found: list[dict[str, Any]] = await self._call(
            "GET", "/containers/json", params={"all": "true", "filters": filters}
        )
        return found

    async def remove_labelled(self, labels: dict[str, str]) -> int:
        """Remove every container carrying all of ``labels`` (a killed runner's leftovers);
        how many. No daemon: nothing to remove (0)."""
        try:
            found = await self.list(labels)
            for container in found:
                await self.remove(str(container["Id"]))
        except SandboxError:
            return 0
        return len(found)

    async def update_memory(self, container: str, memory_bytes: int) -> None:
        """Change the container's memory limit (swap held to it) while it runs."""
        await self._call(
            "POST",
            f"/containers/{container}/update",
            body={"Memory": memory_bytes, "MemorySwap": memory_bytes},
        )

    async def stats(self, container: str) -> dict[str, Any]:
        """One resource sample (``memory_stats``, ``cpu_stats``), without streaming; empty
        for a container that has just exited."""
        result: dict[str, Any] | None = await self._call(
            "GET", f"/containers/{container}/stats", params={"stream": "false"}
        )
        return result or {}

    async def oom_events(self, labels: dict[str, str]) -> AsyncIterator[str]:
        """The id of each container carrying all of ``labels`` that the kernel OOM-kills a
        process of, as it happens (Docker's event stream; ends when the daemon does). First
        an empty string: the stream is open, and no later OOM kill will be missed."""
        filters = json.dumps(
            {
                "event": ["oom"],
                "type": ["container"],
                "label": [f"{k}={v}" for k, v in labels.items()],
            }
        )
        try:
            async with self._http.stream(
                "GET", "/events", params={"filters": filters}, timeout=httpx.Timeout(None)
            ) as response:
                if response.status_code != 200:
                    raise SandboxError(f"Docker refused GET /events ({response.status_code}).")
                yield ""
                async for line in response.aiter_lines():
                    try:
                        event = json.loads(line) if line.strip() else None
                    except ValueError:
                        event = None  # not an event: Docker writes one JSON object a line
                    if isinstance(event, dict):
                        yield str(event.get("id") or event.get("Actor", {}).get("ID", ""))
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise DockerUnavailable(f"No Docker daemon answers on {self.socket_path}.") from exc
        except httpx.HTTPError as exc:
            raise SandboxError(f"Docker's event stream broke: {exc!r}.") from exc

    async def logs(self, container: str, tail: int = 20) -> str:
        """The container's last ``tail`` lines of stdout and stderr, as text."""
        try:
            response = await self._http.get(
                f"/containers/{container}/logs",
                params={"stdout": "true", "stderr": "true", "tail": str(tail)},
            )
        except httpx.HTTPError:
            return ""
        if response.status_code != 200:
            return ""
        return _demux(response.content).decode(errors="replace").strip()


def _demux(raw: bytes) -> bytes:
    """Docker's multiplexed log stream (8-byte frame headers, no TTY) as plain bytes."""
    out, at = bytearray(), 0
    for _ in range(len(raw) // 8 + 1):
        if at + 8 > len(raw):
            break
        size = int.from_bytes(raw[at + 4 : at + 8], "big")
        out += raw[at + 8 : at + 8 + size]
        at += 8 + size
    return bytes(out)
