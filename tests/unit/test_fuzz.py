"""Every decoder, fed garbage or mutated valid bytes, returns a value or raises DecodeError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import cbor_values

from ping_web.core.cursor import SyncCursor
from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind
from ping_web.core.hlc import Hlc
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.records import (
    AddOutcome,
    ConversationMeta,
    GroupStateSnapshot,
    MemberInfo,
    decode_device_leaves,
    encode_device_leaves,
)
from ping_web.errors import DecodeError

CID = ConversationId(bytes(range(16)))
DEV = DeviceId(bytes(range(16, 32)))
T = Hlc(1_700_000_000_000, 3)
APP = MessageEnvelope.application(CID, 2, DEV, 5, T, b"ciphertext", b"hello")
COMMIT = MessageEnvelope.handshake(MessageKind.COMMIT, CID, 2, DEV, 6, T, b"commit")
WELCOME = MessageEnvelope.handshake(MessageKind.WELCOME, CID, 3, DEV, 6, T, b"welcome")


def cursor() -> SyncCursor:
    c = SyncCursor(3, min_epoch=1)
    for seq in (1, 2, 5, 40):
        c.advance(MessageKind.APPLICATION, 3, DEV, seq, T)
    return c


CASES: list[tuple[Callable[[bytes], Any], bytes]] = [
    (MessageEnvelope.decode, APP.encode()),
    (MessageEnvelope.decode, COMMIT.encode()),
    (IncomingMessage.decode, IncomingMessage.from_envelope(APP, b"hello", UserId(b"u")).encode()),
    (SyncCursor.decode, cursor().encode()),
    (ConversationMeta.decode, ConversationMeta(CID, "chat", 3, 2, False, 1).encode()),
    (MemberInfo.decode, MemberInfo(UserId(b"u"), 1, b"k" * 32).encode()),
    (AddOutcome.decode, AddOutcome(COMMIT, WELCOME).encode()),
    (GroupStateSnapshot.decode, GroupStateSnapshot(CID, 1, 9, [(b"a", b"1"), (b"b", b"")]).encode()),
    (decode_device_leaves, encode_device_leaves({DEV: 0, DeviceId(bytes(16)): 3})),
]
IDS = [f"{decode.__qualname__}-{i}" for i, (decode, _) in enumerate(CASES)]


def mutate(data: bytes, draw: st.DataObject) -> bytes:
    at = draw.draw(st.integers(0, len(data)))
    kind = draw.draw(st.sampled_from(["flip", "truncate", "extend", "splice", "replace"]))
    if kind == "flip" and at < len(data):
        return data[:at] + bytes([data[at] ^ (1 << draw.draw(st.integers(0, 7)))]) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    if kind == "extend":
        return data + draw.draw(st.binary(min_size=1, max_size=8))
    cut = draw.draw(st.integers(0, 8)) if kind == "splice" else 1
    return data[:at] + draw.draw(st.binary(max_size=8)) + data[at + cut :]


def decodes_canonically_or_fails(decode: Callable[[bytes], Any], data: bytes) -> None:
    try:
        value = decode(data)
    except DecodeError:
        return
    encode = encode_device_leaves if decode is decode_device_leaves else type(value).encode
    assert encode(value) == data  # only bytes that are exactly a valid encoding may decode


@pytest.mark.parametrize(("decode", "valid"), CASES, ids=IDS)
@given(data=st.data())
@settings(max_examples=150)
def test_mutations(decode: Callable[[bytes], Any], valid: bytes, data: st.DataObject) -> None:
    decode(valid)
    decodes_canonically_or_fails(decode, mutate(valid, data))


@pytest.mark.parametrize(("decode", "valid"), CASES, ids=IDS)
@given(garbage=st.binary(max_size=200))
@settings(max_examples=100)
def test_garbage(decode: Callable[[bytes], Any], valid: bytes, garbage: bytes) -> None:
    decodes_canonically_or_fails(decode, garbage)


@pytest.mark.parametrize(("decode", "valid"), CASES, ids=IDS)
@given(data=st.data(), value=cbor_values)
@settings(max_examples=150)
def test_any_value_in_any_field(decode: Callable[[bytes], Any], valid: bytes, data: st.DataObject, value: Any) -> None:
    fields = cbor2.loads(valid)
    key = data.draw(st.sampled_from(sorted(fields)))
    decodes_canonically_or_fails(decode, cbor2.dumps(fields | {key: value}, canonical=True))
