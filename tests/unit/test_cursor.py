from __future__ import annotations

import random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import device_ids, hlcs

from ping_web.core import codec
from ping_web.core.cursor import WINDOW, SyncCursor
from ping_web.core.envelope import MessageKind
from ping_web.core.hlc import Hlc
from ping_web.core.ids import DeviceId
from ping_web.errors import DecodeError, InvalidInput

APP, COMMIT, WELCOME, PROPOSAL = MessageKind.APPLICATION, MessageKind.COMMIT, MessageKind.WELCOME, MessageKind.PROPOSAL
ALICE = DeviceId(b"\xaa" * 16)
BOB = DeviceId(b"\xbb" * 16)
T = Hlc(1000, 0)


def deliver(cursor: SyncCursor, kind: MessageKind, epoch: int, device: DeviceId, seq: int) -> bool:
    """What a conversation does: check, then (pretend to) apply and advance."""
    if not cursor.is_new(kind, epoch, device, seq):
        return False
    cursor.advance(kind, epoch, device, seq, T)
    return True


@given(st.permutations(range(1, WINDOW + 1)), st.randoms())
@settings(max_examples=50)
def test_out_of_order_within_window_is_delivered_exactly_once(order: list[int], rnd: random.Random) -> None:
    cursor = SyncCursor()
    stream = order + [rnd.randint(1, WINDOW) for _ in range(100)]  # then replays
    delivered = [seq for seq in stream if deliver(cursor, APP, 0, ALICE, seq)]
    assert sorted(delivered) == list(range(1, WINDOW + 1))
    assert cursor.highest_seq(ALICE) == WINDOW


def test_replays_are_rejected_per_device() -> None:
    cursor = SyncCursor()
    assert deliver(cursor, APP, 0, ALICE, 1)
    assert not deliver(cursor, APP, 0, ALICE, 1)
    assert deliver(cursor, APP, 0, BOB, 1)
    assert not cursor.is_new(APP, 0, BOB, 1)


def test_below_the_window_counts_as_seen() -> None:
    cursor = SyncCursor()
    deliver(cursor, APP, 0, ALICE, WINDOW + 10)
    assert cursor.is_new(APP, 0, ALICE, 11)  # gap WINDOW - 1: still tracked
    assert not cursor.is_new(APP, 0, ALICE, 10)  # gap WINDOW: fell out of the window
    assert not cursor.is_new(APP, 0, ALICE, 1)


def test_huge_seq_jump_is_cheap_and_correct() -> None:
    cursor = SyncCursor()
    deliver(cursor, APP, 0, ALICE, 3)
    deliver(cursor, APP, 0, ALICE, 2**63)
    assert not cursor.is_new(APP, 0, ALICE, 3)
    assert cursor.is_new(APP, 0, ALICE, 2**63 - 1)
    assert SyncCursor.decode(cursor.encode()) == cursor


def test_late_previous_epoch_application_is_delivered() -> None:
    cursor = SyncCursor(3)
    deliver(cursor, APP, 3, ALICE, 1)
    assert deliver(cursor, COMMIT, 3, BOB, 1)
    assert cursor.epoch == 4
    assert deliver(cursor, APP, 3, ALICE, 2)  # sent in epoch 3, arrives after the commit
    assert not deliver(cursor, APP, 3, ALICE, 2)


def test_old_commit_and_proposal_are_rejected() -> None:
    cursor = SyncCursor(5)
    assert not cursor.is_new(COMMIT, 4, BOB, 7)
    assert not cursor.is_new(PROPOSAL, 4, BOB, 7)
    assert cursor.is_new(COMMIT, 5, BOB, 7)
    assert cursor.is_new(PROPOSAL, 5, BOB, 7)
    assert cursor.is_new(COMMIT, 6, BOB, 7)  # future: still to apply (the caller buffers it)
    cursor.advance(COMMIT, 5, BOB, 7, T)
    assert cursor.epoch == 6
    assert not cursor.is_new(COMMIT, 5, BOB, 8)  # a competing commit for epoch 5 lost


def test_welcome_only_for_a_later_epoch() -> None:
    cursor = SyncCursor(2)
    assert not cursor.is_new(WELCOME, 2, BOB, 1)
    assert cursor.is_new(WELCOME, 3, BOB, 1)
    cursor.advance(WELCOME, 3, BOB, 1, T)
    assert cursor.epoch == 3


def test_joiner_skips_the_commit_that_added_it_and_older_traffic() -> None:
    cursor = SyncCursor(5)  # joined at epoch 5: min_epoch 5
    cursor.advance(WELCOME, 5, BOB, 9, T)  # the welcome shares seq 9 with its commit
    assert not cursor.is_new(COMMIT, 4, BOB, 9)
    assert not cursor.is_new(APP, 4, BOB, 8)  # encrypted before this device was a member
    assert not cursor.is_new(APP, 4, ALICE, 1)
    assert cursor.is_new(APP, 5, BOB, 10)
    assert cursor.is_new(APP, 5, ALICE, 1)


def test_epoch_never_goes_back() -> None:
    cursor = SyncCursor(7)
    cursor.advance(COMMIT, 2, ALICE, 1, T)
    cursor.advance(WELCOME, 3, ALICE, 2, T)
    assert cursor.epoch == 7


def test_mark_seen_keeps_epoch_and_tracks_highest_hlc() -> None:
    cursor = SyncCursor()
    cursor.mark_seen(ALICE, 1, Hlc(50, 1))
    cursor.mark_seen(ALICE, 2, Hlc(40, 0))
    assert cursor.hlc == Hlc(50, 1)
    assert cursor.epoch == 0
    assert cursor.highest_seq(ALICE) == 2
    assert cursor.highest_seq(BOB) == 0


@pytest.mark.parametrize("seq", [0, -1, codec.U64_MAX + 1])
def test_mark_seen_rejects_bad_seq(seq: int) -> None:
    with pytest.raises(InvalidInput):
        SyncCursor().mark_seen(ALICE, seq, T)


def test_constructor_validates() -> None:
    assert SyncCursor(4).min_epoch == 4
    assert SyncCursor(4, min_epoch=0).min_epoch == 0
    with pytest.raises(InvalidInput):
        SyncCursor(4, min_epoch=5)
    with pytest.raises(InvalidInput):
        SyncCursor(-1)


def test_copy_is_independent() -> None:
    cursor = SyncCursor()
    cursor.advance(APP, 0, ALICE, 1, T)
    clone = cursor.copy()
    assert clone == cursor
    clone.advance(COMMIT, 0, ALICE, 2, Hlc(2000, 0))
    assert cursor.highest_seq(ALICE) == 1 and cursor.epoch == 0 and cursor.hlc == T
    assert clone != cursor


ops = st.lists(
    st.tuples(st.sampled_from(MessageKind), st.integers(0, 6), st.sampled_from([ALICE, BOB]), st.integers(1, 700)),
    max_size=200,
)


@given(ops)
@settings(max_examples=150)
def test_matches_a_reference_model(operations: list[tuple[MessageKind, int, DeviceId, int]]) -> None:
    cursor = SyncCursor(1)
    seen: dict[DeviceId, set[int]] = {ALICE: set(), BOB: set()}
    epoch = 1
    for kind, msg_epoch, device, seq in operations:
        fresh = seq not in seen[device] and seq > max(seen[device], default=0) - WINDOW
        epoch_ok = {APP: msg_epoch >= 1, WELCOME: msg_epoch > epoch}.get(kind, msg_epoch >= epoch)
        assert cursor.is_new(kind, msg_epoch, device, seq) == (fresh and epoch_ok)
        if fresh and epoch_ok:
            cursor.advance(kind, msg_epoch, device, seq, T)
            seen[device].add(seq)
            epoch = max(epoch, msg_epoch + 1 if kind is COMMIT else msg_epoch if kind is WELCOME else 0)
        assert cursor.epoch == epoch
    assert SyncCursor.decode(cursor.encode()) == cursor


@given(st.lists(st.tuples(device_ids, st.integers(1, codec.U64_MAX), hlcs), max_size=20), st.integers(0, 9))
def test_encode_decode_round_trip(marks: list[tuple[DeviceId, int, Hlc]], epoch: int) -> None:
    cursor = SyncCursor(epoch, min_epoch=epoch // 2)
    for device, seq, hlc in marks:
        cursor.mark_seen(device, seq, hlc)
    data = cursor.encode()
    restored = SyncCursor.decode(data)
    assert restored == cursor and restored.encode() == data
    for device, seq, _ in marks:
        assert restored.highest_seq(device) == cursor.highest_seq(device)
        assert not restored.is_new(APP, epoch, device, seq)


def encoded(devices: dict[bytes, list[object]], epoch: int = 1, min_epoch: int | None = 0) -> bytes:
    return cbor2.dumps({"v": 1, "e": epoch, "m": min_epoch, "t": [0, 0], "d": devices}, canonical=True)


@pytest.mark.parametrize(
    "devices",
    [
        {b"\x01" * 16: [3, b"\x00\x07"]},  # leading zero byte
        {b"\x01" * 16: [3, b"\x06"]},  # highest seq not marked
        {b"\x01" * 16: [2, b"\x07"]},  # marks a seq below 1
        {b"\x01" * 16: [0, b"\x01"]},  # seq 0
        {b"\x01" * 16: [900, b"\x01" * 33]},  # longer than the window
        {b"\x01" * 16: [3, b""]},
        {b"\x01" * 15: [3, b"\x01"]},  # not a device id
        {b"\x01" * 16: [3]},
        {b"\x01" * 16: [3, 1]},
    ],
)
def test_decode_rejects_non_canonical_windows(devices: dict[bytes, list[object]]) -> None:
    with pytest.raises(DecodeError):
        SyncCursor.decode(encoded(devices))


def test_decode_rejects_min_epoch_above_epoch() -> None:
    assert SyncCursor.decode(encoded({b"\x01" * 16: [3, b"\x05"]})).highest_seq(DeviceId(b"\x01" * 16)) == 3
    with pytest.raises(DecodeError):
        SyncCursor.decode(encoded({}, epoch=1, min_epoch=2))
    with pytest.raises(DecodeError):
        SyncCursor.decode(encoded({}, epoch=1, min_epoch=None))
