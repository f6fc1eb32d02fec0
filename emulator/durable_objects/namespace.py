"""A namespace of Durable Objects: one live instance per id, gates, alarms, hibernation.

An object class subclasses :class:`DurableObject`; its constructor rebuilds in-memory state
from ``ctx.storage`` (it runs again after every hibernation or eviction). Callers reach an
object through :meth:`Namespace.call` (a stub's RPC): the call waits for the input gate,
runs, and its result is handed back only after the writes it made are committed (output
gate). ``evict``, ``hibernate``, ``run_alarm_now`` and ``ids`` are the test hooks of
vitest-pool-workers (``evictDurableObject``, ``runDurableObjectAlarm``,
``listDurableObjectIds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from emulator.durable_objects.errors import DurableObjectError, ObjectEvicted
from emulator.durable_objects.storage import AlarmTable, Storage
from kit.durability import DEFAULT, Durability
from kit.private import DIR_MODE

log = logging.getLogger("emulator.durable_objects")

T = TypeVar("T")
ObjT = TypeVar("ObjT", bound="DurableObject")

HIBERNATE_AFTER_S = 10.0
"""workerd hibernates an idle object after ~10 s (production and local alike)."""
ALARM_RETRIES = 6
ALARM_FIRST_BACKOFF_MS = 2_000
DRAIN_S = 5.0
"""How long an eviction waits for the calls in flight on the old instance."""
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class AlarmInfo:
    """What the alarm handler is given (``{retryCount, isRetry}``)."""

    retry_count: int
    is_retry: bool


@dataclass(frozen=True)
class AlarmRun:
    """What :meth:`Namespace.run_alarm_now` did."""

    ran: bool
    error: str | None = None


class InputGate:
    """Holds new events off while closed (``blockConcurrencyWhile``).

    Storage calls here are synchronous (a local SQLite file), so no event can run during
    one: the gate's other duty on Cloudflare holds by construction.
    """

    def __init__(self) -> None:
        self._closers = 0
        self._open = asyncio.Event()
        self._open.set()

    def close(self) -> None:
        """Hold events off until a matching :meth:`open`."""
        self._closers += 1
        self._open.clear()

    def open(self) -> None:
        """Undo one :meth:`close`."""
        self._closers -= 1
        if self._closers == 0:
            self._open.set()

    @property
    def is_open(self) -> bool:
        """Whether an event may be delivered now."""
        return self._closers == 0

    async def wait_open(self) -> None:
        """Return once no one holds the gate closed."""
        for _ in range(10_000):  # each round waits for an opening; re-closed ones go again
            if self._closers == 0:
                return
            await self._open.wait()
        raise DurableObjectError("The input gate never opened (blockConcurrencyWhile loops?).")


class ObjectState:
    """``ctx`` of one instance: its id, storage and input gate."""

    def __init__(self, object_id: str, storage: Storage) -> None:
        self.id = object_id
        self.storage = storage
        self.input_gate = InputGate()
        self._blocking: set[asyncio.Task[Any]] = set()

    def block_concurrency_while(self, fn: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Run ``fn`` with every other event held off until it settles."""
        self.input_gate.close()  # closed from now, not from when the task starts
        task = asyncio.get_running_loop().create_task(_awaited(fn))
        task.add_done_callback(lambda _t: self.input_gate.open())
        self._blocking.add(task)
        task.add_done_callback(self._blocking.discard)
        return task


async def _awaited(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


class DurableObject:
    """Base of an object class; ``__init__`` rebuilds in-memory state from ``ctx.storage``."""

    def __init__(self, ctx: ObjectState) -> None:
        self.ctx = ctx

    async def alarm(self, info: AlarmInfo) -> None:
        """The alarm handler (a raise is retried with backoff)."""


class _Instance(Generic[ObjT]):
    def __init__(self, obj: ObjT, state: ObjectState, generation: int) -> None:
        self.obj = obj
        self.state = state
        self.generation = generation
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.dead = False
        self.timer: asyncio.TimerHandle | None = None


class Namespace(Generic[ObjT]):
    """Objects of one class, each with a SQLite file ``<root>/<id>.sqlite`` (0600, in a
    0700 folder: only the host that runs them reads them)."""

    def __init__(
        self,
        root: Path,
        factory: Callable[[ObjectState], ObjT],
        *,
        name: str = "",
        hibernate_after_s: float | None = HIBERNATE_AFTER_S,
        clock: Callable[[], float] = time.time,
        durability: Durability = DEFAULT,
    ) -> None:
        self.root = root
        self.durability = durability
        """When a commit counts (:mod:`kit.durability`): after an fsync, by default."""
        self.name = name or getattr(factory, "__name__", "objects")
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._factory = factory
        self._hibernate_after_s = hibernate_after_s
        self._clock = clock
        self._alarms = AlarmTable(root / "metadata.sqlite", on_change=self._poke)
        self._live: dict[str, _Instance[ObjT]] = {}
        self._closing: dict[str, asyncio.Event] = {}
        self._generations: dict[str, int] = {}
        self._evict_listeners: list[Callable[[str], Awaitable[None]]] = []
        self._scheduler: asyncio.Task[None] | None = None
        self._alarm_changed: asyncio.Event | None = None
        self._background: set[asyncio.Task[object]] = set()
        self.closed = False

    # -- ids and storage ----------------------------------------------------------------

    def path(self, object_id: str) -> Path:
        """The object's SQLite file."""
        if not _ID.match(object_id):
            raise DurableObjectError(
                f"{object_id!r} is not an object id here: use letters, digits, '-', '_' and "
                "'.' (at most 128)."
            )
        return self.root / f"{object_id}.sqlite"

    def exists(self, object_id: str) -> bool:
        """Whether the object has storage."""
        return self.path(object_id).exists()

    def ids(self) -> list[str]:
        """Every object with storage (``listDurableObjectIds``)."""
        return sorted(p.stem for p in self.root.glob("*.sqlite") if p.stem != "metadata")

    def live_ids(self) -> list[str]:
        """Objects with an instance in memory."""
        return sorted(self._live)

    def generation(self, object_id: str) -> int:
        """How many instances the object has had since the namespace started."""
        return self._generations.get(object_id, 0)

    def on_evict(self, listener: Callable[[str], Awaitable[None]]) -> None:
        """Call ``listener(id)`` before an instance is evicted (the host drops its session)."""
        self._evict_listeners.append(listener)

    # -- delivering events --------------------------------------------------------------

    async def _instance(self, object_id: str) -> _Instance[ObjT]:
        closing = self._closing.get(object_id)
        if closing is not None:
            await closing.wait()
        inst = self._live.get(object_id)
        if inst is not None and inst.state.storage.closed:  # a failed commit broke it
            await self._drop(object_id, inst)
            inst = self._live.get(object_id)
        if inst is not None:
            return inst
        if self.closed:
            raise DurableObjectError(f"The {self.name} namespace is closed.")
        storage = Storage(self.path(object_id), object_id, self._alarms, self.durability)
        state = ObjectState(object_id, storage)
        generation = self._generations[object_id] = self._generations.get(object_id, 0) + 1
        try:
            obj = self._factory(state)  # the constructor: state rebuilt from storage
        except BaseException:
            storage.close()
            raise
        inst = self._live[object_id] = _Instance(obj, state, generation)
        return inst

    async def call(self, object_id: str, fn: Callable[[ObjT], T], *, durable: bool = True) -> T:
        """Deliver one event: ``fn(instance)``, answered after its writes are committed
        (and, ``durable``, on the disk as the namespace's durability says)."""

        async def run(obj: ObjT) -> T:
            return fn(obj)

        return await self.call_async(object_id, run, durable=durable)

    async def call_async(
        self, object_id: str, fn: Callable[[ObjT], Awaitable[T]], *, durable: bool = True
    ) -> T:
        """:meth:`call` for a handler that awaits (other events may interleave there)."""
        for _ in range(3):  # an instance evicted while we waited at its gate: use the next
            inst = await self._instance(object_id)
            await inst.state.input_gate.wait_open()
            if not inst.dead:
                break
        else:
            raise ObjectEvicted(f"Durable Object {object_id} keeps being evicted; try again.")
        inst.inflight += 1
        inst.idle.clear()
        self._cancel_timer(inst)
        try:
            result = await fn(inst.obj)
            await inst.state.storage.sync(durable=durable)  # the output gate
            return result
        except BaseException:
            with contextlib.suppress(Exception):
                await inst.state.storage.sync()  # earlier writes still commit
            raise
        finally:
            inst.inflight -= 1
            if inst.inflight == 0:
                inst.idle.set()
                if inst.state.storage.closed:  # its commit failed: reset, as Cloudflare does
                    self._spawn(self._drop(object_id, inst))
                else:
                    self._arm_timer(object_id, inst)

    # -- hibernation and eviction -------------------------------------------------------

    def _arm_timer(self, object_id: str, inst: _Instance[ObjT]) -> None:
        if self._hibernate_after_s is None or inst.dead:
            return
        loop = asyncio.get_running_loop()
        inst.timer = loop.call_later(
            self._hibernate_after_s,
            lambda: self._spawn(self._idle(object_id, inst)),
        )

    def _cancel_timer(self, inst: _Instance[ObjT]) -> None:
        if inst.timer is not None:
            inst.timer.cancel()
            inst.timer = None

    async def _idle(self, object_id: str, inst: _Instance[ObjT]) -> None:
        if inst.inflight == 0 and self._live.get(object_id) is inst:
            await self._drop(object_id, inst)
            log.debug("%s %s hibernated after idling", self.name, object_id)

    async def hibernate(self, object_id: str) -> bool:
        """Drop the instance now; clients stay connected, storage stays (the next event
        rebuilds it). False when it was not in memory."""
        inst = self._live.get(object_id)
        if inst is None:
            return False
        await self._drop(object_id, inst)
        return True

    async def evict(self, object_id: str) -> bool:
        """Evict the object: listeners drop what hangs on it (sockets close, the host forgets
        its session), then the instance goes. False when it was not in memory."""
        inst = self._live.get(object_id)
        for listener in list(self._evict_listeners):
            await listener(object_id)
        inst = self._live.get(object_id) or inst
        if inst is None:
            return False
        await self._drop(object_id, inst)
        return True

    async def _drop(self, object_id: str, inst: _Instance[ObjT]) -> None:
        if inst.dead:
            return
        inst.dead = True
        self._cancel_timer(inst)
        done = self._closing[object_id] = asyncio.Event()
        try:
            if self._live.get(object_id) is inst:
                del self._live[object_id]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inst.idle.wait(), DRAIN_S)
            inst.state.storage.close()
        finally:
            del self._closing[object_id]
            done.set()

    # -- alarms -------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def alarm(self, object_id: str) -> tuple[int, int] | None:
        """``(scheduled_ms, retry_count)`` of the object's stored alarm."""
        return self._alarms.get(object_id)

    async def run_alarm_now(self, object_id: str) -> AlarmRun:
        """Fire the object's alarm now, whenever it is due (``runDurableObjectAlarm``)."""
        return await self._fire(object_id)

    async def _fire(self, object_id: str) -> AlarmRun:
        stored = self._alarms.get(object_id)
        if stored is None:
            return AlarmRun(ran=False)
        scheduled, retries = stored
        info = AlarmInfo(retry_count=retries, is_retry=retries > 0)
        try:
            await self.call_async(object_id, lambda obj: obj.alarm(info))
        except Exception as exc:
            if self._alarms.get(object_id) == stored:  # the handler did not set a new one
                if retries < ALARM_RETRIES:
                    delay = ALARM_FIRST_BACKOFF_MS * 2**retries
                    self._alarms.set(object_id, self._now_ms() + delay, retries + 1)
                else:
                    self._alarms.delete(object_id, scheduled)
                    log.warning(
                        "%s %s: alarm given up after %d retries", self.name, object_id, retries
                    )
            return AlarmRun(ran=True, error=str(exc) or type(exc).__name__)
        self._alarms.delete(object_id, scheduled)  # at-least-once: cleared only after success
        return AlarmRun(ran=True)

    def _poke(self) -> None:
        if self._alarm_changed is not None:
            self._alarm_changed.set()

    def start(self) -> None:
        """Fire alarms when they are due (alarms stored before a restart too)."""
        if self._scheduler is None:
            self._alarm_changed = asyncio.Event()
            self._scheduler = asyncio.get_running_loop().create_task(
                self._schedule(), name=f"alarms-{self.name}"
            )

    async def _schedule(self) -> None:
        assert self._alarm_changed is not None
        while not self.closed:  # runs for the namespace's life
            nxt = self._alarms.earliest()
            wait = None if nxt is None else max(0.0, (nxt[1] - self._now_ms()) / 1000)
            if wait is None or wait > 0:
                self._alarm_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._alarm_changed.wait(), wait)
                continue
            assert nxt is not None
            try:
                await self._fire(nxt[0])
            except Exception:
                log.exception("%s %s: delivering the alarm failed", self.name, nxt[0])

    # -- lifecycle ----------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Commit and close every instance; stop the alarm scheduler."""
        self.closed = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        for object_id, inst in list(self._live.items()):
            await self._drop(object_id, inst)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._alarms.close()
