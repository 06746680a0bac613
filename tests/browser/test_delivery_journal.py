"""JournaledDelivery on CPython (no browser): a restart from the journal gives back the same
service, and a failed journal write leaves memory as storage has it."""

from __future__ import annotations

import asyncio

import pytest
from journaled_delivery import JournaledDelivery

from ping_web.core.envelope import MessageEnvelope, MessageKind
from ping_web.core.hlc import Hlc
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.delivery.port import error_from_record, error_record
from ping_web.errors import DatabaseInUse, MlsError, PingError, StateConflict, StorageError
from ping_web.storage import Batch, MemoryStorage

CONVERSATION = ConversationId.new()
ALICE, BOB = DeviceId.new(), DeviceId.new()


def commit(epoch: int, sender: DeviceId = ALICE, seq: int = 1) -> bytes:
    return MessageEnvelope.handshake(
        MessageKind.COMMIT, CONVERSATION, epoch, sender, seq, Hlc(1000 + seq, 0), b"commit-%d" % epoch
    ).encode()


def welcome(epoch: int) -> bytes:
    return MessageEnvelope.handshake(MessageKind.WELCOME, CONVERSATION, epoch, ALICE, 1, Hlc(1, 0), b"w").encode()


def application(seq: int, text: bytes) -> bytes:
    return MessageEnvelope.application(CONVERSATION, 1, ALICE, seq, Hlc(2000 + seq, 0), b"ct" + text, text).encode()


async def _replay_scenario() -> None:
    storage = MemoryStorage()
    ds = await JournaledDelivery.open(storage)
    await ds.publish_key_packages(UserId(b"bob"), BOB, [b"kp1", b"kp2", b"kp3"])
    assert await ds.claim_key_package(BOB) == b"kp1"
    assert await ds.post(commit(0)) is True
    assert await ds.post(commit(0, BOB)) is False  # the epoch is taken: not journaled
    await ds.send_welcome([BOB], welcome(1))
    assert await ds.post(application(2, b"hello")) is True
    await ds.send_welcome([ALICE], welcome(1))
    assert await ds.fetch_welcomes(BOB) == [welcome(1)]
    before = await ds.fetch(CONVERSATION, 0)
    await ds.close()

    again = await JournaledDelivery.open(storage.reopen())
    assert again.replayed == 7
    assert await again.fetch(CONVERSATION, 0) == before
    assert await again.fetch_welcomes(BOB) == []  # taken before the restart
    assert await again.fetch_welcomes(ALICE) == [welcome(1)]  # still waiting
    assert await again.claim_key_package(BOB) == b"kp2"  # kp1 was claimed
    assert await again.devices_of(UserId(b"bob")) == [BOB]
    assert await again.post(commit(0, BOB)) is False  # epoch 0's commit is still taken
    assert await again.post(commit(1, BOB, seq=2)) is True


def test_journal_replays_to_the_same_service() -> None:
    asyncio.run(_replay_scenario())


class FailingStorage(MemoryStorage):
    fail_next = False

    async def commit(self, batch: Batch) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StorageError("disk on fire")
        await super().commit(batch)


async def _failure_scenario() -> None:
    storage = FailingStorage()
    ds = await JournaledDelivery.open(storage)
    assert await ds.post(commit(0)) is True
    storage.fail_next = True
    with pytest.raises(StorageError):
        await ds.post(commit(1, seq=2))
    # Memory was rebuilt from the journal: epoch 1's commit was never accepted.
    assert len((await ds.fetch(CONVERSATION, 0)).envelopes) == 1
    assert await ds.post(commit(1, BOB)) is True


def test_failed_journal_write_changes_nothing() -> None:
    asyncio.run(_failure_scenario())


def test_errors_cross_by_name() -> None:
    assert error_record(DatabaseInUse("busy")) == {"name": "DatabaseInUse", "message": "busy"}
    again = error_from_record({"name": "DatabaseInUse", "message": "busy"})
    assert type(again) is DatabaseInUse and str(again) == "busy"
    assert type(error_from_record({"name": "StateConflict", "message": "x"})) is StateConflict
    # Not a ping_web error class, or one that needs more than a message: a plain PingError.
    for name in ("TypeError", "MlsError", "Nonsense", None):
        error = error_from_record({"name": name, "message": "m"})
        assert type(error) is PingError and not isinstance(error, MlsError)
