"""Conformance vectors (tests/vectors/vectors.json), checked both ways.

Another binding passes if it builds the same bytes from ``fields`` and reads the same
fields back from ``cbor``. Never regenerate the file to make a failing test pass: a
changed byte is a wire break.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from ping_web.core.cursor import WINDOW, SyncCursor
from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind, validate
from ping_web.core.hlc import Hlc
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.records import (
    ConversationMeta,
    GroupStateSnapshot,
    MemberInfo,
    decode_device_leaves,
    encode_device_leaves,
)

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "vectors.json").read_text())


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def build_envelope(f: dict[str, Any]) -> MessageEnvelope:
    return MessageEnvelope(
        f["v"],
        ConversationId(h(f["conversation_id"])),
        f["epoch"],
        MessageKind(f["kind"]),
        DeviceId(h(f["sender_device"])),
        f["seq"],
        Hlc(*f["hlc"]),
        h(f["payload"]),
        h(f["content_hash"]),
    )


def build_incoming(f: dict[str, Any]) -> IncomingMessage:
    return IncomingMessage(
        ConversationId(h(f["conversation_id"])),
        DeviceId(h(f["sender_device"])),
        UserId(h(f["sender_user"])),
        f["epoch"],
        f["seq"],
        Hlc(*f["hlc"]),
        h(f["plaintext"]),
        h(f["content_hash"]),
    )


def build_cursor(f: dict[str, Any]) -> SyncCursor:
    cursor = SyncCursor(f["epoch"], min_epoch=f["min_epoch"])
    for device, seq, hlc in f["marks"]:
        cursor.mark_seen(DeviceId(h(device)), seq, Hlc(*hlc))
    return cursor


BUILDERS: dict[str, Any] = {
    "MessageEnvelope": build_envelope,
    "IncomingMessage": build_incoming,
    "SyncCursor": build_cursor,
    "ConversationMeta": lambda f: ConversationMeta(
        ConversationId(h(f["id"])), f["name"], f["epoch"], f["member_count"], f["is_device_group"], f["created_at_ms"]
    ),
    "MemberInfo": lambda f: MemberInfo(UserId(h(f["user_id"])), f["leaf_index"], h(f["signature_key"])),
    "GroupStateSnapshot": lambda f: GroupStateSnapshot(
        ConversationId(h(f["group_id"])),
        f["openmls_storage_version"],
        f["snapshot_created_at_ms"],
        [(h(k), h(v)) for k, v in f["entries"]],
    ),
    "DeviceLeaves": lambda f: {DeviceId(h(d)): leaf for d, leaf in f.items()},
}
DECODERS: dict[str, Any] = {
    "MessageEnvelope": MessageEnvelope.decode,
    "IncomingMessage": IncomingMessage.decode,
    "SyncCursor": SyncCursor.decode,
    "ConversationMeta": ConversationMeta.decode,
    "MemberInfo": MemberInfo.decode,
    "GroupStateSnapshot": GroupStateSnapshot.decode,
    "DeviceLeaves": decode_device_leaves,
}


def encode(value: Any) -> bytes:
    return encode_device_leaves(value) if isinstance(value, dict) else value.encode()


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_fields_encode_to_the_pinned_bytes(vector: dict[str, Any]) -> None:
    assert encode(BUILDERS[vector["type"]](vector["fields"])).hex() == vector["cbor"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_pinned_bytes_decode_to_the_fields(vector: dict[str, Any]) -> None:
    assert DECODERS[vector["type"]](h(vector["cbor"])) == BUILDERS[vector["type"]](vector["fields"])


@pytest.mark.parametrize("entry", VECTORS["content_hashes"], ids=lambda e: e["input"] or "empty")
def test_content_hashes(entry: dict[str, str]) -> None:
    assert hashlib.sha256(h(entry["input"])).hexdigest() == entry["sha256"]


def test_envelope_hash_rules() -> None:
    by_name = {v["name"]: v for v in VECTORS["vectors"]}
    application = by_name["envelope_application_v2"]
    env = MessageEnvelope.decode(h(application["cbor"]))
    assert env.content_hash == hashlib.sha256(h(application["plaintext"])).digest()
    assert IncomingMessage.from_envelope(env, h(application["plaintext"])).plaintext == h(application["plaintext"])
    for name in ("envelope_commit_v1", "envelope_welcome_v1"):
        env = MessageEnvelope.decode(h(by_name[name]["cbor"]))
        validate(env)
        assert env.content_hash == hashlib.sha256(env.payload).digest()


def test_cursor_vector_state() -> None:
    (vector,) = [v for v in VECTORS["vectors"] if v["type"] == "SyncCursor"]
    fields = vector["fields"]
    cursor = SyncCursor.decode(h(vector["cbor"]))
    assert cursor.hlc == Hlc(*fields["hlc"])
    for device_hex, high in fields["highest_seq"].items():
        device = DeviceId(h(device_hex))
        assert cursor.highest_seq(device) == high
        seen = set(fields["seen_in_window"][device_hex])
        for seq in range(max(1, high - WINDOW + 1), high + 2):
            assert cursor.is_new(MessageKind.APPLICATION, fields["epoch"], device, seq) == (seq not in seen)


def test_a_version_1_cursor_still_decodes() -> None:
    (vector,) = [v for v in VECTORS["vectors"] if v["type"] == "SyncCursor"]
    assert SyncCursor.decode(h(vector["cbor_v1"])) == build_cursor(vector["fields"])


def test_a_restored_senders_incarnation_keeps_a_window_of_its_own() -> None:
    sender = DeviceId(bytes(range(16)))
    cursor = SyncCursor(0)
    cursor.mark_seen(sender, 5, Hlc(1, 0))
    restored = 5 + (1 << 32) + 1  # what a copy restored from a backup at seq 5 sends first
    cursor.mark_seen(sender, restored, Hlc(2, 0))
    # The lost copy's later messages are still new; its old ones and the restored one are not.
    assert [cursor.is_new(MessageKind.APPLICATION, 0, sender, seq) for seq in (5, 6, 7, restored)] == [
        False,
        True,
        True,
        False,
    ]
    assert cursor.highest_seq(sender) == restored
    encoded = cursor.encode()
    assert SyncCursor.decode(encoded) == cursor
    assert bytes(range(16)) + (1).to_bytes(4, "big") in encoded  # the incarnation's own key
