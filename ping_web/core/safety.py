"""Safety numbers: a fingerprint of two users' identities that people compare out of band.

Signal's construction (its ``fingerprint.rs``), with a user's device-log root (SHA-256 of its
genesis entry, :mod:`ping_web.core.devlog`) as the key and the user id as the stable id:

* per user: ``h = SHA-512(0x0000 || root || user_id || root)``, then ``h = SHA-512(h || root)``
  until 5200 iterations in all; 30 digits from ``h[0:30]``: six 5-byte big-endian chunks,
  each ``mod 100000``, zero-padded;
* the pair: both users' 30 digits, the smaller first: 60 digits, shown in 12 groups of 5;
* the QR payload: ``version (1) || mine[0:32] || theirs[0:32]``; scanning the other side's
  payload matches when its halves are ours crosswise.

A root is the whole chain of a user's devices: every later device is signed into the log by
one before it, so a safety number stays the same when a device is linked or revoked (that
shows as an event instead), and changes only with a new identity.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from ping_web.core.ids import UserId
from ping_web.errors import InvalidInput

VERSION: Final = b"\x00\x00"
ITERATIONS: Final = 5200
QR_VERSION: Final = 1
QR_SIZE: Final = 1 + 32 + 32


def user_fingerprint(user_id: UserId, root: bytes) -> bytes:
    """The 64-byte iterated hash of one user's identity."""
    digest = hashlib.sha512(VERSION + root + user_id.raw + root).digest()
    for _ in range(ITERATIONS - 1):
        digest = hashlib.sha512(digest + root).digest()
    return digest


def digits(fingerprint: bytes) -> str:
    """30 decimal digits of a user fingerprint."""
    return "".join(f"{int.from_bytes(fingerprint[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


@dataclass(frozen=True, slots=True)
class SafetyNumber:
    """The safety number of this device's user and a contact."""

    digits: str
    """60 digits, the same on both sides."""
    qr: bytes
    """What this side shows as a QR code; the other side scans it (:meth:`matches`)."""

    @classmethod
    def of(cls, mine: tuple[UserId, bytes], theirs: tuple[UserId, bytes]) -> SafetyNumber:
        """From ``(user id, root)`` of both users."""
        local, remote = user_fingerprint(*mine), user_fingerprint(*theirs)
        halves = sorted([digits(local), digits(remote)])
        return cls(halves[0] + halves[1], bytes([QR_VERSION]) + local[:32] + remote[:32])

    @property
    def groups(self) -> list[str]:
        """The digits in 12 groups of 5, as people read them out."""
        return [self.digits[i : i + 5] for i in range(0, len(self.digits), 5)]

    def matches(self, scanned: bytes) -> bool:
        """Whether a QR payload scanned from the other side's screen is this same pair."""
        if not isinstance(scanned, (bytes, bytearray)) or len(scanned) != QR_SIZE:
            raise InvalidInput(f"a safety-number QR payload is {QR_SIZE} bytes")
        if scanned[0] != QR_VERSION:
            raise InvalidInput(f"safety-number QR version {scanned[0]} is not supported")
        crossed = bytes([QR_VERSION]) + self.qr[33:] + self.qr[1:33]
        return hmac.compare_digest(crossed, bytes(scanned))

    def __str__(self) -> str:
        return " ".join(self.groups)
