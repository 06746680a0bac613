"""Token buckets: a sustained rate with a burst, per key (a device, or a client address)."""

from __future__ import annotations

import math
import time
from typing import Final

_MAX_KEYS: Final = 100_000


class RateLimiter:
    """``take(key)`` spends one token; ``None`` if allowed, else seconds until one is back.

    In memory, per relay process. When the table grows past a bound, full buckets (idle
    keys) are dropped; a dropped key starts again full, which is what it had anyway.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._buckets: dict[object, tuple[float, float]] = {}

    def peek(self, key: object, now: float | None = None) -> int | None:
        """Like :meth:`take`, spending nothing: ``None`` if a token is there."""
        if self._rate <= 0:
            return None
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        return None if tokens >= 1.0 else max(1, math.ceil((1.0 - tokens) / self._rate))

    def take(self, key: object, now: float | None = None, cost: float = 1.0) -> int | None:
        """Spend ``cost`` tokens if the bucket holds them (else nothing spent)."""
        if self._rate <= 0:
            return None
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            if len(self._buckets) > _MAX_KEYS:
                self._sweep(now)
            return None
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((cost - tokens) / self._rate))

    def owe(self, key: object, cost: float, now: float | None = None) -> None:
        """Spend ``cost`` tokens after the fact (a reply already built): the bucket may go
        below zero, down to ``-burst``, and refuses until it has refilled."""
        if self._rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        self._buckets[key] = (max(-self._burst, tokens - cost), now)

    def _sweep(self, now: float) -> None:
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self._rate >= self._burst:
                del self._buckets[key]
