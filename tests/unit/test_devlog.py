"""The device log (ping_web/core/devlog.py): what a verified log is, and every way a relay or
a hostile client can fail to make one."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ping_web.core import devlog
from ping_web.core.devlog import DeviceLog, DeviceStatus, LogEntry, LogOp
from ping_web.core.ids import DeviceId, UserId
from ping_web.errors import DeviceLogInvalid, IdentityChanged, IdentityChangeKind
from tests.identity_keys import VERIFIER, LogWriter, TestDevice, entry, genesis

ANN = UserId(b"ann")


def devices(n: int, user: UserId = ANN) -> list[TestDevice]:
    return [TestDevice(user, label=f"device {i}") for i in range(n)]


def test_a_log_of_adds_and_revokes_verifies() -> None:
    phone, laptop, tablet = devices(3)
    writer = LogWriter(phone)
    writer.add(laptop, phone)
    writer.add(tablet, laptop)
    writer.revoke(phone, tablet)
    log = DeviceLog.replay(writer.entries, VERIFIER)
    assert log.seq == 3 and log.head == writer.head and log.root == LogEntry.decode(writer.entries[0]).hash
    assert [d.key for d in log.active()] == [laptop.key, tablet.key]
    assert log.status(phone.key) is DeviceStatus.REVOKED
    assert log.status(laptop.key) is DeviceStatus.ACTIVE
    assert log.status(TestDevice(ANN).key) is DeviceStatus.UNKNOWN
    assert log.device_by_key(tablet.key).added_by == laptop.key  # type: ignore[union-attr]
    assert log.device_by_id(laptop.device_id).label == "device 1"  # type: ignore[union-attr]


def test_entries_round_trip_bytes_exactly() -> None:
    phone, laptop = devices(2)
    writer = LogWriter(phone)
    writer.add(laptop, phone)
    for data in writer.entries:
        assert LogEntry.decode(data).encode() == data


def test_extend_is_incremental_and_reports_changes() -> None:
    phone, laptop, tablet = devices(3)
    writer = LogWriter(phone)
    log = DeviceLog.start(writer.entries[0], VERIFIER)
    writer.add(laptop, phone)
    writer.revoke(phone, laptop)
    extended, changes = log.extend(writer.entries[1:], VERIFIER)
    assert [(c.op, c.device.key, c.signer_key) for c in changes] == [
        (LogOp.ADD, laptop.key, phone.key), (LogOp.REVOKE, phone.key, laptop.key)]  # fmt: skip
    assert log.seq == 0 and len(log.active()) == 1  # the old value is unchanged
    assert extended.seq == 2 and [d.key for d in extended.active()] == [laptop.key]
    del tablet


def test_genesis_rules() -> None:
    phone, other = devices(2)
    with pytest.raises(DeviceLogInvalid, match="signed by the first device"):
        DeviceLog.start(entry(LogOp.GENESIS, 0, devlog.NO_PREV, phone, other), VERIFIER)
    with pytest.raises(DeviceLogInvalid, match="starts with a genesis"):
        DeviceLog.start(entry(LogOp.GENESIS, 1, devlog.NO_PREV, phone, phone), VERIFIER)
    with pytest.raises(DeviceLogInvalid, match="starts with a genesis"):
        DeviceLog.start(entry(LogOp.ADD, 0, devlog.NO_PREV, phone, phone), VERIFIER)
    writer = LogWriter(phone)
    with pytest.raises(DeviceLogInvalid, match="only starts a log"):
        DeviceLog.replay([*writer.entries, entry(LogOp.GENESIS, 1, writer.head, other, phone)], VERIFIER)


@pytest.mark.parametrize("case", ["bad signature", "bad consent", "consent of another device", "signed by a stranger",
                                  "signed by another user's device", "signed by a revoked device", "key comes back",
                                  "device id comes back", "revoke an unknown device", "revoke twice",
                                  "revoke the last device", "wrong user", "too many devices"])  # fmt: skip
def test_rules_are_enforced(case: str) -> None:
    phone, laptop, tablet = devices(3)
    stranger, bobs = TestDevice(ANN), TestDevice(UserId(b"bob"))
    writer = LogWriter(phone)
    seq, head = 1, writer.head
    if case == "bad signature":
        data = bytearray(entry(LogOp.ADD, seq, head, laptop, phone))
        data[-100] ^= 1
        bad = bytes(data)
    elif case == "bad consent":
        data = bytearray(entry(LogOp.ADD, seq, head, laptop, phone))
        data[-1] ^= 1
        bad = bytes(data)
    elif case == "consent of another device":
        unsigned = devlog.unsigned_entry(LogOp.ADD, ANN, seq, head, 1, laptop.device_id, laptop.key, phone.key)
        bad = devlog.signed(unsigned, phone.sign(devlog.LABEL_ENTRY, unsigned.tbs()), tablet.consent()).encode()
    elif case == "signed by a stranger":
        bad = entry(LogOp.ADD, seq, head, laptop, stranger)
    elif case == "signed by another user's device":
        bad = entry(LogOp.ADD, seq, head, laptop, bobs)
    elif case == "signed by a revoked device":
        writer.add(laptop, phone)
        writer.revoke(phone, laptop)
        bad = entry(LogOp.ADD, 3, writer.head, tablet, phone)
    elif case == "key comes back":
        writer.add(laptop, phone)
        writer.revoke(laptop, phone)
        bad = entry(LogOp.ADD, 3, writer.head, laptop, phone)
    elif case == "device id comes back":
        writer.add(laptop, phone)
        bad = entry(LogOp.ADD, 2, writer.head, dataclasses.replace(tablet, device_id=laptop.device_id), phone)
    elif case == "revoke an unknown device":
        bad = entry(LogOp.REVOKE, seq, head, laptop, phone)
    elif case == "revoke twice":
        writer.add(laptop, phone)
        writer.add(tablet, phone)
        writer.revoke(laptop, phone)
        bad = entry(LogOp.REVOKE, 4, writer.head, laptop, phone)
    elif case == "revoke the last device":
        bad = entry(LogOp.REVOKE, seq, head, phone, phone)
    elif case == "wrong user":
        bad = entry(LogOp.ADD, seq, head, bobs, phone)
    else:
        for device in devices(devlog.MAX_ACTIVE_DEVICES - 1):
            writer.add(device, phone)
        bad = entry(LogOp.ADD, len(writer.entries), writer.head, laptop, phone)
    good = DeviceLog.replay(writer.entries, VERIFIER)
    with pytest.raises(DeviceLogInvalid):
        good.extend([bad], VERIFIER)


def test_a_device_may_revoke_itself_while_another_remains() -> None:
    phone, laptop = devices(2)
    writer = LogWriter(phone)
    writer.add(laptop, phone)
    writer.revoke(laptop, laptop)
    assert [d.key for d in DeviceLog.replay(writer.entries, VERIFIER).active()] == [phone.key]


def test_reordered_dropped_duplicated_or_truncated_entries_are_refused() -> None:
    phone, laptop, tablet = devices(3)
    writer = LogWriter(phone)
    writer.add(laptop, phone)
    writer.add(tablet, laptop)
    first, e1, e2 = writer.entries
    for broken in ([first, e2, e1], [first, e2], [first, e1, e1, e2], [first, e1, e1]):
        with pytest.raises(DeviceLogInvalid):
            DeviceLog.replay(broken, VERIFIER)
    for cut in range(len(e1)):
        with pytest.raises(DeviceLogInvalid):
            DeviceLog.replay([first, e1[:cut]], VERIFIER)
    with pytest.raises(DeviceLogInvalid):
        DeviceLog.replay([first, e1 + b"\x00"], VERIFIER)


def test_malformed_input_is_a_typed_error() -> None:
    for data in [b"", b"\x01", b"\x02\x00\x03ann", bytes(300), "text", None]:
        with pytest.raises(DeviceLogInvalid):
            LogEntry.decode(data)  # type: ignore[arg-type]
    phone = TestDevice(ANN, label="\u202ephone\n")
    with pytest.raises(DeviceLogInvalid):
        genesis(phone)
    with pytest.raises(DeviceLogInvalid):
        devlog.unsigned_entry(LogOp.ADD, ANN, 1, b"short", 1, phone.device_id, phone.key, phone.key)


# -- pinning: a relay's page against what this device verified before --------------------------


def test_a_pinned_log_accepts_only_what_extends_it() -> None:
    phone, laptop, tablet = devices(3)
    writer = LogWriter(phone)
    writer.add(laptop, phone)
    pinned = DeviceLog.replay(writer.entries, VERIFIER)
    writer.add(tablet, laptop)
    log, changes = pinned.accept(writer.entries[2:], 2, VERIFIER)  # the entries after the pin
    assert log.seq == 2 and [c.device.key for c in changes] == [tablet.key]
    log, changes = pinned.accept(writer.entries, 2, VERIFIER)  # the whole log again
    assert log.seq == 2 and len(changes) == 1
    assert pinned.accept([], 1, VERIFIER)[0] == pinned  # nothing new


def test_rollback_fork_and_new_root_are_identity_changes() -> None:
    phone, laptop, tablet, evil = devices(4)
    writer = LogWriter(phone)
    writer.add(laptop, phone)
    writer.add(tablet, phone)
    pinned = DeviceLog.replay(writer.entries, VERIFIER)
    with pytest.raises(IdentityChanged) as rollback:
        pinned.accept(writer.entries[:2], 1, VERIFIER)
    assert rollback.value.kind is IdentityChangeKind.ROLLBACK and rollback.value.user_id == ANN
    with pytest.raises(IdentityChanged) as gone:
        pinned.accept([], -1, VERIFIER)
    assert gone.value.kind is IdentityChangeKind.ROLLBACK
    fork = LogWriter(phone)
    fork.entries = writer.entries[:2]
    fork.add(evil, phone)  # a second entry 2, validly signed by an active device
    fork.add(tablet, phone)
    with pytest.raises(IdentityChanged) as forked:
        pinned.accept(fork.entries, 3, VERIFIER)
    assert forked.value.kind is IdentityChangeKind.FORK
    longer = LogWriter(phone)
    longer.entries = list(writer.entries[:2])
    longer.add(evil, phone)
    longer.add(tablet, laptop)
    with pytest.raises(IdentityChanged) as forked_after:
        pinned.accept(longer.entries[3:], 3, VERIFIER)
    assert forked_after.value.kind is IdentityChangeKind.FORK
    other = LogWriter(TestDevice(ANN))
    with pytest.raises(IdentityChanged) as new_root:
        pinned.accept(other.entries, 0, VERIFIER)
    assert new_root.value.kind is IdentityChangeKind.NEW_ROOT


# -- properties -------------------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> list[bytes]:
    """A valid log: adds and revokes by random active devices."""
    pool = devices(6)
    writer = LogWriter(pool[0])
    active, unused = [pool[0]], pool[1:]
    for _ in range(draw(st.integers(0, 6))):
        signer = draw(st.sampled_from(active))
        if unused and (len(active) == 1 or draw(st.booleans())):
            device = unused.pop(0)
            writer.add(device, signer)
            active.append(device)
        elif len(active) > 1:
            device = draw(st.sampled_from(active))
            writer.revoke(device, signer)
            active.remove(device)
    return writer.entries


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_any_changed_byte_breaks_the_log(entries: list[bytes], data: st.DataObject) -> None:
    log = DeviceLog.replay(entries, VERIFIER)
    index = data.draw(st.integers(0, len(entries) - 1))
    position = data.draw(st.integers(0, len(entries[index]) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = bytearray(entries[index])
    changed[position] ^= flip
    tampered = [*entries[:index], bytes(changed), *entries[index + 1 :]]
    with pytest.raises(DeviceLogInvalid):
        DeviceLog.replay(tampered, VERIFIER)
    assert DeviceLog.replay(entries, VERIFIER) == log


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_any_other_order_or_subset_breaks_the_log(entries: list[bytes], data: st.DataObject) -> None:
    """A client that pinned the log accepts it again, and nothing else served in its place."""
    changed = list(data.draw(st.permutations(entries) | st.lists(st.sampled_from(entries), min_size=1, max_size=8)))
    pinned = DeviceLog.replay(entries, VERIFIER)
    if changed == entries:
        assert pinned.accept(changed, len(changed) - 1, VERIFIER) == (pinned, [])
        return
    with pytest.raises((DeviceLogInvalid, IdentityChanged)):
        pinned.accept(changed, len(changed) - 1, VERIFIER)
    if changed == entries[: len(changed)]:  # a prefix is an older log: a rollback
        with pytest.raises(IdentityChanged):
            pinned.accept(changed, len(changed) - 1, VERIFIER)


def test_device_ids_stay_ids() -> None:
    assert isinstance(devices(1)[0].device_id, DeviceId)
