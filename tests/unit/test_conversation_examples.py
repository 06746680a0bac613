"""Conversation over the in-memory engine: the hardest cases the state machine found, as examples."""

from __future__ import annotations

from memory_engine import MemoryEngine, MemoryNetwork

from ping_web.core.conversation import Conversation
from ping_web.core.envelope import IncomingMessage, MessageEnvelope
from ping_web.core.ids import ConversationId, DeviceId, UserId

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
        return self.c.process(MessageEnvelope.decode(envelope.encode()), now)


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
