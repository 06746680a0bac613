"""The wire unit (MessageEnvelope) and what a received application message becomes.

An envelope wraps one TLS-serialized MLS message with the routing and ordering fields
the layers above MLS need (conversation, epoch, sender device, seq, HLC), so dedupe and
validation happen before any MLS call. Every envelope object is structurally valid:
the constructor checks types, sizes, ``seq >= 1`` and the kind/version pairing.
:func:`validate` adds the one check that needs the payload hashed (v=1).

Hash rules: application envelopes are v=2 and carry SHA-256 of the *plaintext* (checked
after decryption, when :class:`IncomingMessage` is built); every other kind is v=1 and
carries SHA-256 of the payload (checked by :func:`validate`, before MLS).

Epoch rules: an application, commit or proposal envelope carries the epoch it was made
in (for a commit, the source epoch); a welcome carries the epoch after its commit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, Final, Self

from ping_web.core import codec
from ping_web.core.hlc import Hlc
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.errors import DecodeError, InvalidInput

HASH_SIZE: Final = 32
MAX_PAYLOAD: Final = 1 << 20
"""Largest MLS message an envelope carries (1 MiB): a Welcome with the ratchet tree of a
group of a few thousand leaves fits."""
MAX_PLAINTEXT: Final = MAX_PAYLOAD
"""Largest application plaintext; its ciphertext must still fit in MAX_PAYLOAD."""
_OVERHEAD: Final = 256
"""Bytes an encoding needs beyond its payload or plaintext (keys, ids, ints, hash)."""
ENVELOPE_MAX_SIZE: Final = MAX_PAYLOAD + _OVERHEAD
INCOMING_MAX_SIZE: Final = MAX_PLAINTEXT + _OVERHEAD + 256  # + sender_user


class MessageKind(IntEnum):
    """What the payload is. The values are on the wire; never renumber them."""

    APPLICATION = 0
    COMMIT = 1
    WELCOME = 2
    PROPOSAL = 3

    @property
    def version(self) -> int:
        """The envelope version this kind is sent with (which hash rule applies)."""
        return 2 if self is MessageKind.APPLICATION else 1


def content_hash(data: bytes) -> bytes:
    """SHA-256, the content hash of a plaintext (v=2) or a payload (v=1)."""
    return hashlib.sha256(data).digest()


def _check_stamp(item: MessageEnvelope | IncomingMessage, *, epoch_lo: int, epoch_hi: int) -> None:
    """Check the fields an envelope and an incoming message share.

    Every envelope built or decoded passes here, so the usual case (exact types, values in
    range) is tested inline; anything else goes to the codec checkers for their message.
    """
    epoch, seq, digest = item.epoch, item.seq, item.content_hash
    if (
        type(item.conversation_id) is ConversationId
        and type(item.sender_device) is DeviceId
        and type(epoch) is int
        and epoch_lo <= epoch <= epoch_hi
        and type(seq) is int
        and 1 <= seq <= codec.U64_MAX
        and type(item.hlc) is Hlc
        and type(digest) is bytes
        and len(digest) == HASH_SIZE
    ):
        return
    codec.instance(item.conversation_id, ConversationId, "conversation_id")
    codec.instance(item.sender_device, DeviceId, "sender_device")
    codec.uint(item.epoch, "epoch", lo=epoch_lo, hi=epoch_hi)
    codec.uint(item.seq, "seq", lo=1)
    codec.instance(item.hlc, Hlc, "hlc")
    codec.byte_string(item.content_hash, "content_hash", size=HASH_SIZE)


def _stamp_to_cbor(item: MessageEnvelope | IncomingMessage) -> dict[str, Any]:
    return {
        "c": item.conversation_id.raw,
        "d": item.sender_device.raw,
        "e": item.epoch,
        "s": item.seq,
        "t": item.hlc.to_cbor(),
        "h": item.content_hash,
    }


def _stamp_from_cbor(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "conversation_id": ConversationId(m["c"]),
        "sender_device": DeviceId(m["d"]),
        "epoch": m["e"],
        "seq": m["s"],
        "hlc": Hlc.from_cbor(m["t"]),
        "content_hash": m["h"],
    }


_ENVELOPE_KEYS: Final = frozenset({"v", "c", "e", "k", "d", "s", "t", "p", "h"})
_KIND_MAX: Final = max(MessageKind)


@dataclass(frozen=True, slots=True)
class MessageEnvelope:
    """One MLS message on the wire, with what is needed to route and dedupe it."""

    v: int
    conversation_id: ConversationId
    epoch: int
    kind: MessageKind
    sender_device: DeviceId
    seq: int
    hlc: Hlc
    payload: bytes = field(repr=False)
    content_hash: bytes
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)
    """The encoding, once made or read (the fields are frozen, so it cannot go stale)."""

    def __post_init__(self) -> None:
        codec.uint(self.v, "v")
        codec.instance(self.kind, MessageKind, "kind")
        if self.v != self.kind.version:
            raise InvalidInput(f"a {self.kind.name} envelope is v={self.kind.version}, not v={self.v!r}")
        # A welcome follows a commit, so its epoch is at least 1; a commit's epoch + 1 must fit.
        _check_stamp(
            self,
            epoch_lo=1 if self.kind is MessageKind.WELCOME else 0,
            epoch_hi=codec.U64_MAX - 1 if self.kind is MessageKind.COMMIT else codec.U64_MAX,
        )
        codec.byte_string(self.payload, "payload", lo=1, hi=MAX_PAYLOAD)

    @classmethod
    def application(
        cls, conversation_id: ConversationId, epoch: int, sender_device: DeviceId, seq: int, hlc: Hlc,
        payload: bytes, plaintext: bytes,
    ) -> Self:  # fmt: skip
        """A v=2 application envelope; ``content_hash`` is SHA-256 of ``plaintext``."""
        codec.byte_string(plaintext, "plaintext", hi=MAX_PLAINTEXT)
        digest = content_hash(plaintext)
        return cls(2, conversation_id, epoch, MessageKind.APPLICATION, sender_device, seq, hlc, payload, digest)

    @classmethod
    def handshake(
        cls,
        kind: MessageKind,
        conversation_id: ConversationId,
        epoch: int,
        sender_device: DeviceId,
        seq: int,
        hlc: Hlc,
        payload: bytes,
    ) -> Self:
        """A v=1 commit, welcome or proposal envelope; ``content_hash`` is SHA-256 of ``payload``."""
        if kind is MessageKind.APPLICATION:
            raise InvalidInput("application envelopes are built with MessageEnvelope.application")
        codec.byte_string(payload, "payload", lo=1, hi=MAX_PAYLOAD)
        return cls(1, conversation_id, epoch, kind, sender_device, seq, hlc, payload, content_hash(payload))

    def encode(self) -> bytes:
        """The wire bytes. Computed once: an envelope sent is encoded for the outbox and
        again for the delivery service, and one decoded is its own input."""
        wire = self._wire
        if wire is None:
            wire = codec.encode({"v": self.v, "k": int(self.kind), "p": self.payload, **_stamp_to_cbor(self)})
            object.__setattr__(self, "_wire", wire)
        return wire

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and :func:`validate` untrusted bytes; :class:`DecodeError` on any problem."""
        with codec.record(
            data, "MessageEnvelope", keys=_ENVELOPE_KEYS, versions=(1, 2), max_size=ENVELOPE_MAX_SIZE
        ) as m:
            kind = MessageKind(codec.uint(m["k"], "kind", hi=_KIND_MAX))
            envelope = cls(v=m["v"], kind=kind, payload=m["p"], **_stamp_from_cbor(m))
            validate(envelope)
        # Canonical input (codec.decode checked it) is exactly what encode() would write.
        object.__setattr__(envelope, "_wire", bytes(data))
        return envelope


def validate(envelope: MessageEnvelope) -> None:
    """The wire check to run on every received envelope before any MLS call.

    Structure, sizes, seq and the kind/version pairing hold for every envelope object
    (the constructor checks them); this adds the v=1 rule that ``content_hash`` is
    SHA-256 of the payload. :meth:`MessageEnvelope.decode` calls it.
    """
    if envelope.v == 1 and content_hash(envelope.payload) != envelope.content_hash:
        raise DecodeError("MessageEnvelope: content_hash is not SHA-256 of the payload")


_INCOMING_KEYS: Final = frozenset({"v", "c", "d", "u", "e", "s", "t", "p", "h"})


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A decrypted application message, as reported to the app and kept in history.

    ``content_hash`` is always SHA-256 of ``plaintext``: building one from an envelope
    is the v=2 hash check, and a stored one that fails it was corrupted.
    """

    VERSION: ClassVar[int] = 1

    conversation_id: ConversationId
    sender_device: DeviceId
    sender_user: UserId | None
    epoch: int
    seq: int
    hlc: Hlc
    plaintext: bytes = field(repr=False)
    content_hash: bytes

    def __post_init__(self) -> None:
        _check_stamp(self, epoch_lo=0, epoch_hi=codec.U64_MAX)
        if self.sender_user is not None:
            codec.instance(self.sender_user, UserId, "sender_user")
        codec.byte_string(self.plaintext, "plaintext", hi=MAX_PLAINTEXT)
        if content_hash(self.plaintext) != self.content_hash:
            raise InvalidInput("content_hash is not SHA-256 of the plaintext; the message was altered")

    @classmethod
    def from_envelope(cls, envelope: MessageEnvelope, plaintext: bytes, sender_user: UserId | None = None) -> Self:
        """What ``envelope`` decrypted to; :class:`InvalidInput` if its content hash disagrees."""
        if envelope.kind is not MessageKind.APPLICATION:
            raise InvalidInput(f"a {envelope.kind.name} envelope carries no application message")
        return cls(
            envelope.conversation_id,
            envelope.sender_device,
            sender_user,
            envelope.epoch,
            envelope.seq,
            envelope.hlc,
            plaintext,
            envelope.content_hash,
        )

    def encode(self) -> bytes:
        user = None if self.sender_user is None else self.sender_user.raw
        return codec.encode({"v": self.VERSION, "u": user, "p": self.plaintext, **_stamp_to_cbor(self)})

    @classmethod
    def decode(cls, data: bytes) -> Self:
        with codec.record(
            data, "IncomingMessage", keys=_INCOMING_KEYS, versions=(cls.VERSION,), max_size=INCOMING_MAX_SIZE
        ) as m:
            user = None if m["u"] is None else UserId(m["u"])
            return cls(sender_user=user, plaintext=m["p"], **_stamp_from_cbor(m))
