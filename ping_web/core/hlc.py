"""Hybrid logical clock: a timestamp that never goes back and orders causally.

Wall clocks on devices disagree and jump backwards; an HLC keeps the largest wall time
seen (local or remote) and breaks ties with a counter, so every event this device stamps
sorts after everything it has already seen.

Counter overflow: when the counter would pass 2**32-1, the clock carries into the wall
time (``wall_ms + 1``, counter 0). That is still strictly greater, so the clock never
stalls or raises; it only runs at most 1 ms ahead per 2**32 events in one millisecond.
Only a wall time past 2**64-1 raises :class:`InvalidInput`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

from ping_web.core import codec

MAX_AHEAD_MS: Final = 24 * 60 * 60 * 1000
"""How far ahead of the local wall clock a received stamp may be and still be merged."""


@dataclass(frozen=True, slots=True, order=True)
class Hlc:
    """``(wall_ms, counter)``: u64 milliseconds since the epoch and a u32 tie breaker."""

    wall_ms: int
    counter: int = 0
    ZERO: ClassVar[Hlc]

    def __post_init__(self) -> None:
        codec.uint(self.wall_ms, "Hlc.wall_ms")
        codec.uint(self.counter, "Hlc.counter", hi=codec.U32_MAX)

    def tick(self, now_ms: int) -> Hlc:
        """The stamp for a local event (a send) at wall time ``now_ms``."""
        codec.uint(now_ms, "now_ms")
        if now_ms > self.wall_ms:
            return Hlc(now_ms, 0)
        return _after(self.wall_ms, self.counter)

    def merge(self, remote: Hlc, now_ms: int) -> Hlc:
        """The stamp for receiving ``remote`` at ``now_ms``: after both clocks.

        A remote stamp more than :data:`MAX_AHEAD_MS` ahead of ``now_ms`` is not merged
        (the clock only ticks): a sender's broken clock, or a forged header, cannot push
        this clock toward the end of its range.
        """
        codec.uint(now_ms, "now_ms")
        if remote.wall_ms > now_ms + MAX_AHEAD_MS:
            return self.tick(now_ms)
        wall = max(self.wall_ms, remote.wall_ms, now_ms)
        if wall == self.wall_ms == remote.wall_ms:
            return _after(wall, max(self.counter, remote.counter))
        if wall == self.wall_ms:
            return _after(wall, self.counter)
        if wall == remote.wall_ms:
            return _after(wall, remote.counter)
        return Hlc(wall, 0)

    def to_cbor(self) -> list[int]:
        """The CBOR form: the array ``[wall_ms, counter]``."""
        return [self.wall_ms, self.counter]

    @classmethod
    def from_cbor(cls, value: Any, what: str = "hlc") -> Hlc:
        """Parse ``[wall_ms, counter]``; :class:`InvalidInput` if it is anything else."""
        wall_ms, counter = codec.array(value, what, size=2)
        return cls(wall_ms, counter)


Hlc.ZERO = Hlc(0, 0)


def _after(wall_ms: int, counter: int) -> Hlc:
    """The smallest stamp greater than ``(wall_ms, counter)``, carrying on overflow."""
    if counter < codec.U32_MAX:
        return Hlc(wall_ms, counter + 1)
    return Hlc(wall_ms + 1, 0)
