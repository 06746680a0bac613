"""What every request handler and stream connection shares: config, store, limiters, wake-ups."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from .budget import BodyBudget
from .config import Config
from .errors import BucketKind
from .notify import Notifier
from .ratelimit import RateLimiter
from .storage import Device, Store

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .fanout import Fanout
    from .identity import IdentityStore

_TOKEN_CACHE_ENTRIES: Final = 100_000


class Closable(Protocol):
    def replace(self) -> Awaitable[None]:
        """Close this connection because the same device opened another one."""
        ...

    def recheck(self, newest_welcome: int | None, owner: bytes | None) -> None:
        """Compare with the database: send Welcomes not sent yet, close if another owns the stream."""
        ...


class TokenCache:
    """Token hash -> (device, expiry), in memory per process, each answer for ``max_age_s``.

    A device never changes its key or user, but a revoked device loses its tokens: the
    process that takes the revocation drops them here at once (:meth:`drop_device`), and
    another process reads the database again once its cached answer is ``max_age_s`` old.
    Bounded: past the bound the oldest entries go first.
    """

    def __init__(self, entries: int = _TOKEN_CACHE_ENTRIES, max_age_s: float = 2.0) -> None:
        self._entries = entries
        self._max_age = max_age_s
        self._items: dict[bytes, tuple[Device, int, float]] = {}

    def get(self, token_hash: bytes) -> tuple[Device, int] | None:
        item = self._items.get(token_hash)
        if item is None or time.monotonic() - item[2] > self._max_age:
            return None
        return item[0], item[1]

    def put(self, token_hash: bytes, owner: tuple[Device, int]) -> None:
        items = self._items
        items[token_hash] = (owner[0], owner[1], time.monotonic())
        if len(items) > self._entries:
            for key in list(items)[: len(items) - self._entries]:
                del items[key]

    def drop_device(self, device_id: bytes) -> None:
        """Forget every token of a revoked device."""
        for key in [k for k, item in self._items.items() if item[0].device_id == device_id]:
            del self._items[key]


class CursorBook:
    """Cursors devices reported (the ``after`` of a fetch or a subscribe, an ``ack`` frame),
    kept in memory and written to the database in one transaction every
    ``cursor_flush_interval``. Off (nothing kept) when retention is off.

    A cursor lost in a crash only delays pruning: cursors only move forward and a device
    reports its cursor again on its next fetch, subscribe or ack.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._pending: dict[tuple[bytes, bytes], int] = {}

    def report(self, group_id: bytes, device_id: bytes, seq: int) -> None:
        if not self.enabled or seq <= 0:
            return
        key = (group_id, device_id)
        if seq > self._pending.get(key, 0):
            self._pending[key] = seq

    def take(self) -> dict[tuple[bytes, bytes], int]:
        pending, self._pending = self._pending, {}
        return pending


@dataclass(eq=False)
class Relay:
    config: Config
    store: Store
    notifier: Notifier
    device_limiter: RateLimiter
    anon_limiter: RateLimiter
    auth_failures: RateLimiter
    """Failed authentications per client address."""
    bodies: BodyBudget
    """Request-body bytes being received, per client and in all."""
    uploads: RateLimiter
    """Request-body bytes per client, per second."""
    downloads: RateLimiter
    """Bytes of log and Welcome pages per device, per second."""
    mirrors: dict[BucketKind, RateLimiter]
    """In-memory copies of database buckets, spent when the database accepted: a request
    this process already knows the database would refuse is refused without a transaction
    (the database stays the authority across processes)."""
    fanout: Fanout
    identities: IdentityStore
    tokens: TokenCache = field(default_factory=TokenCache)
    cursors: CursorBook = field(default_factory=lambda: CursorBook(False))
    streams: dict[bytes, Closable] = field(default_factory=dict)
    """The open stream of each device in this process (the database's ``streams`` table
    names the one owner across processes)."""


def now_ms() -> int:
    return int(time.time() * 1000)
