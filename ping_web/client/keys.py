"""The storage key layout: the only module that spells a storage namespace or key.

Every record the client keeps lives under one of these keys (``docs/storage.md`` has the
table). Integers are big-endian and fixed-width, so bytewise key order is numeric order: a
conversation's history scans in clock order, its outbox in seq order, and everything of
one conversation is a prefix scan on its id.
"""

from __future__ import annotations

import struct
from typing import Final

from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, UserId

DEVICE: Final = "device"
"""The device's identity record."""
MLS: Final = "mls"
"""OpenMLS working-set entries, under the keys the wasm module gives them."""
CONVERSATIONS: Final = "conversations"
"""Per-conversation records, and the envelopes each holds for a future epoch."""
HISTORY: Final = "history"
"""Decrypted messages, received and own."""
OUTBOX: Final = "outbox"
"""Envelopes stored but not yet handed to the delivery service."""
REQUESTS: Final = "requests"
"""Results of exactly-once requests, by request id, and their order (for pruning)."""

DEVICE_RECORD: Final = b"identity"
LOG_PUBLISHED: Final = b"log-published"
"""Present once the delivery service took the genesis entry this device made."""
LINK_PENDING: Final = b"link-pending"
"""Present while a device made to be linked waits to be added to its user's device log."""
DEVICE_LOG_PREFIX: Final = b"log/"
"""A user's device log as this device verified and pinned it (``DEVICE``): ``"log/" || user id``."""
GLOBAL_MLS_PREFIX: Final = b"\x02"
"""Working-set entries not scoped to a group (signature keys, KeyPackages): loaded at open."""
SIGNATURE_KEY_PREFIX: Final = b"\x02SignatureKeyPair\x00"
"""The device's signing key pair among the global entries (what a backup carries)."""

RECORD_NAMES: Final = ("meta", "cursor", "leaves", "state")
"""The records every conversation has: ``<conversation id> / <name>``."""
LOG_POSITION: Final = "log-position"
"""The record of how far this device has read the conversation's log at its delivery service
(``<conversation id> / log-position``; absent until the first fetch that returned anything)."""
_HELD: Final = b"/held/"
_HELD_SUFFIX: Final = struct.Struct(">Q16sQ")  # epoch, sender device, seq
_HISTORY: Final = struct.Struct(">16sQI16sQ")  # conversation, hlc wall, hlc counter, sender, seq
_OUTBOX: Final = struct.Struct(">16sQB")  # conversation, seq, kind
_REQUEST: Final = b"r"
REQUEST_ORDER_PREFIX: Final = b"n"
"""The order index of recorded requests: ``"n" || order (u64 BE)`` -> request id."""
_REQUEST_ORDER: Final = struct.Struct(">Q")
REQUEST_COMMIT_PREFIX: Final = b"c"
"""Which request made an own commit: ``"c" || conversation id || seq (u64 BE)`` -> request id || method."""
_REQUEST_COMMIT: Final = struct.Struct(">16sQ")


def device_log_key(user_id: UserId) -> bytes:
    """Where a user's pinned device log is kept (``DEVICE``), this device's own user included."""
    return DEVICE_LOG_PREFIX + user_id.raw


def conversation_prefix(conversation_id: ConversationId) -> bytes:
    """Every record of one conversation (``CONVERSATIONS``), held envelopes included."""
    return conversation_id.raw + b"/"


def record_key(conversation_id: ConversationId, name: str) -> bytes:
    return conversation_id.raw + b"/" + name.encode()


def log_position_key(conversation_id: ConversationId) -> bytes:
    """Where a conversation's delivery-service log position is kept (``CONVERSATIONS``)."""
    return record_key(conversation_id, LOG_POSITION)


def is_record_key(key: bytes, name: str) -> bool:
    """Whether ``key`` is the ``name`` record of some conversation."""
    return len(key) == 17 + len(name) and key[16:] == b"/" + name.encode()


def held_prefix(conversation_id: ConversationId) -> bytes:
    return conversation_id.raw + _HELD


def held_key(envelope: MessageEnvelope) -> bytes:
    """One held envelope: ordered by epoch, then sender and seq."""
    return (
        envelope.conversation_id.raw
        + _HELD
        + _HELD_SUFFIX.pack(envelope.epoch, envelope.sender_device.raw, envelope.seq)
    )


def history_prefix(conversation_id: ConversationId) -> bytes:
    return conversation_id.raw


def history_key(message: IncomingMessage | MessageEnvelope) -> bytes:
    """History is ordered by HLC, then sender and seq: the order a reader expects. (A sent
    envelope names its own message's key: they share these fields.)"""
    return _HISTORY.pack(
        message.conversation_id.raw, message.hlc.wall_ms, message.hlc.counter, message.sender_device.raw, message.seq
    )


def outbox_key(conversation_id: ConversationId, seq: int, kind: MessageKind) -> bytes:
    return _OUTBOX.pack(conversation_id.raw, seq, int(kind))


def outbox_key_of(envelope: MessageEnvelope) -> bytes:
    return outbox_key(envelope.conversation_id, envelope.seq, envelope.kind)


def outbox_kind(key: bytes) -> MessageKind:
    """The kind of envelope an outbox key holds (a Welcome entry is a different record)."""
    return MessageKind(_OUTBOX.unpack(key)[2])


def request_key(request_id: bytes) -> bytes:
    """The recorded result of one request (``REQUESTS``)."""
    return _REQUEST + request_id


def request_order_key(order: int) -> bytes:
    """One entry of the order index: oldest first, so pruning deletes from the front."""
    return REQUEST_ORDER_PREFIX + _REQUEST_ORDER.pack(order)


def request_commit_key(conversation_id: ConversationId, seq: int) -> bytes:
    """The request that made this device's commit ``seq`` in a conversation."""
    return REQUEST_COMMIT_PREFIX + _REQUEST_COMMIT.pack(conversation_id.raw, seq)


def request_order(key: bytes) -> int:
    """The order number an order-index key holds."""
    (order,) = _REQUEST_ORDER.unpack(key[len(REQUEST_ORDER_PREFIX) :])
    return int(order)
