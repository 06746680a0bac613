"""History for a new device: a bundle of stored messages, sent by another device of the same user.

MLS gives a new leaf nothing of what was said before it joined. A device of the user that has
the history sends it, opt-in, to the new device through the user's device group (MLS-encrypted,
so the relay reads none of it), in chunks of at most :data:`MAX_CHUNK_BYTES`, each an
application message of that group whose plaintext is :data:`MAGIC` followed by a CBOR record
(:class:`HistoryChunk`). Each chunk stands alone (its messages keep their own history keys), so
a bundle interrupted half-way is resumed by sending it again: what arrived twice is stored once.
The receiving client takes a chunk only from an active device of its own user's verified log
and only if it is addressed to it. Pure: no I/O.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, Self

from ping_web.core import codec
from ping_web.core.envelope import INCOMING_MAX_SIZE
from ping_web.core.ids import ConversationId, DeviceId
from ping_web.errors import DecodeError

MAGIC: Final = b"\x00ping-web/history\x00"
"""How a history chunk's plaintext starts (no text a person types starts with NUL)."""
MAX_CHUNK_BYTES: Final = 512 * 1024
MAX_BUNDLE_MESSAGES: Final = 100_000
_KEYS: Final = frozenset({"v", "b", "i", "n", "t", "c", "m"})


@dataclass(frozen=True, slots=True)
class HistoryChunk:
    """Part ``index`` of ``total`` of history bundle ``bundle_id`` for device ``to``: stored
    messages (encoded ``IncomingMessage``\\ s) of one conversation."""

    bundle_id: bytes
    index: int
    total: int
    to: DeviceId
    conversation_id: ConversationId
    messages: tuple[bytes, ...]

    def encode(self) -> bytes:
        return MAGIC + codec.encode({
            "v": 1, "b": self.bundle_id, "i": self.index, "n": self.total, "t": self.to.raw,
            "c": self.conversation_id.raw, "m": list(self.messages),
        })  # fmt: skip

    @classmethod
    def parse(cls, plaintext: bytes) -> Self | None:
        """The chunk a plaintext carries; ``None`` for any other message; :class:`DecodeError`
        for a malformed chunk."""
        if not plaintext.startswith(MAGIC):
            return None
        with codec.record(plaintext[len(MAGIC) :], "HistoryChunk", keys=_KEYS, versions=(1,),
                          max_size=MAX_CHUNK_BYTES + 4096) as m:  # fmt: skip
            total = codec.uint(m["n"], "total", lo=1, hi=MAX_BUNDLE_MESSAGES)
            chunk = cls(
                codec.byte_string(m["b"], "bundle_id", size=16), codec.uint(m["i"], "index", hi=total - 1), total,
                DeviceId(m["t"]), ConversationId(m["c"]),
                tuple(codec.byte_string(x, "message", lo=1, hi=INCOMING_MAX_SIZE) for x in codec.items(m["m"], "m")),
            )  # fmt: skip
        return chunk


def chunks(to: DeviceId, parts: list[tuple[ConversationId, list[bytes]]]) -> list[HistoryChunk]:
    """One bundle for ``to``: per conversation its encoded messages, cut into chunks of at
    most :data:`MAX_CHUNK_BYTES` (a message larger than that goes alone)."""
    bundle_id = os.urandom(16)
    pieces: list[tuple[ConversationId, tuple[bytes, ...]]] = []
    for conversation_id, messages in parts:
        current: list[bytes] = []
        size = 0
        for message in messages:
            if current and size + len(message) > MAX_CHUNK_BYTES:
                pieces.append((conversation_id, tuple(current)))
                current, size = [], 0
            current.append(message)
            size += len(message) + 8
        if current:
            pieces.append((conversation_id, tuple(current)))
    if len(pieces) > MAX_BUNDLE_MESSAGES:
        raise DecodeError("a history bundle of more chunks than it may have")
    return [HistoryChunk(bundle_id, i, len(pieces), to, c, m) for i, (c, m) in enumerate(pieces)]
