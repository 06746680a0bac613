"""Identifiers: conversations, devices and users.

Each is a distinct type over bytes so a DeviceId can never be passed where a
ConversationId is meant (they do not compare equal or order against each other).
ConversationId and DeviceId are 16-byte ULIDs: time-ordered, so ids created later sort
later. A ConversationId is also the MLS group id. A UserId is the MLS BasicCredential
identity, so a group's members can be mapped back to users from the tree alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import ClassVar, Self

from ping_web.core import codec
from ping_web.errors import InvalidInput


@dataclass(frozen=True, slots=True, order=True)
class _OpaqueId:
    """Bytes with a length range; subclasses set MIN_SIZE and MAX_SIZE."""

    raw: bytes
    MIN_SIZE: ClassVar[int]
    MAX_SIZE: ClassVar[int]

    def __post_init__(self) -> None:
        codec.byte_string(self.raw, type(self).__name__, lo=self.MIN_SIZE, hi=self.MAX_SIZE)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Validate and wrap ``data``; :class:`InvalidInput` if it has the wrong length."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"{cls.__name__}: expected bytes, got {type(data).__name__}")
        return cls(bytes(data))

    @classmethod
    def from_hex(cls, text: str) -> Self:
        try:
            return cls(bytes.fromhex(text))
        except (TypeError, ValueError):
            raise InvalidInput(f"{cls.__name__}: {text!r} is not hex") from None

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def __bytes__(self) -> bytes:
        return self.raw

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw.hex()})"


class _Ulid16(_OpaqueId):
    __slots__ = ()
    MIN_SIZE = MAX_SIZE = 16

    @classmethod
    def new(cls) -> Self:
        """A fresh ULID: 48-bit millisecond time, then 80 random bits; within one millisecond
        (or if the clock steps back) the last one plus one, so ids made later sort later."""
        return cls(_next_ulid())


_last_ulid = [0, 0]
"""Time and random part of the last ULID made (for the monotonic order)."""
_RANDOM_BITS = 80


def _next_ulid() -> bytes:
    now = time.time_ns() // 1_000_000
    last_ms, last_random = _last_ulid
    if now > last_ms:
        ms, random = now, int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big")
    else:
        ms, random = last_ms, last_random + 1
        if random >> _RANDOM_BITS:  # 2**80 ids in one millisecond: borrow the next one
            ms, random = ms + 1, int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big")
    _last_ulid[:] = ms, random
    return ms.to_bytes(6, "big") + random.to_bytes(_RANDOM_BITS // 8, "big")


class ConversationId(_Ulid16):
    """One conversation, stable across epochs; also the 16-byte MLS group id."""

    __slots__ = ()


class DeviceId(_Ulid16):
    """One installed device; a device is one MLS leaf in each conversation it is in."""

    __slots__ = ()


class UserId(_OpaqueId):
    """A person (1..255 opaque bytes); the MLS BasicCredential identity of each device leaf."""

    __slots__ = ()
    MIN_SIZE = 1
    MAX_SIZE = 255
