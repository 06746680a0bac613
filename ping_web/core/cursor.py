"""SyncCursor: which envelopes of one conversation were already applied.

Dedupe runs before any MLS call, on every received envelope, so :meth:`SyncCursor.is_new`
and :meth:`SyncCursor.advance` are O(1): per sender device the cursor keeps the highest
seq applied and a WINDOW-bit int whose bit ``i`` says seq ``high - i`` was applied. That
delivers one sender's envelopes arriving out of order (within WINDOW) exactly once, and
rejects replays. A seq more than WINDOW below the highest is treated as already seen.

The window is kept per *incarnation* of a sender, ``seq >> 32``: a device restored from a
backup continues 2**32 seqs higher (it cannot know how many its lost copy used), so the
lost copy's messages, which may still arrive, keep a window of their own instead of
falling below the restored copy's.

Rules (``docs/design.md``, ordering and dedupe):

* application: new iff ``(device, seq)`` is unseen and ``epoch >= min_epoch``. Not
  filtered by the current epoch: a late message from the previous epoch is still
  delivered (MLS keeps past epochs' secrets). ``min_epoch`` is the epoch this device's
  membership began; nothing older was encrypted for it.
* commit, proposal: additionally need ``epoch >= cursor epoch`` (an older one is stale).
* welcome: additionally needs ``epoch > cursor epoch`` (it names the epoch it creates).

The cursor is mutable: copying a per-device table on every message would make the hot
path O(devices). A caller that must roll back on failure takes :meth:`copy` first and
keeps it until the state is committed (the copy costs what :meth:`encode` costs anyway).
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Final

from ping_web.core import codec
from ping_web.core.envelope import MessageKind
from ping_web.core.hlc import Hlc
from ping_web.core.ids import DeviceId
from ping_web.errors import InvalidInput

WINDOW: Final = 256
"""How many seqs below a device's highest are tracked one by one."""
_FULL: Final = (1 << WINDOW) - 1
CURSOR_MAX_SIZE: Final = 4 << 20
"""Largest encoded cursor read back (about 60 bytes per device: ~70 000 devices)."""

_KEYS: Final = frozenset({"v", "e", "m", "t", "d"})
_INCARNATION_BITS: Final = 32
_INCARNATION: Final = struct.Struct(">I")
_APPLICATION: Final = MessageKind.APPLICATION
_COMMIT: Final = MessageKind.COMMIT
_WELCOME: Final = MessageKind.WELCOME


class SyncCursor:
    """Current epoch, per-device applied seqs, and the highest HLC seen."""

    __slots__ = ("_seen", "epoch", "hlc", "min_epoch")
    __hash__ = None  # type: ignore[assignment]  # mutable
    VERSION: ClassVar[int] = 2

    def __init__(self, epoch: int = 0, *, min_epoch: int | None = None) -> None:
        """A cursor for a device that created (epoch 0) or joined the group at ``epoch``.

        ``epoch``, ``min_epoch`` and ``hlc`` are read by callers, changed only by the cursor.
        """
        self.epoch: int = codec.uint(epoch, "epoch")
        """The group epoch the applied messages have brought this device to."""
        self.min_epoch: int = codec.uint(epoch if min_epoch is None else min_epoch, "min_epoch", hi=epoch)
        """The epoch this device's membership began: nothing older was encrypted for it."""
        self.hlc: Hlc = Hlc.ZERO
        """The highest HLC among applied envelopes."""
        # (device bytes, incarnation) -> (highest seq, window bits)
        self._seen: dict[tuple[bytes, int], tuple[int, int]] = {}

    def highest_seq(self, device: DeviceId) -> int:
        """The highest seq applied from ``device`` (0 if none): restores a send counter."""
        raw = device.raw
        return max((high for (key, _), (high, _) in self._seen.items() if key == raw), default=0)

    def is_new(self, kind: MessageKind, epoch: int, device: DeviceId, seq: int) -> bool:
        """Whether an envelope still needs applying (False: drop it, it is done or stale)."""
        if kind is _APPLICATION:
            if epoch < self.min_epoch:
                return False
        elif kind is _WELCOME:
            if epoch <= self.epoch:
                return False
        elif epoch < self.epoch:
            return False
        state = self._seen.get((device.raw, seq >> _INCARNATION_BITS))
        if state is None:
            return True
        high, bits = state
        if seq > high:
            return True
        gap = high - seq
        return gap < WINDOW and not (bits >> gap) & 1

    def mark_seen(self, device: DeviceId, seq: int, hlc: Hlc) -> None:
        """Record ``(device, seq)`` as applied and raise the HLC; the epoch is untouched.

        For an envelope that consumed a seq without moving the epoch, e.g. an own commit
        the delivery service rejected.
        """
        codec.uint(seq, "seq", lo=1)
        key = (device.raw, seq >> _INCARNATION_BITS)
        high, bits = self._seen.get(key, (0, 0))
        if seq > high:
            shift = seq - high
            bits = ((bits << shift) | 1) & _FULL if shift < WINDOW else 1
            high = seq
        elif high - seq < WINDOW:
            bits |= 1 << (high - seq)
        self._seen[key] = (high, bits)
        if hlc > self.hlc:
            self.hlc = hlc

    def advance(self, kind: MessageKind, epoch: int, device: DeviceId, seq: int, hlc: Hlc) -> None:
        """Record an applied envelope (received, or an own one once merged).

        A commit made in ``epoch`` moves the cursor to ``epoch + 1``, a welcome to its
        ``epoch``; the cursor epoch never goes back.
        """
        self.mark_seen(device, seq, hlc)
        if kind is _COMMIT:
            self.epoch = max(self.epoch, codec.uint(epoch, "epoch", hi=codec.U64_MAX - 1) + 1)
        elif kind is _WELCOME:
            self.epoch = max(self.epoch, codec.uint(epoch, "epoch"))

    def rejoined(self, epoch: int) -> None:
        """This device rejoined the group (external commit) at ``epoch``: nothing older was
        encrypted for its new leaf. The seqs seen stay (dedupe goes on)."""
        codec.uint(epoch, "epoch")
        self.epoch = max(self.epoch, epoch)
        self.min_epoch = self.epoch

    def copy(self) -> SyncCursor:
        clone = SyncCursor.__new__(SyncCursor)
        clone.epoch, clone.min_epoch, clone.hlc = self.epoch, self.min_epoch, self.hlc
        clone._seen = dict(self._seen)
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SyncCursor):
            return NotImplemented
        return self._state() == other._state()

    def __repr__(self) -> str:
        return f"SyncCursor(epoch={self.epoch}, min_epoch={self.min_epoch}, hlc={self.hlc}, devices={len(self._seen)})"

    def _state(self) -> tuple[int, int, Hlc, dict[tuple[bytes, int], tuple[int, int]]]:
        return self.epoch, self.min_epoch, self.hlc, self._seen

    def encode(self) -> bytes:
        """Version 2: the ``d`` map's keys are a device id (16 bytes) for incarnation 0, or the
        device id and the incarnation as u32 big-endian (20 bytes) for later ones."""
        devices = {
            device + (_INCARNATION.pack(incarnation) if incarnation else b""): [
                high,
                bits.to_bytes((bits.bit_length() + 7) // 8, "big"),
            ]
            for (device, incarnation), (high, bits) in self._seen.items()
        }
        return codec.encode(
            {"v": self.VERSION, "e": self.epoch, "m": self.min_epoch, "t": self.hlc.to_cbor(), "d": devices}
        )

    @classmethod
    def decode(cls, data: bytes) -> SyncCursor:
        """Read version 2, or version 1 (whose keys are all device ids: incarnation 0)."""
        with codec.record(data, "SyncCursor", keys=_KEYS, versions=(1, cls.VERSION), max_size=CURSOR_MAX_SIZE) as m:
            cursor = cls(m["e"], min_epoch=codec.uint(m["m"], "min_epoch"))  # None would mean "= epoch"
            cursor.hlc = Hlc.from_cbor(m["t"])
            for key, entry in codec.bytes_map(m["d"], "devices").items():
                device = DeviceId(key[:16])
                incarnation = 0
                if len(key) == 20 and m["v"] >= 2:
                    (incarnation,) = _INCARNATION.unpack(key[16:])
                    if incarnation == 0:
                        raise InvalidInput(f"devices[{key.hex()}]: incarnation 0 is written as the device id alone")
                elif len(key) != 16:
                    raise InvalidInput(
                        f"devices: a key of {len(key)} bytes is neither a device id nor one with an incarnation"
                    )
                high, bits = _window_from_cbor(entry, f"devices[{key.hex()}]")
                if high >> _INCARNATION_BITS != incarnation:
                    raise InvalidInput(f"devices[{key.hex()}]: highest seq {high} is not of incarnation {incarnation}")
                cursor._seen[(device.raw, incarnation)] = high, bits
            return cursor


def _window_from_cbor(value: Any, what: str) -> tuple[int, int]:
    """Parse ``[high, bits]``, accepting only what :meth:`SyncCursor.encode` writes."""
    high, raw = codec.array(value, what, size=2)
    high = codec.uint(high, what, lo=1)
    raw = codec.byte_string(raw, what, lo=1, hi=WINDOW // 8)
    bits = int.from_bytes(raw, "big")
    if raw[0] == 0 or not bits & 1 or bits.bit_length() > min(high, WINDOW):
        raise InvalidInput(f"{what}: window bits are not canonical for highest seq {high}")
    return high, bits
