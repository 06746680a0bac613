"""One FIFO writer per storage: batches land in the order they were captured.

Operations capture their batch synchronously (no await between the MLS call and the
capture) and hand it to :meth:`BatchWriter.submit`, which queues it without awaiting. A
single task commits queued batches one at a time, so two snapshots of one conversation
can never land out of order (DESIGN.md §9.5), and nothing is held while a write is
awaited. If a write fails, every batch queued behind it fails too (each was captured on
top of the state the failed one would have stored) and ``on_failure`` is told, so the
owner can rebuild its memory from what storage really holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .errors import PingError, StorageError, StorageUnavailable
from .storage import Batch, Storage


class BatchWriter:
    """Commits batches to ``storage`` strictly in submission order."""

    def __init__(self, storage: Storage, on_failure: Callable[[BaseException], None]) -> None:
        self._storage = storage
        self._on_failure = on_failure
        self._queue: deque[tuple[Batch, asyncio.Future[None]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.committed = 0

    @property
    def pending(self) -> int:
        """Batches submitted and not yet committed."""
        return len(self._queue)

    def submit(self, batch: Batch) -> asyncio.Future[None]:
        """Queue ``batch``; the future resolves once it is durable (or fails)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((batch, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        return future

    async def _drain(self) -> None:
        while self._queue:
            batch, future = self._queue[0]
            try:
                await self._storage.commit(batch)
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the callers
                # A PingError or a process-level exception (cancellation, exit) passes as is.
                error = exc if isinstance(exc, PingError) or not isinstance(exc, Exception) else (
                    StorageUnavailable(f"storage write failed: {exc!r}"))  # fmt: skip
                self._fail_all(error)
                self._on_failure(error)
                return
            self._queue.popleft()
            self.committed += 1
            if not future.done():
                future.set_result(None)

    def _fail_all(self, error: BaseException) -> None:
        first = True
        while self._queue:
            _, future = self._queue.popleft()
            if future.done():
                continue
            if first:
                future.set_exception(error)
                first = False
            else:
                future.set_exception(StorageError(f"not written: an earlier write failed ({error})"))

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or failed)."""
        if self._queue:
            await asyncio.gather(*(f for _, f in list(self._queue)), return_exceptions=True)
