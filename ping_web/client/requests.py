"""Exactly-once requests: a caller's request id, and the outcome recorded with the operation.

A caller that may send the same operation twice (a tab whose leader went away before it
answered, :mod:`ping_web.client.tabs`; an app retrying after an error) passes a
``request_id`` to ``send``, ``create_conversation``, ``add_members``, ``remove_members`` or
``self_update``. The operation's own batch then also stores ``request id -> result``, so
the result is durable exactly when the operation is: a retry finds it and gets the same
result back, and nothing is applied twice. A retry that finds nothing recorded applies the
operation, because nothing of the first attempt was stored. Two calls with one id in
flight at once in one client are serialised: the second waits for the first, then reads
what it recorded.

An own commit can still be refused by the delivery service after it was recorded (another
member's commit took the epoch). Its discard, whenever it happens (in the call, or in a
later ``sync`` after a crash), rewrites the record as that failure in the discard's own
batch, so a retry raises :class:`~ping_web.errors.StateConflict` as the call did. A
request id names one attempt: after an error, a new attempt takes a new id.

Only the latest :data:`REQUESTS_KEPT` outcomes are kept: recording one more deletes the
oldest in the same batch. A retry comes while its caller still waits for the answer, a
handful of requests later, so the bound is far beyond what a retry needs; a request id
retried after that many newer requests is applied again.

Layout (``docs/storage.md``), namespace ``requests``: ``"r" || request id`` ->
:class:`RequestRecord`; ``"n" || order (u64 BE)`` -> request id, the order pruning
follows; ``"c" || conversation id || seq (u64 BE)`` -> request id || method, the request
that made an own commit. The two indexes are loaded into memory with the device.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Final, Self, TypeVar

from ping_web import errors
from ping_web.client import keys
from ping_web.core import codec
from ping_web.core.envelope import MessageEnvelope
from ping_web.core.ids import ConversationId
from ping_web.errors import InvalidInput, PingError, StateConflict, StorageCorrupted
from ping_web.storage.base import Batch, Storage

T = TypeVar("T")

REQUEST_ID_BYTES: Final = 16
REQUESTS_KEPT: Final = 1000
"""How many recorded outcomes a device keeps (the newest); see the module docstring."""
RESULT_MAX_SIZE: Final = 8 << 20
_RECORD_KEYS: Final = frozenset({"v", "m", "r", "e", "t", "n"})
DISCARDED: Final = "another member's commit took this epoch; ours was discarded, retry with a new request"


def new_request_id() -> bytes:
    """A fresh random request id (16 bytes): unique without coordination between tabs."""
    return os.urandom(REQUEST_ID_BYTES)


def check_request_id(request_id: object) -> bytes:
    if not isinstance(request_id, bytes) or len(request_id) != REQUEST_ID_BYTES:
        raise InvalidInput(f"a request id is {REQUEST_ID_BYTES} bytes (new_request_id() makes one)")
    return request_id


def recorded_error(name: str, message: str) -> PingError:
    """The :class:`~ping_web.errors.PingError` a recorded failure names (``PingError`` if unknown)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, PingError) and cls is not errors.MlsError:
        return cls(message)
    return PingError(f"{name}: {message}")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What a request did: its method, its encoded result or its error, when, and its place
    in the order."""

    VERSION: ClassVar[int] = 1

    method: str
    result: bytes
    error: tuple[str, str] | None
    at_ms: int
    order: int

    def encode(self) -> bytes:
        error = None if self.error is None else list(self.error)
        return codec.encode(
            {"v": self.VERSION, "m": self.method, "r": self.result, "e": error, "t": self.at_ms, "n": self.order}
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        with codec.record(data, "RequestRecord", keys=_RECORD_KEYS, versions=(cls.VERSION,),
                          max_size=RESULT_MAX_SIZE + 1024) as m:  # fmt: skip
            error = None
            if m["e"] is not None:
                name, message = codec.array(m["e"], "error", size=2)
                error = (codec.text(name, "error name", hi=64), codec.text(message, "error message", hi=4096))
            return cls(
                codec.text(m["m"], "method", hi=64),
                codec.byte_string(m["r"], "result", hi=RESULT_MAX_SIZE),
                error,
                codec.uint(m["t"], "at_ms"),
                codec.uint(m["n"], "order"),
            )


@dataclass(frozen=True, slots=True)
class Request:
    """A request being applied: handed to the operation, which records it in its batch."""

    id: bytes
    method: str


class RequestLog:
    """The device's recorded requests: their order and commits in memory, outcomes in storage."""

    def __init__(self, kept: int = REQUESTS_KEPT) -> None:
        self.kept = kept
        self.replayed = 0
        """Calls answered from a recorded outcome (for tests and diagnostics)."""
        self._order: deque[tuple[int, bytes]] = deque()
        self._orders: dict[bytes, int] = {}
        self._commits: dict[bytes, tuple[bytes, str]] = {}  # commit key -> (request id, method)
        self._commit_of: dict[bytes, bytes] = {}  # request id -> commit key
        self._next = 1
        self._running: dict[bytes, asyncio.Future[None]] = {}

    async def load(self, storage: Storage) -> None:
        """Rebuild the indexes from storage (after open, or after a failed write)."""
        order = sorted(
            (keys.request_order(key), request_id)
            for key, request_id in await storage.scan(keys.REQUESTS, keys.REQUEST_ORDER_PREFIX)
        )
        commits = await storage.scan(keys.REQUESTS, keys.REQUEST_COMMIT_PREFIX)
        self._order = deque(order)
        self._orders = {request_id: number for number, request_id in order}
        self._commits = {key: (value[:REQUEST_ID_BYTES], value[REQUEST_ID_BYTES:].decode()) for key, value in commits}
        self._commit_of = {request_id: key for key, (request_id, _) in self._commits.items()}
        self._next = order[-1][0] + 1 if order else 1

    async def run(
        self,
        storage: Storage,
        request_id: bytes | None,
        method: str,
        decode: Callable[[bytes], T],
        operation: Callable[[Request | None], Awaitable[T]],
    ) -> T:
        """``operation`` once per request id: the recorded outcome if there is one, else apply it."""
        if request_id is None:
            return await operation(None)
        check_request_id(request_id)
        while True:
            running = self._running.get(request_id)
            if running is not None:
                await asyncio.wait([running])
                continue
            recorded = await self._read(storage, request_id)
            if request_id not in self._running:  # nobody started it while we read
                break
        if recorded is not None:
            if recorded.method != method:
                raise InvalidInput(f"request id {request_id.hex()} was used for {recorded.method}, not {method}")
            self.replayed += 1
            if recorded.error is not None:
                raise recorded_error(*recorded.error)
            return decode(recorded.result)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[request_id] = done
        try:
            return await operation(Request(request_id, method))
        finally:
            del self._running[request_id]
            done.set_result(None)

    async def _read(self, storage: Storage, request_id: bytes) -> RequestRecord | None:
        if request_id not in self._orders:
            return None
        raw = await storage.get(keys.REQUESTS, keys.request_key(request_id))
        if raw is None:
            return None  # pruned meanwhile
        try:
            return RequestRecord.decode(raw)
        except PingError as exc:
            raise StorageCorrupted(f"the record of request {request_id.hex()} is unreadable: {exc}") from None

    # -- recording: synchronous, inside the capture of an operation ----------------------------

    def record(
        self, batch: Batch, request: Request, result: bytes, now_ms: int, *, commit: MessageEnvelope | None = None
    ) -> None:
        """Put the outcome into the operation's batch (with the commit it made, if any); prune
        the oldest beyond :attr:`kept`."""
        number, self._next = self._next, self._next + 1
        value = RequestRecord(request.method, result, None, now_ms, number).encode()
        batch.put(keys.REQUESTS, keys.request_key(request.id), value)
        batch.put(keys.REQUESTS, keys.request_order_key(number), request.id)
        self._order.append((number, request.id))
        self._orders[request.id] = number
        if commit is not None:
            key = keys.request_commit_key(commit.conversation_id, commit.seq)
            batch.put(keys.REQUESTS, key, request.id + request.method.encode())
            self._commits[key] = (request.id, request.method)
            self._commit_of[request.id] = key
        while len(self._order) > self.kept:
            old_number, old_id = self._order.popleft()
            self._orders.pop(old_id, None)
            batch.delete(keys.REQUESTS, keys.request_key(old_id))
            batch.delete(keys.REQUESTS, keys.request_order_key(old_number))
            old_commit = self._commit_of.pop(old_id, None)
            if old_commit is not None:
                self._commits.pop(old_commit, None)
                batch.delete(keys.REQUESTS, old_commit)

    def commit_discarded(self, batch: Batch, conversation_id: ConversationId, seq: int, now_ms: int) -> None:
        """Our commit ``seq`` was discarded: the request that made it failed (same batch)."""
        made_by = self._commits.get(keys.request_commit_key(conversation_id, seq))
        if made_by is None:
            return
        request_id, method = made_by
        number = self._orders.get(request_id)
        if number is None:
            return
        error = (StateConflict.__name__, DISCARDED)
        batch.put(
            keys.REQUESTS, keys.request_key(request_id), RequestRecord(method, b"", error, now_ms, number).encode()
        )
