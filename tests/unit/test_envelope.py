from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import envelopes, user_ids

from ping_web.core import codec
from ping_web.core.envelope import (
    ENVELOPE_MAX_SIZE,
    MAX_PAYLOAD,
    MAX_PLAINTEXT,
    IncomingMessage,
    MessageEnvelope,
    MessageKind,
    content_hash,
    validate,
)
from ping_web.core.hlc import Hlc
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.errors import DecodeError, InvalidInput

CID = ConversationId(bytes(range(16)))
DEV = DeviceId(bytes(range(16, 32)))
T = Hlc(1_700_000_000_000, 1)


def app(**changes: Any) -> MessageEnvelope:
    env = MessageEnvelope.application(CID, 4, DEV, 9, T, b"ciphertext", b"hi")
    return dataclasses.replace(env, **changes)


def commit(**changes: Any) -> MessageEnvelope:
    env = MessageEnvelope.handshake(MessageKind.COMMIT, CID, 4, DEV, 10, T, b"commit")
    return dataclasses.replace(env, **changes)


def test_kind_values_and_versions_are_fixed() -> None:
    assert [(k.name, int(k), k.version) for k in MessageKind] == [
        ("APPLICATION", 0, 2),
        ("COMMIT", 1, 1),
        ("WELCOME", 2, 1),
        ("PROPOSAL", 3, 1),
    ]


def test_constructors_apply_the_hash_rules() -> None:
    assert app().v == 2 and app().content_hash == hashlib.sha256(b"hi").digest()
    assert commit().v == 1 and commit().content_hash == hashlib.sha256(b"commit").digest()
    with pytest.raises(InvalidInput):
        MessageEnvelope.handshake(MessageKind.APPLICATION, CID, 4, DEV, 1, T, b"x")
    with pytest.raises(InvalidInput):
        MessageEnvelope.application(CID, 4, DEV, 1, T, b"x", "text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: app(seq=0),
        lambda: app(v=1),
        lambda: commit(v=2),
        lambda: app(v=True),
        lambda: app(payload=b""),
        lambda: app(payload=b"x" * (MAX_PAYLOAD + 1)),
        lambda: app(content_hash=b"\x00" * 31),
        lambda: app(epoch=-1),
        lambda: app(kind=0),
        lambda: app(conversation_id=DEV),
        lambda: app(sender_device=bytes(16)),
        lambda: app(hlc=(1, 2)),
        lambda: commit(epoch=codec.U64_MAX),
        lambda: MessageEnvelope.handshake(MessageKind.WELCOME, CID, 0, DEV, 1, T, b"w"),
    ],
)
def test_constructor_rejects_invalid(make: Any) -> None:
    with pytest.raises(InvalidInput):
        make()


def test_limits_are_inclusive() -> None:
    big = app(payload=b"x" * MAX_PAYLOAD)
    assert len(big.encode()) <= ENVELOPE_MAX_SIZE
    assert MessageEnvelope.decode(big.encode()) == big
    assert commit(epoch=codec.U64_MAX - 1).epoch == codec.U64_MAX - 1


@given(envelopes())
def test_round_trip(env: MessageEnvelope) -> None:
    data = env.encode()
    assert MessageEnvelope.decode(data) == env
    assert MessageEnvelope.decode(data).encode() == data


def test_validate_checks_the_v1_payload_hash() -> None:
    forged = commit(content_hash=content_hash(b"something else"))
    with pytest.raises(DecodeError, match="SHA-256 of the payload"):
        validate(forged)
    with pytest.raises(DecodeError):
        MessageEnvelope.decode(forged.encode())
    validate(commit())
    validate(app(content_hash=b"\x00" * 32))  # v=2: checked after decryption instead


def fields_of(env: MessageEnvelope) -> dict[str, Any]:
    value: dict[str, Any] = cbor2.loads(env.encode())
    return value


WRONG_VALUES = [None, True, -1, 0, 2**64 - 1, b"", b"x" * 16, "text", [], [1, 2], {}, {"a": 1}]


@pytest.mark.parametrize("key", sorted(fields_of(app())))
@pytest.mark.parametrize("wrong", WRONG_VALUES, ids=repr)
def test_each_field_with_a_wrong_value_fails_cleanly(key: str, wrong: Any) -> None:
    for env in (app(), commit()):
        fields = fields_of(env) | {key: wrong}
        data = cbor2.dumps(fields, canonical=True)
        try:
            decoded = MessageEnvelope.decode(data)
        except DecodeError:
            continue
        assert decoded.encode() == data  # only a still-valid envelope may come back


def test_missing_and_extra_keys() -> None:
    fields = fields_of(app())
    del fields["s"]
    with pytest.raises(DecodeError):
        MessageEnvelope.decode(cbor2.dumps(fields, canonical=True))
    with pytest.raises(DecodeError):
        MessageEnvelope.decode(cbor2.dumps(fields_of(app()) | {"x": 1}, canonical=True))


def test_oversized_input_is_rejected_before_parsing() -> None:
    fields = fields_of(app()) | {"p": b"x" * (MAX_PAYLOAD + 1)}
    with pytest.raises(DecodeError):
        MessageEnvelope.decode(cbor2.dumps(fields, canonical=True))
    with pytest.raises(DecodeError, match="limit"):
        MessageEnvelope.decode(b"\x00" * (ENVELOPE_MAX_SIZE + 1))


# -- IncomingMessage ---------------------------------------------------------------------


def test_incoming_from_envelope_checks_the_plaintext_hash() -> None:
    incoming = IncomingMessage.from_envelope(app(), b"hi", UserId(b"alice"))
    assert (incoming.conversation_id, incoming.sender_device, incoming.epoch, incoming.seq, incoming.hlc) == (
        CID,
        DEV,
        4,
        9,
        T,
    )
    assert incoming.plaintext == b"hi" and incoming.content_hash == app().content_hash
    with pytest.raises(InvalidInput, match="altered"):
        IncomingMessage.from_envelope(app(), b"hi!")
    with pytest.raises(InvalidInput):
        IncomingMessage.from_envelope(commit(), b"commit")


@given(envelopes().filter(lambda e: e.kind is MessageKind.APPLICATION), st.none() | user_ids, st.binary(max_size=64))
def test_incoming_round_trip(env: MessageEnvelope, user: UserId | None, plaintext: bytes) -> None:
    env = dataclasses.replace(env, content_hash=content_hash(plaintext))
    incoming = IncomingMessage.from_envelope(env, plaintext, user)
    assert IncomingMessage.decode(incoming.encode()) == incoming


def test_incoming_decode_rejects_a_tampered_plaintext() -> None:
    fields = cbor2.loads(IncomingMessage.from_envelope(app(), b"hi").encode()) | {"p": b"ho"}
    with pytest.raises(DecodeError, match="altered"):
        IncomingMessage.decode(cbor2.dumps(fields, canonical=True))


def test_incoming_limits_are_inclusive() -> None:
    plaintext = b"x" * MAX_PLAINTEXT
    env = dataclasses.replace(app(), content_hash=content_hash(plaintext))
    incoming = IncomingMessage.from_envelope(env, plaintext, UserId(b"u" * 255))
    assert IncomingMessage.decode(incoming.encode()) == incoming
