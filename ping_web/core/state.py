"""The per-device sending state a conversation persists beside its meta and cursor.

The send counter, the clock, the own commit awaiting the delivery service and the flags
of a restored or removed device are written with every batch, so a restart resumes
exactly where the last committed operation left off. Envelopes held for a future epoch
are records of their own (one each), so a batch writes only those that changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self

from ping_web.core import codec
from ping_web.core.envelope import ENVELOPE_MAX_SIZE, HASH_SIZE, MessageEnvelope, MessageKind
from ping_web.core.hlc import Hlc
from ping_web.core.ids import DeviceId
from ping_web.core.records import MAX_SIGNATURE_KEY
from ping_web.errors import InvalidInput

MAX_HELD: Final = 1024
"""Future-epoch envelopes kept at most, waiting for their commit."""
LEGACY_STATE_MAX_SIZE: Final = (MAX_HELD + 1) * (ENVELOPE_MAX_SIZE + 16)
"""Version 1 carried the held envelopes inside the state record."""

PENDING_KINDS: Final = ("add", "remove", "update", "rejoin")
"""``rejoin``: an external commit, already merged in MLS (OpenMLS merges those at once); if
the delivery service refuses it, the conversation still needs a rejoin."""
_STATE_KEYS_V1: Final = frozenset({"v", "s", "t", "p", "h", "u", "x"})
_STATE_KEYS: Final = frozenset({"v", "s", "t", "p", "u", "x", "r"})


@dataclass(frozen=True, slots=True)
class PendingCommitInfo:
    """An own commit staged in MLS and sent, not yet accepted or rejected."""

    kind: str  # one of PENDING_KINDS
    seq: int
    epoch: int  # the source epoch the commit was made in
    added: tuple[tuple[DeviceId, bytes], ...] = ()  # (device, signature key) of each new leaf
    removed_leaves: tuple[int, ...] = ()
    content_hash: bytes | None = None
    """SHA-256 of the commit's MLS payload: its echo must match it (``None`` only in a
    version-1 record, written before this was kept)."""

    def to_cbor(self) -> list[Any]:
        """``[kind, seq, epoch, [[device, signature_key], ...], [leaf, ...], content_hash]``."""
        return [self.kind, self.seq, self.epoch, [[d.raw, key] for d, key in self.added], list(self.removed_leaves),
                self.content_hash]  # fmt: skip

    @classmethod
    def from_cbor(cls, value: Any, *, legacy: bool = False) -> Self:
        if legacy:
            kind, seq, epoch, added, removed = codec.array(value, "pending", size=5)
            digest = None
        else:
            kind, seq, epoch, added, removed, digest = codec.array(value, "pending", size=6)
            digest = codec.byte_string(digest, "content_hash", size=HASH_SIZE)
        if kind not in PENDING_KINDS:
            raise InvalidInput(f"pending: unknown kind {kind!r}")
        pairs = tuple(
            (DeviceId(pair[0]), codec.byte_string(pair[1], "signature_key", lo=1, hi=MAX_SIGNATURE_KEY))
            for pair in (codec.array(item, "added", size=2) for item in _list(added, "added"))
        )
        leaves = tuple(codec.uint(i, "leaf", hi=codec.U32_MAX) for i in _list(removed, "removed"))
        return cls(kind, codec.uint(seq, "seq", lo=1), codec.uint(epoch, "epoch"), pairs, leaves, digest)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{what}: expected an array, got {type(value).__name__}")
    return value


@dataclass(slots=True)
class ConversationState:
    """Mutable sending-side state of one conversation on this device."""

    VERSION: ClassVar[int] = 2

    seq: int = 0
    """The last seq this device used in the conversation (the next envelope gets seq + 1)."""
    hlc: Hlc = Hlc.ZERO
    pending: PendingCommitInfo | None = None
    needs_self_update: bool = False
    """Restored from a snapshot: commit a self-update before sending (no ratchet reuse)."""
    removed: bool = False
    """This device was removed from the group; it can read history, not send."""
    rejoin_required: bool = False
    """The self-update after a restore was refused: another copy holds this epoch; never send."""

    def copy(self) -> ConversationState:
        return ConversationState(
            self.seq, self.hlc, self.pending, self.needs_self_update, self.removed, self.rejoin_required
        )

    def encode(self) -> bytes:
        return codec.encode({
            "v": self.VERSION, "s": self.seq, "t": self.hlc.to_cbor(),
            "p": None if self.pending is None else self.pending.to_cbor(),
            "u": self.needs_self_update, "x": self.removed, "r": self.rejoin_required,
        })  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Read a record; for a version-1 one, see :meth:`decode_with_legacy_held`."""
        return cls.decode_with_legacy_held(data)[0]

    @classmethod
    def decode_with_legacy_held(cls, data: bytes) -> tuple[Self, list[MessageEnvelope]]:
        """The state, and the envelopes a version-1 record still held inside it (version 2
        keeps them as records of their own; the caller writes them out)."""
        with codec.record(data, "ConversationState", keys={1: _STATE_KEYS_V1, 2: _STATE_KEYS},
                          versions=(1, cls.VERSION), max_size=LEGACY_STATE_MAX_SIZE) as m:  # fmt: skip
            legacy = m["v"] == 1
            held = [decode_held(codec.byte_string(raw, "held", lo=1, hi=ENVELOPE_MAX_SIZE))
                    for raw in _list(m["h"], "held")] if legacy else []  # fmt: skip
            if len(held) > MAX_HELD:
                raise InvalidInput("held: too many envelopes")
            state = cls(
                seq=codec.uint(m["s"], "seq"),
                hlc=Hlc.from_cbor(m["t"]),
                pending=None if m["p"] is None else PendingCommitInfo.from_cbor(m["p"], legacy=legacy),
                needs_self_update=codec.boolean(m["u"], "needs_self_update"),
                removed=codec.boolean(m["x"], "removed"),
                rejoin_required=False if legacy else codec.boolean(m["r"], "rejoin_required"),
            )
        return state, held


def decode_held(data: bytes) -> MessageEnvelope:
    """A held envelope record: an encoded envelope of a future epoch (never a Welcome)."""
    envelope = MessageEnvelope.decode(data)
    if envelope.kind is MessageKind.WELCOME:
        raise InvalidInput("held: a Welcome is never held")
    return envelope
