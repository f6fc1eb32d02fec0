"""All terminal output of the CLI goes through here (the library itself prints nothing)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from kit.protocol.frames import Event

_COLOR = sys.stdout.isatty()


def _style(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _COLOR else text


def dim(text: str) -> str:
    """Grey text on a terminal."""
    return _style(text, "2")


def bold(text: str) -> str:
    """Bold text on a terminal."""
    return _style(text, "1")


def out(text: str = "", *, end: str = "\n", stream: TextIO | None = None) -> None:
    """Print a line to stdout (or ``stream``) and flush."""
    target = stream or sys.stdout
    target.write(text + end)
    target.flush()


def error(text: str) -> None:
    """Print an error line to stderr."""
    out(_style("error: ", "31;1") + text, stream=sys.stderr)


def banner(lines: list[tuple[str, str]], title: str) -> None:
    """A boxed-free, aligned banner: ``label  value`` rows under a title."""
    width = max(len(label) for label, _ in lines)
    out(bold(title))
    for label, value in lines:
        out(f"  {label.ljust(width)}  {value}")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under a header, in columns two spaces apart (no trailing spaces)."""
    lines = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


class EventPrinter:
    """Renders session events for a person at a terminal (``kit chat``)."""

    def __init__(self, *, as_json: bool = False, own_messages: set[str] | None = None) -> None:
        self.as_json = as_json
        self.own = own_messages if own_messages is not None else set()
        self._streamed = False
        self._at_line_start = True

    def _line(self, text: str) -> None:
        if not self._at_line_start:
            out()
        out(text)
        self._at_line_start = True

    def finish(self) -> None:
        """End a line left open by a reply cut off mid-stream."""
        if not self._at_line_start:
            out()
            self._at_line_start = True

    def show(self, event: Event) -> None:
        """Print one event."""
        if self.as_json:
            out(
                json.dumps(
                    {
                        "seq": event.seq,
                        "kind": event.kind,
                        "turn_id": event.turn_id,
                        "data": event.data,
                        "ts": event.ts,
                    }
                )
            )
            return
        data = event.data
        if event.kind == "text_delta":
            out(str(data.get("text", "")), end="")
            self._streamed = True
            self._at_line_start = False
        elif event.kind == "assistant":
            if not self._streamed:
                self._line(str(data.get("text", "")))
            self._streamed = False
        elif event.kind == "tool_use":
            self._line(dim(f"  ⚙ {data.get('name')} {_brief(data.get('input'))}"))
        elif event.kind == "tool_result":
            mark = "✗" if data.get("is_error") else "↳"
            self._line(dim(f"  {mark} {_brief(data.get('content'), lines=6)}"))
        elif event.kind == "sandbox":
            detail = " ".join(
                f"{k}={data[k]}" for k in ("tier", "reason", "exit_code", "resumed") if k in data
            )
            self._line(dim(f"  [sandbox {data.get('state')}{' ' + detail if detail else ''}]"))
        elif event.kind == "store":
            message = f" {data['message']}" if data.get("message") else ""
            self._line(dim(f"  [store {data.get('state')}]{message}"))
        elif event.kind == "error":
            self._line(_style(f"  ✗ {data.get('code')}: {data.get('message')}", "31"))
        elif event.kind == "result":
            if data.get("is_error"):
                self._line(
                    _style(
                        f"  ✗ turn ended with an error: {data.get('text') or data.get('subtype')}",
                        "31",
                    )
                )
            elif not self._at_line_start:
                out()
                self._at_line_start = True
            self._streamed = False
        elif event.kind == "user" and data.get("client_msg_id") not in self.own:
            self._line(dim(f"> {data.get('text')}"))


def _brief(value: object, *, lines: int = 1, width: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    rows = text.strip().splitlines() or [""]
    shown = [r[:width] + ("…" if len(r) > width else "") for r in rows[:lines]]
    more = f" (+{len(rows) - lines} lines)" if len(rows) > lines else ""
    return "\n    ".join(shown) + more
