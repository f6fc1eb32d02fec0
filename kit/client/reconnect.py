"""How a client behaves while its host is away: the retry schedule, its budget, its status.

The schedule is data (:meth:`ReconnectPolicy.delay`), so it is tested without a clock:
delay *n* is ``first_delay_s * multiplier**n`` capped at ``max_delay_s``, then shortened
by a random fraction up to ``jitter`` so that many clients of a restarted host do not
all knock at once. The budget (``give_up_after_s``) counts from the moment the
connection was lost (or, for the first connection, from the first try). Both start
afresh only after a connection that proved healthy: welcomed, then either bringing a new
event or staying open ``healthy_after_s``. A host that welcomes the client and drops it
at once, time after time (close 1011 on every try), is therefore retried with growing
waits, and given up on once the budget runs out, rather than in a tight loop.

Defaults:

======================  ===========  ==================================================
policy                  give up      used by
======================  ===========  ==================================================
``LIBRARY_POLICY``      after 60 s   :class:`kit.client.SessionClient` unless told
``FOREVER``             never        ``kit chat`` at a terminal (a person is waiting)
======================  ===========  ==================================================

Every policy waits 0.1 s, 0.2 s, 0.4 s … between tries, never more than 2 s, less up to
half of that at random, and counts a welcomed connection as healthy once it has brought
a new event or been open 5 s.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from kit.client.errors import ClientError


class ConnectionStatus(enum.Enum):
    """Where a :class:`kit.client.SessionClient`'s connection is."""

    CONNECTING = "connecting"
    """Before the first handshake (retrying if the host does not answer)."""
    OPEN = "open"
    """Welcomed and caught up: messages and interrupts go out at once."""
    RECONNECTING = "reconnecting"
    """The host went away; retrying with backoff. Messages sent meanwhile are queued."""
    CLOSED = "closed"
    """Closed by the application, refused by the host, or the budget ran out."""


@dataclass(frozen=True)
class StatusChange:
    """What ``on_status`` is called with: the new status and, while retrying, why and when."""

    status: ConnectionStatus
    attempt: int = 0
    """Tries since the connection was lost (0 once open)."""
    reason: str = ""
    """Why the last connection ended or the last try failed, for people."""
    retry_in_s: float | None = None
    """When retrying: the wait before the next try."""


@dataclass(frozen=True)
class ReconnectPolicy:
    """Capped exponential backoff with jitter, and how long to keep at it."""

    first_delay_s: float = 0.1
    multiplier: float = 2.0
    max_delay_s: float = 2.0
    jitter: float = 0.5
    """Each delay is cut by up to this fraction, at random (0: no jitter)."""
    give_up_after_s: float = 60.0
    """Stop and raise :class:`kit.client.ConnectionLost` after this long without a
    healthy connection (``math.inf``: never)."""
    healthy_after_s: float = 5.0
    """A connection welcomed and then open this long is healthy (so is one that brought a
    new event): when it ends, the schedule and the budget start afresh. Others do not
    reset them."""

    def __post_init__(self) -> None:
        if not 0 <= self.jitter <= 1:
            raise ClientError("ReconnectPolicy.jitter must be between 0 and 1.")
        if self.first_delay_s < 0 or self.max_delay_s < self.first_delay_s:
            raise ClientError("ReconnectPolicy needs 0 <= first_delay_s <= max_delay_s.")
        if self.multiplier < 1 or self.give_up_after_s < 0:
            raise ClientError("ReconnectPolicy needs multiplier >= 1 and give_up_after_s >= 0.")
        if self.healthy_after_s < 0:
            raise ClientError("ReconnectPolicy needs healthy_after_s >= 0.")

    def healthy(self, open_for_s: float | None, new_events: int = 0) -> bool:
        """Whether a connection that was open ``open_for_s`` after its welcome (None: never
        welcomed) and brought ``new_events`` resets the schedule and the budget."""
        return open_for_s is not None and (new_events > 0 or open_for_s >= self.healthy_after_s)

    @property
    def forever(self) -> bool:
        """Whether this policy never gives up."""
        return math.isinf(self.give_up_after_s)

    def delay(self, attempt: int, rand: float) -> float:
        """The wait before try ``attempt`` (0-based) given ``rand`` in [0, 1)."""
        # min() before the power would overflow for large attempts; cap the exponent.
        exponent = min(attempt, 64)
        base = min(self.max_delay_s, self.first_delay_s * self.multiplier**exponent)
        return base * (1 - self.jitter * rand)

    def schedule(self, attempts: int, rands: list[float] | None = None) -> list[float]:
        """The first ``attempts`` delays (``rands``: one random number per try; 0 each if
        not given, which is the longest schedule)."""
        rands = rands if rands is not None else [0.0] * attempts
        return [self.delay(n, rands[n]) for n in range(attempts)]


LIBRARY_POLICY = ReconnectPolicy()
"""The library's default: keep trying for 60 s, then raise ``ConnectionLost``."""

FOREVER = ReconnectPolicy(give_up_after_s=math.inf)
"""Never give up (an interactive ``kit chat``)."""
