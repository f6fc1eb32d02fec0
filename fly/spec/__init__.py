"""Fly's Machines API spec, vendored: a byte copy of ``superfly/docs:api/machines/openapi.json``
at commit ``462dcb9037e57d4c21a336289db3e0b9378d15ab`` (OpenAPI 3.0.1; sha256 :data:`SHA256`).
Tests hold the client's requests and the emulator's answers to it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("fly-machines-openapi.json")
SHA256 = "1ef46a4a8a164d190f1905e706501f341640a547e24e4ae53da33204aad15c3a"


@cache
def load() -> dict[str, Any]:
    """The spec, parsed (cached)."""
    spec: dict[str, Any] = json.loads(PATH.read_text(encoding="utf-8"))
    return spec


def schema(name: str) -> dict[str, Any]:
    """``components.schemas[name]``."""
    found: dict[str, Any] = load()["components"]["schemas"][name]
    return found


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a ``$ref`` followed, and an ``allOf`` of one schema flattened."""
    for _ in range(20):
        if "$ref" in node:
            node = schema(str(node["$ref"]).rsplit("/", 1)[-1])
        elif "allOf" in node and len(node["allOf"]) == 1 and "properties" not in node:
            node = node["allOf"][0]
        else:
            return node
    raise ValueError("a $ref chain longer than 20")
