"""The per-device sending state a conversation persists beside its meta and cursor.

What the seed keeps only in memory (the send counter, the clock) or not at all (the own
commit awaiting the delivery service, envelopes from a future epoch, the "restored from a
snapshot" flag) is written with every batch, so a restart resumes exactly where the last
committed operation left off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

from ping_web.core import codec
from ping_web.core.envelope import ENVELOPE_MAX_SIZE, MessageEnvelope, MessageKind
from ping_web.core.hlc import Hlc
from ping_web.errors import InvalidInput
from ping_web.core.ids import DeviceId
from ping_web.core.records import MAX_SIGNATURE_KEY

MAX_HELD: Final = 1024
"""Future-epoch envelopes kept at most, waiting for their commit."""
STATE_MAX_SIZE: Final = (MAX_HELD + 1) * (ENVELOPE_MAX_SIZE + 16)

PENDING_KINDS: Final = ("add", "remove", "update")
_STATE_KEYS: Final = frozenset({"v", "s", "t", "p", "h", "u", "x"})


@dataclass(frozen=True, slots=True)
class PendingCommitInfo:
    """An own commit staged in MLS and sent, not yet accepted or rejected."""

    kind: str  # one of PENDING_KINDS
    seq: int
    epoch: int  # the source epoch the commit was made in
    added: tuple[tuple[DeviceId, bytes], ...] = ()  # (device, signature key) of each new leaf
    removed_leaves: tuple[int, ...] = ()

    def to_cbor(self) -> list[Any]:
        """The CBOR form: ``[kind, seq, epoch, [[device, signature_key], ...], [leaf, ...]]``."""
        return [self.kind, self.seq, self.epoch, [[d.raw, key] for d, key in self.added], list(self.removed_leaves)]

    @classmethod
    def from_cbor(cls, value: Any) -> Self:
        kind, seq, epoch, added, removed = codec.array(value, "pending", size=5)
        if kind not in PENDING_KINDS:
            raise InvalidInput(f"pending: unknown kind {kind!r}")
        pairs = tuple(
            (DeviceId(pair[0]), codec.byte_string(pair[1], "signature_key", lo=1, hi=MAX_SIGNATURE_KEY))
            for pair in (codec.array(item, "added", size=2) for item in _list(added, "added"))
        )
        leaves = tuple(codec.uint(i, "leaf", hi=codec.U32_MAX) for i in _list(removed, "removed"))
        return cls(kind, codec.uint(seq, "seq", lo=1), codec.uint(epoch, "epoch"), pairs, leaves)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{what}: expected an array, got {type(value).__name__}")
    return value


@dataclass(slots=True)
class ConversationState:
    """Mutable sending-side state of one conversation on this device."""

    VERSION: ClassVar[int] = 1

    seq: int = 0
    """The last seq this device used in the conversation (the next envelope gets seq + 1)."""
    hlc: Hlc = Hlc.ZERO
    pending: PendingCommitInfo | None = None
    held: list[MessageEnvelope] = field(default_factory=list)
    """Envelopes from a future epoch, applied once the group reaches it."""
    needs_self_update: bool = False
    """Restored from a snapshot: commit a self-update before sending (no ratchet reuse)."""
    removed: bool = False
    """This device was removed from the group; it can read history, not send."""

    def copy(self) -> ConversationState:
        return ConversationState(
            self.seq, self.hlc, self.pending, list(self.held), self.needs_self_update, self.removed
        )

    def encode(self) -> bytes:
        return codec.encode({
            "v": self.VERSION, "s": self.seq, "t": self.hlc.to_cbor(),
            "p": None if self.pending is None else self.pending.to_cbor(),
            "h": [envelope.encode() for envelope in self.held],
            "u": self.needs_self_update, "x": self.removed,
        })  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Self:
        with codec.record(
            data, "ConversationState", keys=_STATE_KEYS, versions=(cls.VERSION,), max_size=STATE_MAX_SIZE
        ) as m:
            held = [MessageEnvelope.decode(codec.byte_string(raw, "held", lo=1, hi=ENVELOPE_MAX_SIZE))
                    for raw in _list(m["h"], "held")]  # fmt: skip
            if len(held) > MAX_HELD or any(e.kind is MessageKind.WELCOME for e in held):
                raise InvalidInput("held: too many envelopes, or a welcome")
            return cls(
                seq=codec.uint(m["s"], "seq"),
                hlc=Hlc.from_cbor(m["t"]),
                pending=None if m["p"] is None else PendingCommitInfo.from_cbor(m["p"]),
                held=held,
                needs_self_update=codec.boolean(m["u"], "needs_self_update"),
                removed=codec.boolean(m["x"], "removed"),
            )
