"""Hold the emulator's answers to Fly's vendored OpenAPI spec.

:func:`checked` validates a response body against the schema the spec declares for that
operation and status, made strict: an object may carry only the properties the spec lists
(the spec itself never says ``additionalProperties: false``, so without this an invented
field would pass). The documented live-vs-spec differences (reference/fly.md §1) are
checked against what the live API sends instead: the wrapped lease, ``ErrorResponse`` on
the 408 of ``/wait`` and on statuses the spec leaves undeclared.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import httpx
from openapi_schema_validator import OAS30Validator

from fly import spec

WRAPPED_LEASE = {"Machines_create_lease", "Machines_show_lease"}


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out and "allOf" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def _components() -> dict[str, Any]:
    strict: dict[str, Any] = _strict(copy.deepcopy(spec.load()["components"]))
    return strict


@functools.cache
def _operations() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for ops in spec.load()["paths"].values():
        for op in ops.values():
            if isinstance(op, dict) and "operationId" in op:
                found[op["operationId"]] = op
    return found


def _validate(schema: dict[str, Any], body: Any) -> None:
    validator = OAS30Validator({**schema, "components": _components()})
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors)


def ref(name: str) -> dict[str, Any]:
    """A ``$ref`` to ``components.schemas[name]``."""
    return {"$ref": f"#/components/schemas/{name}"}


def checked(response: httpx.Response, operation: str, status: int | None = None) -> Any:
    """Assert ``response`` has ``status`` (when given), a ``fly-request-id``, and a body
    valid for ``operation`` at that status; its decoded body (None when empty)."""
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers.get("fly-request-id")
    if not response.content:
        return None
    body = response.json()
    code = str(response.status_code)
    if response.status_code >= 400:
        declared = _operations()[operation].get("responses", {}).get(code)
        _validate(_schema_of(declared) or ref("ErrorResponse"), body)
        assert isinstance(body["error"], str)
        assert body["error"]
        return body
    if operation in WRAPPED_LEASE:
        assert set(body) <= {"status", "data", "message", "code"}
        _validate(ref("Lease"), body["data"])
        return body
    declared = _operations()[operation]["responses"].get(code)
    assert declared is not None, f"{operation} declares no {code} answer"
    success = _schema_of(declared)
    if success is not None:
        _validate(success, body)
    return body


def _schema_of(declared: dict[str, Any] | None) -> dict[str, Any] | None:
    if not declared:
        return None
    found: dict[str, Any] | None = (
        declared.get("content", {}).get("application/json", {}).get("schema")
    )
    return found
