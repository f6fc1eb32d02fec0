"""The Fly Machines API on loopback, with Fly's semantics (reference/fly.md §3-§8).

``kit dev --target fly`` and the tests start it with :func:`serve`; kit's ``fly/`` client
talks to it as to ``https://api.machines.dev`` (``FLY_API_HOSTNAME``). Machines are run by a
:class:`Runner`: :class:`InProcessRunner` (nothing executes; for API tests) or :class:`DockerRunner` (a
container per run)::

    async with DockerRunner() as runner, serve(token=token, runner=runner) as served:
        ...  # FLY_API_HOSTNAME=served.url; Authorization: Bearer <token>

Emulated (paths and shapes as in the vendored spec ``fly-machines-openapi.json``):

- apps: create (201; 422 ``name_taken``, names global), show, list (``org_slug``), delete
  (202, destroys its machines);
- machines: create (``config``, ``name``, ``region``, ``lease_ttl`` → ``nonce``,
  ``skip_launch``), get (``include_leases``), list (``state=``, ``region``,
  ``metadata.{key}=``, ``include_deleted``, ``summary``, ``limit`` + cursor in
  ``fly-next-cursor``), update (full config, a new 26-char ``version`` each time, 409 on a
  stale ``current_version``, a running machine restarts, a stopped one stays stopped),
  start, stop (``{signal, timeout}``, default ``config.stop_config`` else SIGINT, 5 s),
  suspend, signal, delete (``force=true`` for a running machine, else 412), ``wait`` (200
  ``{ok, state, version, event_id}``, **408** on timeout, timeout capped at 60 s), events
  (newest first, ``exit_event`` with ``exit_code``, ``oom_killed``, ``requested_stop``,
  ``restarting``), versions, exec (200 whatever the exit code);
- states: created → starting → started → stopping → stopped; suspending → suspended;
  updating; destroying → destroyed; failed when a launch fails. Start after stop is a fresh
  run (root filesystem reset); start after suspend resumes the same run. The restart policy
  (``no``/``always``/``on-failure``, default on-failure, 10 retries) restarts unexpected exits;
- leases: create (``ttl`` as query or body; 201, the live wrapped shape), refresh with the
  nonce, show, release; while leased every mutation without the nonce gets 409 with Fly's
  text (``machine ID … lease currently held by …, expires at …``); an expired lease binds no
  one;
- metadata: GET, PATCH (null or "" removes; 412 on a stale ``machine_version``), per key;
- secrets (names and digests only through the API; their values in every machine's
  environment at launch, as on Fly) and IP assignments per app;
- the private network: each machine's ``private_ip`` (also ``FLY_PRIVATE_IP`` with the
  other ``FLY_*`` variables) is its own loopback address, 127.X.0.N (X random per
  emulator);
- errors ``{error, status}``; 401 without ``Authorization: Bearer <token>``; 404; 400;
  429 per action per machine (1/s burst 3, Get Machine 5/s burst 10) on an injectable
  :class:`Clock`; ``fly-request-id`` on every answer.

Not emulated: volumes, certificates, secret keys, orgs, regions/placements, cordon, restart,
``/ps``, ``/memory``, ``from_event_id`` on wait, exec ``stdin`` under Docker, files from
``secret_name``/``image_config``, ``min_secrets_version``, services and checks (no proxy
here), app deletion limits, cursor expiry, placement and ``insufficient_capacity``. Lease
and state texts not seen in Fly's sources are approximations (412 for a state that
forbids the action).
"""

from emulator.fly_api.app import NONCE_HEADER, create_app
from emulator.fly_api.backend import FlyBackend
from emulator.fly_api.clock import (
    FLY_RATE_LIMITS,
    Clock,
    FakeClock,
    Rate,
    RateLimits,
    SystemClock,
)
from emulator.fly_api.docker_runner import DockerRunner
from emulator.fly_api.errors import ApiError, FlyEmulatorError, RunnerError
from emulator.fly_api.runner import ExecResult, Exit, InProcessRunner, LaunchSpec, Runner
from emulator.fly_api.serve import Served, serve

__all__ = [
    "FLY_RATE_LIMITS",
    "NONCE_HEADER",
    "ApiError",
    "Clock",
    "DockerRunner",
    "ExecResult",
    "Exit",
    "FakeClock",
    "FlyBackend",
    "FlyEmulatorError",
    "InProcessRunner",
    "LaunchSpec",
    "Rate",
    "RateLimits",
    "Runner",
    "RunnerError",
    "Served",
    "SystemClock",
    "create_app",
    "serve",
]
