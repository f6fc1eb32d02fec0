"""The mail rules' golden cases (``golden/route.jsonl``, ``compose.jsonl``, ``strip.jsonl``,
``attachments.jsonl``).

One JSON object per line. Python (tests/mail/test_golden.py) and the Cloudflare shim
(worker_shim/test/mail.golden.test.ts) replay the same files, so both hosts route, strip and
compose alike. ``mail`` is the raw message with ``\\n`` line ends (runners send CRLF).

- route: ``agent``, ``threads`` (``session_id``, ``token``, ``participants``, ``replies``,
  ``message_ids`` kit knows in that thread), ``seen`` (Message-IDs taken already),
  optional ``envelope`` ``{from, to}`` and ``auth`` (``pass``/``fail``); ``expect``:
  ``action`` (``new``/``continue``/``refuse``), ``session_id``, ``reason``, ``text`` (the
  turn's text).
- compose: ``agent`` ``{address, name}``, ``token``, ``mail``, ``answer``; ``expect``: the
  reply's headers and ``body``.
- strip: ``text`` → ``expect``.
- attachments: the attachments' names and sizes → ``expect``: the plan (the name each is
  saved as, or why not) and what the agent is told.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load_cases(name: str) -> list[dict[str, Any]]:
    """The cases of ``golden/<name>.jsonl``."""
    text = (resources.files("kit.mail") / "golden" / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
