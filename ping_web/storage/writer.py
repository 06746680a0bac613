"""One FIFO writer per storage: batches land in the order they were captured.

Operations capture their batch synchronously (no await between the MLS call and the
capture) and hand it to :meth:`BatchWriter.submit` without awaiting anything first, so two
snapshots of one conversation can never land out of order (docs/design.md, persistence), and nothing
is held while a write is awaited: other operations keep capturing and queueing.

When the writer is idle, the submitting task commits its own batch (no extra task, no
extra event-loop turns); batches submitted meanwhile queue behind it and a drain task
commits them in order. If a write fails, every batch queued behind it fails too (each
was captured on top of the state the failed one would have stored) and ``on_failure``
is told, so the owner can rebuild its memory from what storage really holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from ping_web.errors import PingError, StorageError, StorageUnavailable
from ping_web.storage.base import Batch, Storage


class _Entry(NamedTuple):
    batch: Batch
    done: asyncio.Future[None]
    inline: bool  # committed by its submitter rather than by the drain task


class BatchWriter:
    """Commits batches to ``storage`` strictly in submission order."""

    def __init__(self, storage: Storage, on_failure: Callable[[BaseException], None]) -> None:
        self._storage = storage
        self._on_failure = on_failure
        self._queue: deque[_Entry] = deque()
        self._task: asyncio.Task[None] | None = None
        self.committed = 0

    @property
    def pending(self) -> int:
        """Batches submitted and not yet committed."""
        return len(self._queue)

    def submit(self, batch: Batch) -> Awaitable[None]:
        """Queue ``batch``; await the result to know it is durable (or why it failed)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        idle = not self._queue and (self._task is None or self._task.done())
        entry = _Entry(batch, done, inline=idle)
        self._queue.append(entry)
        if idle:
            return self._commit_inline(entry)
        if not self._queue[0].inline and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._drain())
        return done

    async def _commit_inline(self, entry: _Entry) -> None:
        await self._commit_head()
        if self._queue and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._drain())
        await entry.done

    async def _drain(self) -> None:
        while self._queue and await self._commit_head():
            pass

    async def _commit_head(self) -> bool:
        """Commit the batch at the head of the queue; False if it failed (all failed)."""
        entry = self._queue[0]
        try:
            await self._storage.commit(entry.batch)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the callers
            # A PingError or a process-level exception (cancellation, exit) passes as is.
            error = exc if isinstance(exc, PingError) or not isinstance(exc, Exception) else (
                StorageUnavailable(f"storage write failed: {exc!r}"))  # fmt: skip
            self._fail_all(error)
            self._on_failure(error)
            return False
        self._queue.popleft()
        self.committed += 1
        if not entry.done.done():
            entry.done.set_result(None)
        return True

    def _fail_all(self, error: BaseException) -> None:
        first = True
        while self._queue:
            entry = self._queue.popleft()
            if entry.done.done():
                continue
            if first:
                entry.done.set_exception(error)
                first = False
            else:
                entry.done.set_exception(StorageError(f"not written: an earlier write failed ({error})"))

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or failed)."""
        if self._queue:
            await asyncio.gather(*(entry.done for entry in list(self._queue)), return_exceptions=True)
