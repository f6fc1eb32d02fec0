"""The summary fold's golden cases (tests/storage/golden/summary_fold.jsonl) are the Agent
SDK's own ``fold_session_summary``: the shim's port (worker_shim/src/summary.ts) replays
the same file, so a new SDK that folds differently fails here first."""

from __future__ import annotations

import time
from typing import Any

import pytest
from claude_agent_sdk import fold_session_summary

from tests.storage.golden_store import cases


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Naive timestamps are local time to the SDK and UTC to the shim: fold in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.mark.parametrize("case", cases("summary_fold"), ids=lambda c: str(c["case"])[:60])
def test_the_sdk_folds_each_case_as_written(case: dict[str, Any]) -> None:
    """Folding the case's batches one append at a time gives its data."""
    summary: Any = None
    for batch in case["batches"]:
        summary = fold_session_summary(summary, {"project_key": "p", "session_id": "s"}, batch)
    assert summary["data"] == case["data"]
