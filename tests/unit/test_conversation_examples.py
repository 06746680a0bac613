"""Conversation over the in-memory engine, as examples: the cases the state machine found
hardest, and the restore paths step by step."""

from __future__ import annotations

import dataclasses

import pytest
from memory_engine import MemoryEngine, MemoryNetwork

from ping_web.core.conversation import Conversation, ConversationRecords
from ping_web.core.envelope import IncomingMessage, MessageEnvelope
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.state import ConversationState
from ping_web.errors import ContentHashMismatch, MlsError, RejoinRequired, StateConflict, UnknownOwnEnvelope

CID = ConversationId(b"conversation-ex1")


class Phone:
    """One device: its engine and its conversation."""

    def __init__(self, net: MemoryNetwork, user: bytes, number: int) -> None:
        self.user = user
        self.engine = MemoryEngine.new(net, user)
        self.device_id = DeviceId(f"phone-{number:010d}".encode())
        self.conv: Conversation | None = None

    @property
    def c(self) -> Conversation:
        assert self.conv is not None
        return self.conv

    def create(self, now: int) -> Conversation:
        self.conv = Conversation.create(self.engine, self.device_id, now, conversation_id=CID)
        return self.conv

    def entry(self) -> tuple[DeviceId, bytes]:
        return self.device_id, self.engine.key_package()

    def receive(self, envelope: MessageEnvelope, now: int) -> IncomingMessage | None:
        return self.c.process(wire(envelope), now)


def wire(envelope: MessageEnvelope) -> MessageEnvelope:
    return MessageEnvelope.decode(envelope.encode())


def group(*users: bytes) -> tuple[MemoryNetwork, list[Phone]]:
    """The first phone creates the conversation and adds the others in one commit."""
    net = MemoryNetwork()
    phones = [Phone(net, user, i) for i, user in enumerate(users)]
    first = phones[0]
    first.create(1)
    outcome = first.c.add_members([p.entry() for p in phones[1:]], 2)
    first.c.confirm_commit()
    for p in phones[1:]:
        p.conv = Conversation.join(p.engine, p.device_id, wire(outcome.welcome), 3)
    return net, phones


def commit(author: Phone, envelope: MessageEnvelope, others: list[Phone], now: int) -> None:
    author.c.confirm_commit()
    for p in others:
        assert p.receive(envelope, now) is None


def test_late_message_from_a_removed_member_is_not_attributed_to_the_new_holder_of_its_leaf() -> None:
    """MLS gives a removed member's leaf to the next member added. A message the removed
    member sent before, arriving late, comes from that leaf in its own epoch: the member
    there now did not send it."""
    net, (alice, bob, carol) = group(b"alice", b"bob", b"carol")
    late = alice.c.send_application(b"sent by alice in epoch 1", 10)
    alice_leaf = alice.c.own_leaf_index

    removal = carol.c.remove_members([alice_leaf], 11)
    commit(carol, removal, [bob], 12)
    dave = Phone(net, b"dave", 9)
    outcome = carol.c.add_members([dave.entry()], 13)
    commit(carol, outcome.commit, [bob], 14)
    dave.conv = Conversation.join(dave.engine, dave.device_id, wire(outcome.welcome), 15)
    assert [m.leaf_index for m in dave.c.members() if m.user_id == UserId(b"dave")] == [alice_leaf]

    # bob hears from dave first, so he knows dave's device at the reused leaf.
    assert bob.receive(dave.c.send_application(b"hi, I'm dave", 16), 17).sender_user == UserId(b"dave")
    got = bob.receive(late, 18)
    assert got is not None and got.plaintext == b"sent by alice in epoch 1"
    assert got.sender_user != UserId(b"dave")
    assert bob.c.leaf_index_of(dave.device_id) == alice_leaf
    assert bob.c.leaf_index_of(alice.device_id) is None
    bob.c.records()  # two devices never claim one leaf: the records still encode

    # carol (who added dave, so knows his leaf) and a receiver who never heard of dave alike.
    got = carol.receive(late, 19)
    assert got is not None and got.sender_user != UserId(b"dave")
    carol.c.records()


def test_late_message_across_a_self_update_keeps_its_sender() -> None:
    """No member joined or left since the message's epoch: the current roster names its sender."""
    _, (alice, bob, carol) = group(b"alice", b"bob", b"carol")
    late = carol.c.send_application(b"before the update", 10)
    update = bob.c.self_update(11)
    commit(bob, update, [alice, carol], 12)
    got = alice.receive(late, 13)
    assert got is not None and got.epoch == 1 and alice.c.epoch() == 2
    assert got.sender_user == UserId(b"carol")
    assert alice.c.leaf_index_of(carol.device_id) == carol.c.own_leaf_index


def test_held_messages_of_an_epoch_come_before_the_commit_that_removes_this_device() -> None:
    """Everything of an epoch is applied before the commit that ends it: a device removed by
    that commit still reads the messages of its last epoch, however they arrived."""
    _, (alice, bob, carol) = group(b"alice", b"bob", b"carol")
    update = bob.c.self_update(10)
    commit(bob, update, [carol], 11)
    last = bob.c.send_application(b"alice's last epoch", 12)
    removal = bob.c.remove_members([alice.c.own_leaf_index], 13)
    commit(bob, removal, [carol], 14)
    # alice gets the log newest first: the removal and the message wait for the update.
    assert alice.receive(removal, 15) is None and alice.receive(last, 15) is None
    assert len(alice.c.held) == 2
    assert alice.receive(update, 16) is None
    assert alice.c.take_rejected() == []
    assert [m.plaintext for m in alice.c.take_released()] == [b"alice's last epoch"]
    assert alice.c.state.removed and alice.c.held == []


def test_held_messages_are_applied_in_their_epoch_however_far_behind_the_receiver_is() -> None:
    """A device four epochs behind gets the log newest first: each held message is applied
    in its own epoch, not after every held commit (its secrets would be gone by then)."""
    _, (alice, bob, carol) = group(b"alice", b"bob", b"carol")
    log = [alice.c.self_update(10)]
    commit(alice, log[0], [bob], 11)
    log.append(bob.c.send_application(b"in epoch 2", 12))
    for now in range(13, 17):
        log.append(alice.c.self_update(now))
        commit(alice, log[-1], [bob], now)
    assert alice.c.epoch() == 6 and carol.c.epoch() == 1
    for envelope in reversed(log[1:]):
        assert carol.receive(envelope, 20) is None
    assert carol.receive(log[0], 21) is None
    assert carol.c.take_rejected() == []
    assert [m.plaintext for m in carol.c.take_released()] == [b"in epoch 2"]
    assert carol.c.epoch() == 6 and carol.c.held == []


def backup(phone: Phone, now: int) -> tuple[bytes, ConversationRecords]:
    c = phone.c
    records = ConversationRecords(c.meta, c.cursor.copy(), c.device_leaves, c.state.copy(), c.held)
    return c.export_state_snapshot(now), records


def restore(net: MemoryNetwork, phone: Phone, saved: tuple[bytes, ConversationRecords]) -> Phone:
    """The device lost and set up again from its backup: same identity, fresh working set."""
    copy = Phone.__new__(Phone)
    copy.user, copy.device_id = phone.user, phone.device_id
    copy.engine = MemoryEngine.restore(net, phone.engine.identity_entries())
    copy.conv = Conversation.restore_snapshot(copy.engine, copy.device_id, *saved)
    return copy


def test_a_restored_device_reads_on_but_sends_only_after_its_own_commit() -> None:
    net, (alice, bob, _) = group(b"alice", b"bob", b"carol")
    saved = backup(bob, 10)
    after = [bob.c.send_application(f"after the backup {i}".encode(), 11 + i) for i in range(3)]
    for envelope in after:
        assert alice.receive(envelope, 15) is not None
    restored = restore(net, bob, saved)

    assert restored.receive(alice.c.send_application(b"welcome back", 20), 21).plaintext == b"welcome back"
    with pytest.raises(StateConflict):
        restored.c.send_application(b"too early", 22)
    # What this copy sent after the backup comes back from the log: not its own doing, refused.
    before = restored.engine.entries(), restored.c.records()
    with pytest.raises(UnknownOwnEnvelope):
        restored.receive(after[0], 23)
    assert (restored.engine.entries(), restored.c.records()) == before

    update = restored.c.self_update(24)
    assert update.seq > max(e.seq for e in after)  # receivers have seen every seq up to there
    commit(restored, update, [alice], 25)
    assert alice.c.epoch() == restored.c.epoch() == 2
    assert alice.receive(restored.c.send_application(b"safe again", 26), 27).plaintext == b"safe again"


def test_sending_in_the_restored_epoch_would_reuse_a_ratchet_generation() -> None:
    """Why a restored copy must commit before it sends: its first message in the old epoch
    uses a generation its lost copy already used, and receivers refuse it."""
    net, (alice, bob, _) = group(b"alice", b"bob", b"carol")
    saved = backup(bob, 10)
    assert alice.receive(bob.c.send_application(b"sent by the lost copy", 11), 12) is not None
    restored = restore(net, bob, saved)
    restored.c.state.needs_self_update = False  # what send_application must never skip
    with pytest.raises(MlsError):
        alice.receive(restored.c.send_application(b"same generation", 13), 14)


def test_a_restored_device_whose_commit_loses_needs_a_rejoin() -> None:
    net, (alice, bob, carol) = group(b"alice", b"bob", b"carol")
    restored = restore(net, bob, backup(bob, 10))
    mine = restored.c.self_update(11)
    theirs = carol.c.self_update(11)
    commit(carol, theirs, [alice], 12)
    assert restored.receive(theirs, 13) is None  # the winner arrives while ours is pending
    assert not restored.c.has_pending_commit and restored.c.epoch() == 2
    for attempt in (lambda: restored.c.send_application(b"x", 14), lambda: restored.c.self_update(14)):
        with pytest.raises(RejoinRequired):
            attempt()
    assert alice.receive(mine, 15) is None  # the relay never logs it; a stray copy is stale


def test_seq_is_restored_from_the_cursor_when_the_stored_counter_is_behind() -> None:
    _, (alice, bob, _) = group(b"alice", b"bob", b"carol")
    sent = [alice.c.send_application(b"x", 10 + i) for i in range(3)]
    state = ConversationState.decode(alice.c.records()["state"])
    state.seq = 0
    c = alice.c
    loaded = Conversation.load(
        alice.engine, alice.device_id, ConversationRecords(c.meta, c.cursor.copy(), c.device_leaves, state)
    )
    assert loaded is not None
    envelope = loaded.send_application(b"after the restart", 20)
    assert envelope.seq == sent[-1].seq + 1
    assert [bob.receive(e, 21) is not None for e in [*sent, envelope]] == [True] * 4


def test_a_tampered_content_hash_is_refused_and_changes_nothing() -> None:
    _, (alice, bob, _) = group(b"alice", b"bob", b"carol")
    envelope = alice.c.send_application(b"the real text", 10)
    forged = dataclasses.replace(envelope, content_hash=bytes(32))
    before = bob.engine.entries(), bob.c.cursor.copy(), bob.c.state.copy(), bob.c.device_leaves
    with pytest.raises(ContentHashMismatch):
        bob.receive(forged, 11)
    assert (bob.engine.entries(), bob.c.cursor, bob.c.state, bob.c.device_leaves) == before
    # The ratchet step was undone: the genuine envelope still decrypts.
    assert bob.receive(envelope, 12).plaintext == b"the real text"


def test_a_backup_taken_while_a_commit_was_pending_restores_to_a_device_that_can_commit() -> None:
    """The restored copy cannot know what became of a commit staged before the backup, so it
    keeps none: neither in its state nor in MLS. It commits afresh; if the old one had won its
    epoch, the fresh one is refused and the copy needs a rejoin."""
    net, (alice, bob, carol) = group(b"alice", b"bob", b"carol")
    old = bob.c.self_update(10)
    saved = backup(bob, 11)

    # The old commit lost its epoch to carol's.
    theirs = carol.c.self_update(12)
    commit(carol, theirs, [alice], 13)
    restored = restore(net, bob, saved)
    assert not restored.c.has_pending_commit
    fresh = restored.c.self_update(14)  # before it has even seen the winner
    assert restored.receive(theirs, 15) is None and restored.c.state.rejoin_required
    assert fresh.seq > old.seq

    # The old commit won its epoch: the copy's own echo is not its doing, and its fresh commit is refused.
    net, (alice, bob, carol) = group(b"alice", b"bob", b"carol")
    old = bob.c.self_update(10)
    saved = backup(bob, 11)
    commit(bob, old, [alice, carol], 12)
    restored = restore(net, bob, saved)
    with pytest.raises(UnknownOwnEnvelope):
        restored.receive(old, 13)
    restored.c.self_update(14)
    restored.c.discard_commit()  # the relay refused it: the log is past that epoch
    with pytest.raises(RejoinRequired):
        restored.c.send_application(b"x", 15)


def test_a_message_of_the_lost_copy_arriving_after_the_restored_copys_commit_is_delivered() -> None:
    net, (alice, bob, _) = group(b"alice", b"bob", b"carol")
    saved = backup(bob, 10)
    late = bob.c.send_application(b"sent just before the phone was lost", 11)
    restored = restore(net, bob, saved)
    update = restored.c.self_update(12)
    commit(restored, update, [alice], 13)  # the log has `late` first; alice gets it out of order
    got = alice.receive(late, 14)
    assert got is not None and got.plaintext == b"sent just before the phone was lost"
