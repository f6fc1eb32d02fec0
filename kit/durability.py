"""How durable a commit is before kit calls it committed: the ``KIT_DURABILITY`` setting.

kit's SQLite files (a session's event log, a Durable Object's storage, a ``sqlite:///``
transcript store: :mod:`kit.storage.sqlite`) run WAL with
``synchronous=NORMAL``: ``COMMIT`` writes the transaction to the ``-wal`` file, in the
operating system's page cache, and returns without waiting for the disk.

- ``os`` (``kit dev``'s default): that is all. A commit survives kit (or a sandbox) dying,
  not the machine losing power or its kernel.
- ``fsync`` (``kit gateway``'s default, and the library's): after ``COMMIT`` the ``-wal`` file is fsynced before anyone is
  told the commit happened, so nothing a client has seen is lost with the machine either.
  The fsync runs in a thread, off the event loop, and is grouped (:class:`GroupSync`): one
  fsync answers every commit made to the file before it started, so a busy file pays one
  fsync per batch of commits, not one per commit, and the loop goes on writing meanwhile.

An event still reaches a client only after its commit is durable in the sense chosen
(ARCHITECTURE §4.1): the Durable Object's output gate and the SQLite log's ``append`` wait
for the fsync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import os
from pathlib import Path

__all__ = ["DEFAULT", "Durability", "GroupSync", "parse_durability", "sync_folder"]


class Durability(enum.Enum):
    """What a commit survives before kit acknowledges it."""

    OS = "os"
    """Written to the OS: survives kit dying, not the machine."""
    FSYNC = "fsync"
    """On the disk (fsync, grouped): survives the machine too."""


DEFAULT = Durability.FSYNC
"""The library's default (a log store or namespace made without saying): the durable one.
``kit gateway`` keeps it; ``kit dev`` runs ``os`` unless told (kit.cli.settings)."""


def parse_durability(
    value: str | None, default: Durability = DEFAULT, name: str = "KIT_DURABILITY"
) -> Durability:
    """The setting from its text (unset or empty: ``default``); a clear error otherwise."""
    if not value:
        return default
    try:
        return Durability(value.strip().lower())
    except ValueError:
        raise ValueError(
            f"{name}={value!r}: give fsync (a commit is on the disk before a client sees it) "
            "or os (a commit survives kit dying, not the machine), or unset it."
        ) from None


class GroupSync:
    """Grouped fsync of one SQLite file's ``-wal`` (and, once, of its folder).

    :meth:`request` returns a future that completes when an fsync that *started after the
    request* has finished: that fsync covers every write made before the request. While one
    fsync runs, requests gather; when it ends, one more fsync answers all of them. Rounds
    finish in order, so a later request never completes before an earlier one.
    """

    def __init__(self, database: Path, *, new_file: bool = True) -> None:
        """``new_file``: the database was created just now, so the first fsync also syncs
        its folder (where the file's name is)."""
        self._wal = database.absolute().with_name(database.name + "-wal")
        self._folder = database.parent
        self._folder_synced = not new_file
        self._waiting: list[asyncio.Future[None]] = []
        self._running = False
        self._last: asyncio.Future[None] | None = None
        self.rounds = 0
        """How many fsyncs have run (for tests and benchmarks)."""

    @property
    def failed(self) -> OSError | None:
        """Why an fsync of this file failed in this process, if one did: from then on every
        request fails, and :meth:`settled` raises, for this object and any later one on the
        same file. The kernel may have dropped the pages that fsync did not write, and a
        later fsync (even on a new descriptor) can succeed without them, so nothing in the
        file may count as durable again until kit restarts."""
        return _FAILED.get(self._wal)

    def request(self) -> asyncio.Future[None]:
        """A future done once everything written to the file so far is on the disk (fails
        at once after a failed fsync of the file: :attr:`failed`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        future.add_done_callback(_retrieve)
        self._last = future
        if self.failed is not None:
            future.set_exception(self.failed)
            return future
        self._waiting.append(future)
        if not self._running:
            self._start(loop)
        return future

    async def settled(self) -> None:
        """Return once every request made so far is answered (raises as it did, and after a
        failed fsync of the file, always): a reader that must not pass on what is committed
        but not yet on the disk waits here."""
        if self.failed is not None:
            raise self.failed
        last = self._last
        if last is not None:
            await asyncio.shield(last)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True
        folder = not self._folder_synced
        try:
            done = loop.run_in_executor(_executor(), self._fsync, folder)
        except RuntimeError as exc:  # the executor or the loop is shutting down
            self._running = False
            self._fail(batch, exc)
            return
        done.add_done_callback(lambda d: self._finished(loop, d, batch, folder))

    def _fsync(self, folder: bool) -> None:
        """The blocking part, in a worker thread."""
        with contextlib.suppress(FileNotFoundError):  # no -wal: its last connection
            _fsync_path(self._wal, os.O_NOFOLLOW)  # closed, and that checkpoint synced it
        if folder:  # a new file's name is in its folder only once the folder is synced
            _fsync_path(self._folder, os.O_DIRECTORY)

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[None],
        batch: list[asyncio.Future[None]],
        folder: bool,
    ) -> None:
        self._running = False
        self.rounds += 1
        error: BaseException | None = (
            RuntimeError("the fsync was cancelled") if done.cancelled() else done.exception()
        )
        if error is not None:
            self._fail([*batch, *self._waiting], error)
            self._waiting = []
            return
        if folder:
            self._folder_synced = True
        for future in batch:
            if not future.done():
                future.set_result(None)
        if self._waiting and not loop.is_closed():
            self._start(loop)

    def _fail(self, batch: list[asyncio.Future[None]], error: BaseException) -> None:
        """This file's fsync failed: these requests and every later one fail."""
        failed = _FAILED.setdefault(
            self._wal,
            OSError(
                f"Cannot fsync {self._wal}: {error}; what was committed since the last good "
                "fsync may not be on the disk (restart kit once the disk is sound)."
            ),
        )
        for future in batch:
            if not future.done():
                future.set_exception(failed)


def sync_folder(folder: Path) -> asyncio.Future[None]:
    """fsync ``folder`` in kit's fsync threads, off the event loop: once the future is done,
    the names made in the folder are on the disk. It fails with the OSError (retrieved, so
    a caller that gave up on it need not await it)."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_executor(), _fsync_path, folder, os.O_DIRECTORY)
    future.add_done_callback(_retrieve)
    return future


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_FAILED: dict[Path, OSError] = {}
"""Files whose fsync failed in this process (their ``-wal`` path → why): sticky across every
:class:`GroupSync` of the file, so reopening it does not make its lost writes count."""


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """kit's own threads for fsyncs: a slow disk never holds up the default executor's
    other work (the model proxy's decoding, DNS lookups)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="kit-fsync")
    return _EXECUTOR


def _retrieve(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        future.exception()
