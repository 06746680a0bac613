from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import conversation_ids, device_ids, u32, u64, user_ids

from ping_web.core.envelope import MessageEnvelope, MessageKind
from ping_web.core.hlc import Hlc
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.records import (
    GROUP_SNAPSHOT_HARD_CAP,
    AddOutcome,
    ConversationMeta,
    GroupStateSnapshot,
    MemberInfo,
    decode_device_leaves,
    encode_device_leaves,
)
from ping_web.errors import DecodeError, InvalidInput

CID = ConversationId(bytes(range(16)))
DEV = DeviceId(bytes(range(16, 32)))
T = Hlc(5, 0)


@given(
    st.builds(
        ConversationMeta,
        conversation_ids,
        st.none() | st.text(max_size=60),
        u64,
        st.integers(1, 2**32 - 1),
        st.booleans(),
        u64,
    )
)
def test_meta_round_trip(meta: ConversationMeta) -> None:
    assert ConversationMeta.decode(meta.encode()) == meta


@pytest.mark.parametrize(
    "args",
    [
        (DEV, None, 0, 1, False, 0),  # a DeviceId is not a ConversationId
        (CID, "x" * 257, 0, 1, False, 0),
        (CID, None, 0, 0, False, 0),
        (CID, None, 0, 1, 1, 0),
        (CID, None, -1, 1, False, 0),
    ],
)
def test_meta_rejects(args: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidInput):
        ConversationMeta(*args)


@given(st.builds(MemberInfo, user_ids, u32, st.binary(min_size=1, max_size=256)))
def test_member_round_trip(member: MemberInfo) -> None:
    assert MemberInfo.decode(member.encode()) == member


def test_member_rejects() -> None:
    with pytest.raises(InvalidInput):
        MemberInfo(UserId(b"u"), 2**32, b"k")
    with pytest.raises(InvalidInput):
        MemberInfo(UserId(b"u"), 0, b"")


def add_outcome(**welcome_changes: Any) -> AddOutcome:
    commit = MessageEnvelope.handshake(MessageKind.COMMIT, CID, 3, DEV, 7, T, b"commit")
    fields = {"conversation_id": CID, "epoch": 4, "seq": 7} | welcome_changes
    welcome = MessageEnvelope.handshake(
        MessageKind.WELCOME, fields["conversation_id"], fields["epoch"], DEV, fields["seq"], T, b"welcome"
    )
    return AddOutcome(commit, welcome)


def test_add_outcome_round_trip_and_pairing() -> None:
    outcome = add_outcome()
    assert AddOutcome.decode(outcome.encode()) == outcome
    for bad in ({"epoch": 3}, {"seq": 8}, {"conversation_id": ConversationId(bytes(16))}):
        with pytest.raises(InvalidInput):
            add_outcome(**bad)
    with pytest.raises(InvalidInput):
        AddOutcome(outcome.welcome, outcome.commit)


def test_add_outcome_decode_checks_the_inner_envelopes() -> None:
    fields = cbor2.loads(add_outcome().encode()) | {"w": b"\x00"}
    with pytest.raises(DecodeError, match="AddOutcome: MessageEnvelope"):
        AddOutcome.decode(cbor2.dumps(fields, canonical=True))


entries = st.dictionaries(st.binary(min_size=1, max_size=40), st.binary(max_size=40), max_size=10)


@given(conversation_ids, st.integers(0, 65535), u64, entries)
def test_snapshot_round_trip_sorted(group: ConversationId, version: int, at: int, kv: dict[bytes, bytes]) -> None:
    snap = GroupStateSnapshot(group, version, at, list(reversed(kv.items())))
    assert snap.entries == tuple(sorted(kv.items()))
    assert GroupStateSnapshot.decode(snap.encode()) == snap
    assert GroupStateSnapshot.VERSION == 1


def test_snapshot_rejects_duplicates_and_bad_entries() -> None:
    with pytest.raises(InvalidInput, match="twice"):
        GroupStateSnapshot(CID, 1, 0, [(b"k", b"1"), (b"k", b"2")])
    for bad in ([(b"", b"v")], [(b"k",)], [("k", b"v")], {b"k": b"v"}):
        with pytest.raises(InvalidInput):
            GroupStateSnapshot(CID, 1, 0, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        GroupStateSnapshot(CID, 65536, 0, [])


def test_snapshot_hard_cap() -> None:
    big = GroupStateSnapshot(CID, 1, 0, [(b"k", b"x" * GROUP_SNAPSHOT_HARD_CAP)])
    with pytest.raises(InvalidInput, match="cap"):
        big.encode()
    fits = GroupStateSnapshot(CID, 1, 0, [(b"k", b"x" * (GROUP_SNAPSHOT_HARD_CAP - 100))])
    assert GroupStateSnapshot.decode(fits.encode()) == fits
    with pytest.raises(DecodeError, match="limit"):
        GroupStateSnapshot.decode(b"\x00" * (GROUP_SNAPSHOT_HARD_CAP + 1))


@given(st.dictionaries(device_ids, u32, max_size=10).filter(lambda d: len(set(d.values())) == len(d)))
def test_device_leaves_round_trip(leaves: dict[DeviceId, int]) -> None:
    assert decode_device_leaves(encode_device_leaves(leaves)) == leaves


def test_device_leaves_reject_shared_leaf_and_bad_types() -> None:
    other = DeviceId(bytes(16))
    with pytest.raises(InvalidInput, match="claimed by both"):
        encode_device_leaves({DEV: 1, other: 1})
    with pytest.raises(InvalidInput):
        encode_device_leaves({bytes(16): 1})  # type: ignore[dict-item]
    forged = cbor2.dumps({"v": 1, "l": {DEV.raw: 1, other.raw: 1}}, canonical=True)
    with pytest.raises(DecodeError):
        decode_device_leaves(forged)
