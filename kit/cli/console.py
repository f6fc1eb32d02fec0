"""All terminal output of the CLI goes through here (the library itself prints nothing)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from kit.client import ConnectionStatus, InterruptAcked, StatusChange
from kit.protocol.frames import Event
from kit.protocol.turns import ends_turn

MAX_REMEMBERED_ENDS = 32
"""Turn ends kept so that an interrupt answered after its turn ended can say how it ended."""

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
    """Renders a session for a person at a terminal (``kit chat``), or as JSON lines.

    Besides events it shows the connection (``host gone, reconnecting…`` once per outage,
    ``reconnected``) and the answers to ``/interrupt``. While an interrupt awaits its
    answer, events are held back, so that the answer comes before the end of the turn
    it stopped.
    """

    def __init__(
        self,
        *,
        as_json: bool = False,
        own_messages: set[str] | None = None,
        session_id: str | None = None,
        prompt: bool = False,
    ) -> None:
        self.as_json = as_json
        self.own = own_messages if own_messages is not None else set()
        self.session_id = session_id
        self.prompting = prompt and not as_json
        self._streamed = False
        self._at_line_start = True
        self._status = ConnectionStatus.CONNECTING
        self._interrupts_pending = 0
        self._held: list[Event] = []
        self._interrupting: set[str] = set()
        self._ends: dict[str, Event] = {}

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

    def _note(self, text: str) -> None:
        """A line about the chat itself (stderr in JSON mode, so stdout stays JSON)."""
        if self.as_json:
            out(text, stream=sys.stderr)
        else:
            self._line(dim(text))

    # -- what the person does ----------------------------------------------------------

    def prompt(self) -> None:
        """Show ``you>`` (at a terminal only)."""
        if self.prompting:
            if not self._at_line_start:
                out()
            out(bold("you> "), end="")
            self._at_line_start = False

    def typed(self) -> None:
        """The person pressed Enter: at a terminal its echo ended the line."""
        if self.prompting:
            self._at_line_start = True

    def queued(self) -> None:
        """A message was typed while the host is away."""
        self._note("  (queued: it is sent once the host is back)")

    def interrupt_requested(self) -> None:
        """``/interrupt`` went out: hold events back until the host answers."""
        self._interrupts_pending += 1

    def interrupt_acked(self, ack: InterruptAcked) -> None:
        """The host's answer to ``/interrupt``; then how that turn ended, when it has."""
        self._interrupts_pending = max(0, self._interrupts_pending - 1)
        if self.as_json:
            out(
                json.dumps(
                    {
                        "type": "interrupt_ack",
                        "session_id": self.session_id,
                        "turn_id": ack.turn_id,
                        "interrupted": ack.interrupted,
                    }
                )
            )
        elif ack.turn_id is None:
            self._line(dim("  no turn is running"))
        elif ack.interrupted:
            self._line(dim(f"  interrupting turn {ack.turn_id}…"))
            self._interrupting.add(ack.turn_id)
            ending = {event.turn_id for event in self._held if ends_turn(event.kind, event.data)}
            if ack.turn_id in self._ends and ack.turn_id not in ending:
                self._outcome(self._ends[ack.turn_id])  # it ended before the answer came
        else:
            self._line(
                dim(
                    f"  turn {ack.turn_id} is not running in a sandbox yet (queued, or its "
                    "sandbox is starting or restarting), so nothing was interrupted; "
                    "send /interrupt again once it runs"
                )
            )
        self._release()

    def _release(self) -> None:
        """Show the events held back, once no interrupt awaits its answer."""
        if not self._interrupts_pending:
            held, self._held = self._held, []
            for event in held:
                self.show(event)

    def interrupt_failed(self, message: str) -> None:
        """``/interrupt`` got no answer (the client stopped)."""
        self._interrupts_pending = max(0, self._interrupts_pending - 1)
        self._note(f"  interrupt not answered: {message}")
        self._release()

    # -- the connection ----------------------------------------------------------------

    def connection(self, change: StatusChange) -> None:
        """Say when the host goes away and comes back (once each, not per retry)."""
        before, self._status = self._status, change.status
        if change.status is before and change.status is not ConnectionStatus.CONNECTING:
            return  # another retry of the same outage
        if change.status is ConnectionStatus.RECONNECTING:
            self._note(f"  host gone, reconnecting… ({change.reason})")
        elif change.status is ConnectionStatus.CONNECTING and change.attempt == 1:
            self._note(f"  host not answering, retrying… ({change.reason})")
        elif change.status is ConnectionStatus.OPEN and before is ConnectionStatus.RECONNECTING:
            self._note("  reconnected")

    # -- events ------------------------------------------------------------------------

    def show(self, event: Event) -> None:
        """Print one event (held back while an interrupt awaits its answer)."""
        if self._interrupts_pending and not self.as_json:
            self._held.append(event)
            return
        if ends_turn(event.kind, event.data) and event.turn_id is not None:
            self._ends[event.turn_id] = event
            while len(self._ends) > MAX_REMEMBERED_ENDS:
                del self._ends[next(iter(self._ends))]
        if self.as_json:
            out(
                json.dumps(
                    {
                        "type": "event",
                        "session_id": self.session_id,
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
                f"{k}={data[k]}"
                for k in ("tier", "reason", "exit_code", "resumed", "pooled")
                if k in data
            )
            self._line(dim(f"  [sandbox {data.get('state')}{' ' + detail if detail else ''}]"))
        elif event.kind == "store":
            message = f" {data['message']}" if data.get("message") else ""
            self._line(dim(f"  [store {data.get('state')}]{message}"))
        elif event.kind == "error":
            self._line(_style(f"  ✗ {data.get('code')}: {data.get('message')}", "31"))
            if event.turn_id in self._interrupting and ends_turn(event.kind, event.data):
                self._outcome(event)
        elif event.kind == "result":
            if event.turn_id in self._interrupting:
                self._outcome(event)
            elif data.get("is_error"):
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

    def _outcome(self, end: Event) -> None:
        """How a turn we asked to interrupt really ended."""
        assert end.turn_id is not None
        self._interrupting.discard(end.turn_id)
        subtype = end.data.get("subtype")
        if end.kind == "error":
            self._line(dim(f"  turn {end.turn_id} ended: failed"))
        elif end.data.get("is_error"):
            self._line(dim(f"  turn {end.turn_id} ended: interrupted ({subtype})"))
        else:
            self._line(
                dim(
                    f"  turn {end.turn_id} ended: {subtype} (it finished before the "
                    "interrupt took effect)"
                )
            )


def _brief(value: object, *, lines: int = 1, width: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    rows = text.strip().splitlines() or [""]
    shown = [r[:width] + ("…" if len(r) > width else "") for r in rows[:lines]]
    more = f" (+{len(rows) - lines} lines)" if len(rows) > lines else ""
    return "\n    ".join(shown) + more
