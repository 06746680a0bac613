"""What every request handler and stream connection shares: config, store, limiters, wake-ups."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .config import Config
from .notify import Notifier
from .ratelimit import RateLimiter
from .storage import Store

if TYPE_CHECKING:
    from collections.abc import Awaitable


class Closable(Protocol):
    def replace(self) -> Awaitable[None]:
        """Close this connection because the same device opened another one."""
        ...


@dataclass(eq=False)
class Relay:
    config: Config
    store: Store
    notifier: Notifier
    device_limiter: RateLimiter
    anon_limiter: RateLimiter
    streams: dict[bytes, Closable] = field(default_factory=dict)
    """The open stream of each device (one per device in this process)."""


def now_ms() -> int:
    return int(time.time() * 1000)
