"""Cloudflare's ``ctx.container`` on loopback, for the shim under ``wrangler dev
--enable-containers=false`` (reference/cloudflare.md §2.1, §3, §9).

The shim's ``HttpContainer`` speaks HTTP to it (``KIT_CONTAINER_EMULATOR`` and the Bearer
token ``KIT_CONTAINER_EMULATOR_TOKEN``); one container per Durable Object id; the routes
are in :mod:`emulator.containers.app`::

    async with DockerRunner(runner_id=...) as runner, serve(token=t, runner=runner, image=img) as s:
        ...  # s.url

Emulated:

- ``start({env, instance, image?, entrypoint?})``: a Docker container of the image (kit's
  runtime image by default) at the instance type's memory (no swap) and CPU share (capped
  at this host's CPUs); an unknown instance type is a 422 naming the six valid ones and
  makes nothing; a start while it runs is 409 ``running``;
- ``running``, ``monitor()`` (a long-poll of at most 60 s; the exit code, and ``oom`` when
  Docker reports ``OOMKilled`` — 137), ``signal(signo)``, ``destroy()`` (idempotent);
- ``oom()``, a rehearsal hook Cloudflare does not have (``kit sandbox oom``): the container
  is SIGKILLed and its exit reported as an OOM kill (137, ``oom``);
- ``getTcpPort(port).fetch()``: HTTP relayed to the container's own port, streamed both
  ways; 503 ``not_listening`` while nothing listens there. Containers run with
  ``--network none`` and are reached through their network namespace
  (:mod:`emulator.containers.netns`): no host port is used, so every container may listen
  on 8080 as on Cloudflare (ARCHITECTURE §9);
- leftovers of a killed emulator are removed at start (the runner id's label).

- ``interceptAllOutboundHttp``, for ``kit.internal`` only (Docker): the container's HTTP to
  it is delivered to the Worker that intercepted it (:mod:`emulator.containers.egress`);
  besides, a container reaches the loopback URLs in its env and nothing else.

Not emulated: interception of other hosts and of HTTPS (``[sandbox] egress`` is not
rehearsed), ``exec``,
snapshots, ``setInactivityTimeout``, ``labels``, ``enableInternet``, disk limits, custom
instance sizes, start latency, WebSocket upgrades through the port proxy.

Without Docker, :class:`LocalRunner` runs each container as a local process tree (no
image: the host's programs; as root its own network namespace and a cgroup at the
instance's memory and CPU, so the same API holds, OOM included).
"""

from emulator.containers.app import create_app
from emulator.containers.backend import (
    CLOUDFLARE_INSTANCES,
    MONITOR_LIMIT_S,
    Container,
    ContainersBackend,
    State,
)
from emulator.containers.errors import (
    ApiError,
    ContainersEmulatorError,
    NotListening,
    RunnerError,
)
from emulator.containers.local_runner import LocalRunner
from emulator.containers.proxy import EMULATOR_AUTH
from emulator.containers.runner import DockerRunner, Exit, LaunchSpec, Runner
from emulator.containers.serve import Served, main, serve

__all__ = [
    "CLOUDFLARE_INSTANCES",
    "EMULATOR_AUTH",
    "MONITOR_LIMIT_S",
    "ApiError",
    "Container",
    "ContainersBackend",
    "ContainersEmulatorError",
    "DockerRunner",
    "Exit",
    "LaunchSpec",
    "LocalRunner",
    "NotListening",
    "Runner",
    "RunnerError",
    "Served",
    "State",
    "create_app",
    "main",
    "serve",
]
