"""Everything the client sends exists in Fly's vendored OpenAPI spec: each path and method,
each query parameter, and each field of each body, nested configs included (every field of
every ``TypedDict`` the client can send is filled in and checked)."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import httpx

from fly import FlyClient, MachineConfig
from fly import spec as fly_spec

# Where the live API differs from the spec (shared/reference/fly.md §1), the client follows
# the live API: these are the only parts of its requests the spec does not declare.
LIVE_ONLY_PARAMS = {("POST", "/v1/apps/{app_name}/machines/{machine_id}/lease", "ttl")}


def sample(tp: Any) -> Any:
    """A value of type ``tp`` with every optional field filled in."""
    origin = get_origin(tp)
    if is_typeddict(tp):
        return {key: sample(hint) for key, hint in get_type_hints(tp).items()}
    if origin is Literal:
        return get_args(tp)[0]
    if origin is list:
        return [sample(get_args(tp)[0])]
    if origin is dict:
        return {"key": sample(get_args(tp)[1])}
    if origin in (Union, types.UnionType):
        return sample(next(a for a in get_args(tp) if a is not type(None)))
    return {str: "x", int: 1, bool: True}[tp]


JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def undeclared(value: Any, node: dict[str, Any], where: str) -> list[str]:
    """The parts of ``value`` that ``node`` (a spec schema) does not declare, or declares
    with another type or enum."""
    node = fly_spec.resolve(node)
    kind = node.get("type")
    if kind in JSON_TYPES and not JSON_TYPES[kind](value) and value is not None:
        return [f"{where}: {value!r} is not {kind}"]
    if "enum" in node and value not in node["enum"]:
        return [f"{where}: {value!r} not in {node['enum']}"]
    found: list[str] = []
    if isinstance(value, dict):
        props = node.get("properties")
        extra = node.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                found += undeclared(item, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                found += undeclared(item, extra, f"{where}[{key}]")
            elif props is not None or extra is False:
                found.append(f"{where}.{key} is not in the spec")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            found += undeclared(item, node["items"], f"{where}[]")
    return found


def operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The spec's path template and operation for a request."""
    for template, ops in fly_spec.load()["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in ops:
            return template, ops[method.lower()]
    raise AssertionError(f"{method} {path} is not in the spec")


def answer(request: httpx.Request) -> httpx.Response:
    """A plausible answer to any request, for the recorder."""
    path = request.url.path
    if path.endswith("/wait"):
        return httpx.Response(200, json={"ok": True, "state": "started", "version": "v"})
    if path.endswith("/exec"):
        return httpx.Response(200, json={"exit_code": 0, "stdout": "", "stderr": ""})
    if path.endswith("/lease"):
        return httpx.Response(201, json={"nonce": "n", "expires_at": 1, "owner": "o"})
    if request.method == "GET" and path.endswith(("/machines", "/events")):
        return httpx.Response(200, json=[])
    return httpx.Response(200, json={"id": "x"})


async def drive(api: FlyClient) -> set[str]:
    """Call every endpoint method with every optional argument; the names called."""
    config: MachineConfig = sample(MachineConfig)
    a, m = "app-1", "m-1"
    await api.create_app(a, "personal", network="net")
    await api.get_app(a)
    await api.find_app(a)
    await api.list_apps("personal")
    await api.delete_app(a)
    await api.create_machine(
        a,
        config,
        name="n",
        region="ams",
        lease_ttl=30,
        skip_launch=True,
        min_secrets_version=2,
    )
    await api.get_machine(a, m, include_leases=True)
    await api.list_machines(
        a,
        states=("started", "stopped"),
        metadata={"kit_session": "s"},
        region="ams",
        include_deleted=True,
        page_size=10,
    )
    await api.update_machine(
        a,
        m,
        config,
        current_version="v",
        skip_launch=False,
        min_secrets_version=2,
        nonce="n",
    )
    await api.start_machine(a, m, nonce="n")
    await api.stop_machine(a, m, signal="SIGTERM", timeout_s=10, nonce="n")
    await api.suspend_machine(a, m, nonce="n")
    await api.signal_machine(a, m, "SIGKILL", nonce="n")
    await api.delete_machine(a, m, force=True, nonce="n")
    await api.wait(a, m, ("started", "stopped"), version="v", timeout_s=5)
    await api.list_events(a, m, limit=5)
    await api.exec(a, m, ["true"], timeout_s=5)
    await api.acquire_lease(a, m, ttl_s=30, description="d", nonce="n")
    await api.get_lease(a, m)
    await api.release_lease(a, m, "n")
    async with api.leased(a, m, ttl_s=30, description="d"):
        pass
    await api.get_metadata(a, m)
    await api.update_metadata(a, m, {"k": "v", "gone": None}, machine_version="v", nonce="n")
    await api.set_metadata(a, m, "k", "v", nonce="n")
    await api.delete_metadata(a, m, "k", nonce="n")
    await api.list_secrets(a)
    await api.set_secrets(a, {"K": "v", "OLD": None})
    await api.delete_secret(a, "K")
    await api.list_ips(a)
    await api.assign_ip(a, "v6", region="ams", network="net", service_name="svc")
    await api.release_ip(a, "::1")
    source = inspect.getsource(drive)
    return {name for name in dir(FlyClient) if f"api.{name}(" in source}


def literal_problems(tp: Any, node: dict[str, Any], where: str) -> list[str]:
    """Each ``Literal`` of TypedDict ``tp`` (nested ones too) against the spec's enum."""
    props = fly_spec.resolve(node).get("properties", {})
    found: list[str] = []
    for key, hint in get_type_hints(tp).items():
        sub = fly_spec.resolve(props.get(key, {}))
        while get_origin(hint) in (list, dict):
            hint = get_args(hint)[-1]
            sub = fly_spec.resolve(sub.get("items") or sub.get("additionalProperties") or {})
        if get_origin(hint) is Literal and "enum" in sub:
            found += [f"{where}.{key}: {v!r}" for v in get_args(hint) if v not in sub["enum"]]
        elif is_typeddict(hint):
            found += literal_problems(hint, sub, f"{where}.{key}")
    return found


def test_every_choice_the_client_offers_is_one_the_spec_allows() -> None:
    """Each value of each ``Literal`` in the config types is in the spec's enum, where the
    spec has one (the body test fills in only the first)."""
    assert literal_problems(MachineConfig, fly_spec.schema("fly.MachineConfig"), "config") == []


def test_the_vendored_spec_is_the_byte_copy() -> None:
    """The spec is the copy shared/reference/fly.md names (sha256 of its text)."""
    assert hashlib.sha256(fly_spec.PATH.read_bytes()).hexdigest() == fly_spec.SHA256


async def test_every_field_the_client_sends_is_in_the_spec() -> None:
    """Each request of every method, with every option and a config with every field set,
    is a declared path and method, with declared query parameters and body fields only.
    (Broken on purpose once: a ``guest.memory_gb`` field and a ``force=`` on start were
    both reported.)"""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answer(request)

    async with FlyClient("t", transport=httpx.MockTransport(record)) as api:
        called = await drive(api)
    public = {
        name
        for name, member in inspect.getmembers(FlyClient)
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(member) or name == "leased")
        and name not in ("aclose", "call")
    }
    assert public <= called, f"not driven by the spec test: {sorted(public - called)}"
    problems: list[str] = []
    for request in sent:
        template, op = operation(request.method, request.url.path)
        declared = {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}
        for name in request.url.params:
            live_only = (request.method, template, name) in LIVE_ONLY_PARAMS
            if name not in declared and not live_only and not name.startswith("metadata."):
                problems.append(f"{request.method} {template}: query {name} is not declared")
        body = json.loads(request.content) if request.content else None
        content = op.get("requestBody", {}).get("content", {})
        if body is None:
            continue
        if "application/json" not in content:
            problems.append(f"{request.method} {template} takes no body, got {body!r}")
            continue
        problems += undeclared(body, content["application/json"]["schema"], template)
    assert problems == []
