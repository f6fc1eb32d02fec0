"""The client's policies over ``httpx.MockTransport``: auth, retries and backoff, the wait
loop, leases and nonces, errors mapped once. Against the emulator: tests/emulator/fly_api."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

import fly
from fly import FlyClient, RetryPolicy
from fly.http import auth_header

Handler = Callable[[httpx.Request], httpx.Response]


class Clock:
    """A fake monotonic clock the fake sleep advances."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # a real sleep yields to the loop


def client(handler: Handler, clock: Clock | None = None, token: str = "tok") -> FlyClient:
    clock = clock or Clock()
    return FlyClient(
        token,
        base_url="http://fly.test",
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        rand=lambda: 1.0,
        clock=clock,
        retry=RetryPolicy(attempts=4, base_s=0.5, cap_s=2.0),
    )


def error(status: int, message: str, fly_status: str | None = None) -> httpx.Response:
    body = {"error": message, **({"status": fly_status} if fly_status else {})}
    return httpx.Response(status, json=body, headers={"fly-request-id": "req-42"})


def test_the_public_api_is_pinned() -> None:
    """``fly.__all__`` is the curated surface."""
    assert sorted(fly.__all__) == [
        "App",
        "AppName",
        "Conflict",
        "DEFAULT_BASE_URL",
        "ExecFailed",
        "ExecResult",
        "FlyClient",
        "FlyError",
        "IPAssignment",
        "IPType",
        "InsufficientCapacity",
        "Lease",
        "LeaseHeld",
        "Machine",
        "MachineCheck",
        "MachineConfig",
        "MachineEvent",
        "MachineFile",
        "MachineGuest",
        "MachineId",
        "MachineInit",
        "MachinePort",
        "MachineRestart",
        "MachineService",
        "MachineState",
        "NameTaken",
        "NotFound",
        "PreconditionFailed",
        "RateLimited",
        "RetryPolicy",
        "SecretInfo",
        "ServerError",
        "Signal",
        "StopConfig",
        "StopSignal",
        "Unauthorized",
        "Unprocessable",
        "Unreachable",
        "WaitResult",
        "WaitState",
        "WaitTimedOut",
        "base_url",
    ]
    assert all(hasattr(fly, name) for name in fly.__all__)


def test_auth_header_and_base_url() -> None:
    """Macaroon tokens go as FlyV1, others as Bearer; FLY_API_HOSTNAME is a URL or host:port;
    anything else is refused naming the variable."""
    assert auth_header("abc") == "Bearer abc"
    assert auth_header("fm2_xyz") == "FlyV1 fm2_xyz"
    assert auth_header("FlyV1 fm1_a,fm2_b") == "FlyV1 fm1_a,fm2_b"
    assert auth_header("fm1r_abc") == "FlyV1 fm1r_abc"
    assert auth_header("fo1_x,fm2_y") == "FlyV1 fo1_x,fm2_y"
    assert auth_header("flyv1 fm2_z") == "FlyV1 fm2_z"
    assert fly.base_url(None) == "https://api.machines.dev"
    assert fly.base_url("_api.internal:4280") == "http://_api.internal:4280"
    assert fly.base_url("http://127.0.0.1:4280/") == "http://127.0.0.1:4280"
    assert fly.base_url("https://api.machines.dev/v1") == "https://api.machines.dev"
    with pytest.raises(ValueError, match="FLY_API_HOSTNAME"):
        fly.base_url("ftp://x")
    with pytest.raises(ValueError, match="FLY_API_TOKEN"):
        FlyClient(" ")


async def test_429_is_retried_with_jittered_backoff_then_raised_with_the_request_id() -> None:
    """Rate limited: retried with growing, capped delays; past the attempts, RateLimited
    naming the limit and carrying fly-request-id."""
    clock = Clock()
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        return error(429, "rate limit exceeded")

    async with client(handler, clock) as api:
        with pytest.raises(fly.RateLimited) as caught:
            await api.start_machine("app", "m1")
    assert calls == ["Bearer tok"] * 4
    assert clock.slept == [0.5, 1.0, 2.0]
    assert "req-42" in str(caught.value)
    assert "per second" in str(caught.value)


async def test_5xx_is_retried_for_reads_but_not_for_a_start() -> None:
    """A GET that met a 503 is repeated; a POST that did is not (it may have acted)."""
    answers = iter([error(503, "busy"), httpx.Response(200, json={"id": "m1", "state": "started"})])
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        if request.method == "POST":
            posts += 1
            return error(502, "bad gateway")
        return next(answers)

    async with client(handler) as api:
        machine = await api.get_machine("app", "m1")
        assert (machine.id, machine.state) == ("m1", "started")
        with pytest.raises(fly.ServerError):
            await api.start_machine("app", "m1")
    assert posts == 1


async def test_no_answer_is_unreachable_naming_the_host_setting() -> None:
    """Connection refused: a read is retried, then Unreachable naming FLY_API_HOSTNAME."""
    tries = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        raise httpx.ConnectError("refused", request=request)

    async with client(handler) as api:
        with pytest.raises(fly.Unreachable, match="FLY_API_HOSTNAME"):
            await api.list_machines("app")
    assert tries == 4


async def test_wait_reissues_on_408_until_its_deadline() -> None:
    """Fly answers 408 when one wait's own timeout passes: re-issued (each call ≤ 60 s)
    until the machine gets there, or WaitTimedOut at the caller's deadline."""
    clock = Clock()
    timeouts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.url.params["timeout"])
        clock.now += float(request.url.params["timeout"])
        if len(timeouts) < 3:
            return error(408, "deadline exceeded")
        return httpx.Response(200, json={"ok": True, "state": "started", "version": "v2"})

    async with client(handler, clock) as api:
        result = await api.wait("app", "m1", "started", version="v2", timeout_s=150)
        assert (result.state, result.version) == ("started", "v2")
        assert timeouts == ["55", "55", "40"]
        timeouts.clear()
        clock.now = 0
        with pytest.raises(fly.WaitTimedOut, match="did not reach started,stopped in 90 s"):
            await api.wait("app", "m1", ("started", "stopped"), timeout_s=90)
        assert timeouts == ["55", "35"]


async def test_leases_both_shapes_and_the_nonce_on_mutations() -> None:
    """The flat (spec) and wrapped (live) lease answers parse alike; ``leased`` retries while
    another holds the lease, sends nothing else meanwhile, and releases with the nonce even
    when the block fails."""
    flat = {"nonce": "n1", "expires_at": 1700000000, "owner": "me", "version": "v"}
    assert fly.Lease.parse(flat) == fly.Lease.parse({"status": "success", "data": flat})
    seen: list[tuple[str, str, str | None]] = []
    held = iter([True, False])

    def handler(request: httpx.Request) -> httpx.Response:
        nonce = request.headers.get("fly-machine-lease-nonce")
        seen.append((request.method, request.url.path.rsplit("/", 1)[-1], nonce))
        if request.url.path.endswith("/lease") and request.method == "POST":
            if next(held):
                return error(409, "lease currently held by another@example.com")
            assert json.loads(request.content)["ttl"] == 30
            return httpx.Response(201, json={"status": "success", "data": flat})
        return httpx.Response(200, json={})

    clock = Clock()

    async def stop_then_fail(api: FlyClient) -> None:
        async with api.leased("app", "m1", ttl_s=30) as lease:
            await api.stop_machine("app", "m1", signal="SIGTERM", nonce=lease.nonce)
            raise RuntimeError("boom")

    async with client(handler, clock) as api:
        with pytest.raises(RuntimeError, match="boom"):
            await stop_then_fail(api)
    assert seen == [
        ("POST", "lease", None),
        ("POST", "lease", None),
        ("POST", "stop", "n1"),
        ("DELETE", "lease", "n1"),
    ]
    assert clock.slept == [1.0]


async def test_fly_errors_are_mapped_to_their_kind_with_the_fix() -> None:
    """Capacity, a taken name, a held lease, a stale version, 412 and 401 each raise their
    own FlyError, whose message names what to do."""
    cases = {
        "/v1/apps/a/machines": (error(422, "no room", "insufficient_capacity"), "another region"),
        "/v1/apps": (error(422, "taken", "name_taken"), "pick another name"),
        "/v1/apps/a/machines/m/start": (error(409, "machine lease held by x"), "lease"),
        "/v1/apps/a/machines/m": (error(409, "version mismatch"), "version"),
        "/v1/apps/a/machines/m/metadata": (error(412, "stale machine_version"), "stale"),
        "/v1/apps/a/ip_assignments": (error(401, "token validation error"), "FLY_API_TOKEN"),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return cases[request.url.path][0]

    async with client(handler) as api:
        calls = [
            (api.create_machine("a", {"image": "i"}), fly.InsufficientCapacity),
            (api.create_app("a", "personal"), fly.NameTaken),
            (api.start_machine("a", "m"), fly.LeaseHeld),
            (api.update_machine("a", "m", {"image": "i"}, current_version="v1"), fly.Conflict),
            (
                api.update_metadata("a", "m", {"k": "v"}, machine_version="v1"),
                fly.PreconditionFailed,
            ),
            (api.list_ips("a"), fly.Unauthorized),
        ]
        for (call, kind), (_, fix) in zip(calls, cases.values(), strict=True):
            with pytest.raises(kind, match=fix) as caught:
                await call
            assert caught.value.request_id == "req-42"
            assert not isinstance(caught.value, fly.LeaseHeld) or kind is fly.LeaseHeld


async def test_exec_checks_the_exit_code_fly_does_not() -> None:
    """Fly answers 200 for a failed command: ExecFailed with its code and stderr, unless
    ``check=False``."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"exit_code": 3, "stdout": "", "stderr": "no such file"})

    async with client(handler) as api:
        with pytest.raises(fly.ExecFailed, match="exited 3: no such file") as caught:
            await api.exec("a", "m", ["cat", "x"])
        assert caught.value.exit_code == 3
        result = await api.exec("a", "m", ["cat", "x"], check=False)
        assert result.exit_code == 3


async def test_an_exec_answer_without_exit_code_succeeded() -> None:
    """Fly's Go server leaves zero fields out: ``{"stdout": "ok"}`` is exit 0, not a
    failure. (Broken on purpose once: it read as -1 and raised.)"""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"stdout": "ok"})

    async with client(handler) as api:
        result = await api.exec("a", "m", ["true"])
    assert (result.exit_code, result.stdout, result.ok) == (0, "ok", True)


async def test_dot_segments_are_refused_before_anything_is_sent() -> None:
    """``..`` as a secret, address or machine name would collapse to ``DELETE
    /v1/apps/<app>`` (the whole app): refused, nothing sent."""
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(200, json={})

    async with client(handler) as api:
        for call in (
            api.delete_secret("app", ".."),
            api.release_ip("app", "."),
            api.delete_machine("app", ""),
        ):
            with pytest.raises(ValueError, match="not a name"):
                await call
    assert sent == []


async def test_listing_follows_cursors_and_filters_by_metadata() -> None:
    """Pages follow ``fly-next-cursor`` until it is absent; metadata filters go as
    ``metadata.<key>``; events read ``exit_event`` for the exit code and OOM."""
    states: list[str] = []
    pages = {
        None: ([{"id": "m1", "config": {"metadata": {"kit_session": "s"}}}], "c1"),
        "c1": ([{"id": "m2"}], None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            exit_event = {"exit_code": 137, "oom_killed": True, "requested_stop": False}
            event = {
                "id": "e",
                "type": "exit",
                "timestamp": 5,
                "request": {"exit_event": exit_event},
            }
            return httpx.Response(200, json=[event])
        assert request.url.params["metadata.kit_session"] == "s"
        states.append(request.url.params["state"])
        items, cursor = pages[request.url.params.get("cursor")]
        headers = {"fly-next-cursor": cursor} if cursor else {}
        return httpx.Response(200, json=items, headers=headers)

    async with client(handler) as api:
        machines = await api.list_machines(
            "a", states=("started", "stopped"), metadata={"kit_session": "s"}
        )
        assert [m.id for m in machines] == ["m1", "m2"]
        assert states == ["started,stopped"] * 2
        await api.list_machines("a", states="started", metadata={"kit_session": "s"})
        assert states[-1] == "started"  # one state as a string is not split into letters
        assert machines[0].metadata == {"kit_session": "s"}
        (event,) = await api.list_events("a", "m1")
        assert (event.type, event.exit_code, event.oom_killed) == ("exit", 137, True)


async def test_a_lease_is_refreshed_and_a_failed_release_does_not_hide_the_error() -> None:
    """While the block runs the lease is renewed with its nonce every half TTL; when the
    block fails and the release fails too, the block's error is what the caller sees,
    with the release's noted on it."""
    clock = Clock()
    seen: list[tuple[str, str | None]] = []
    renewed = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        nonce = request.headers.get("fly-machine-lease-nonce")
        seen.append((request.method, nonce))
        if request.method == "DELETE":
            return error(500, "release broke")
        if nonce:
            renewed.set()
        return httpx.Response(201, json={"nonce": "n1", "expires_at": 1})

    async def hold_then_fail(api: FlyClient) -> None:
        async with api.leased("app", "m1", ttl_s=10):
            await renewed.wait()
            raise RuntimeError("boom")

    async with client(handler, clock) as api:
        with pytest.raises(RuntimeError, match="boom") as caught:
            await asyncio.wait_for(hold_then_fail(api), 10)
    assert ("POST", "n1") in seen  # renewed with the nonce
    assert clock.slept[0] == 5.0  # at half the TTL
    assert any("release broke" in note for note in caught.value.__notes__)


async def test_wait_retries_stop_at_its_deadline() -> None:
    """A wait whose calls meet 503s retries them only until its own deadline; a 408 that
    comes back early is not re-sent at once."""
    clock = Clock()
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        clock.now += 1
        return error(503, "busy")

    async with client(handler, clock) as api:
        with pytest.raises(fly.ServerError):
            await api.wait("app", "m1", "started", timeout_s=2)
    assert calls <= 2
    early = 0

    def fast_408(request: httpx.Request) -> httpx.Response:
        nonlocal early
        early += 1
        return error(408, "deadline exceeded")

    clock = Clock()
    async with client(fast_408, clock) as api:
        with pytest.raises(fly.WaitTimedOut):
            await api.wait("app", "m1", "started", timeout_s=10)
    assert early <= 11
    assert sum(clock.slept) >= 9
