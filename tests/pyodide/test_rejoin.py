"""Rejoin by external commit, with real OpenMLS: a copy restored from a backup that is no
longer current joins again from the GroupInfo the delivery service keeps with each commit;
other members refuse an outsider's external commit; a rejoin racing an ordinary commit
tries again; a tampered GroupInfo changes nothing. The relay version is at the end."""

from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
async def test_a_backup_restored_twice_rejoins_and_both_sides_read_each_other(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import RejoinRequired
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(1)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_user(chat, b"bob")
    await bob.sync()
    await bob.send(chat, b"before the backup")
    backup = await bob.backup()
    await bob.close()

    first = await MessagingClient.restore(MemoryStorage(), backup, delivery=ds)
    await first.sync()
    await first.send(chat, b"first copy")
    second = await MessagingClient.restore(MemoryStorage(), backup, delivery=ds)
    await second.sync()
    with pytest.raises(RejoinRequired):
        await second.send(chat, b"refused")
    before = (await second.conversation(chat)).state.seq

    commit = await second.rejoin(chat)
    conversation = await second.conversation(chat)
    assert not conversation.state.rejoin_required and conversation.state.pending is None
    assert commit.seq >> 32 > before >> 32  # a new incarnation of its seqs
    assert [m.user_id.raw for m in conversation.members()].count(b"bob") == 1  # the stale leaf went
    # Both sides read each other.
    await second.send(chat, b"back again")
    got = (await alice.sync()).messages
    assert [m.plaintext for m in got][-1] == b"back again" and got[-1].sender_user.raw == b"bob"
    await alice.send(chat, b"welcome back")
    assert [m.plaintext for m in (await second.sync()).messages] == [b"welcome back"]
    # It kept its history.
    texts = [m.plaintext for m in await second.history(chat)]
    assert texts[0] == b"before the backup" and texts[-2:] == [b"back again", b"welcome back"]


@run_in_pyodide(packages=["ping_web"])
async def test_an_outsiders_external_commit_is_refused_by_every_member(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core.conversation import authenticated_header
    from ping_web.core.envelope import Hlc, MessageEnvelope, MessageKind
    from ping_web.delivery import LocalDeliveryService, RosterChange
    from ping_web.errors import ExternalCommitRefused
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    eve = await MessagingClient.open(MemoryStorage(), b"eve", delivery=ds)
    await bob.publish_key_packages(1)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_user(chat, b"bob")
    await bob.sync()
    group_info = await ds.group_info(chat)  # this service shows anyone the GroupInfo (a relay does not)
    epoch = (await alice.conversation(chat)).epoch()
    hlc = Hlc(1, 0)
    aad = authenticated_header(MessageKind.COMMIT, eve.device_id, epoch, 1, hlc)
    _, payload = eve._engine.join_external(group_info, aad)
    commit = MessageEnvelope.handshake(MessageKind.COMMIT, chat, epoch, eve.device_id, 1, hlc, payload)
    assert await ds.commit(commit.encode(), None, RosterChange(), external=True)  # a careless service takes it
    for member in (alice, bob):
        before = (await member.conversation(chat)).epoch()
        outcome = await member.sync()
        assert any(isinstance(error, ExternalCommitRefused) for _, error in outcome.rejected), member.user_id
        conversation = await member.conversation(chat)
        assert conversation.epoch() == before and b"eve" not in [m.user_id.raw for m in conversation.members()]
    with pytest.raises(ExternalCommitRefused):
        await alice.receive(commit)


@run_in_pyodide(packages=["ping_web"])
async def test_a_rejoin_racing_an_ordinary_commit_tries_again_and_a_tampered_group_info_changes_nothing(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import MlsError, PingError, RejoinRequired
    from ping_web.storage import MemoryStorage

    class RacingDelivery(LocalDeliveryService):
        """Hands out the GroupInfo, then lets ``before_join`` commit first (once)."""

        before_join = None
        tamper = False
        calls = 0

        async def group_info(self, conversation_id):
            self.calls += 1
            info = await super().group_info(conversation_id)
            if self.tamper and info is not None:
                info = info[:-40] + bytes(b ^ 1 for b in info[-40:])
            race, self.before_join = self.before_join, None
            if race is not None:
                await race()
            return info

    ds = RacingDelivery()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(1)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_user(chat, b"bob")
    await bob.sync()
    backup = await bob.backup()
    first = await MessagingClient.restore(MemoryStorage(), backup, delivery=ds)
    await first.send(chat, b"first copy")
    second = await MessagingClient.restore(MemoryStorage(), backup, delivery=ds)
    with pytest.raises(RejoinRequired):
        await second.send(chat, b"refused")

    # A tampered GroupInfo: refused by OpenMLS (signature), and nothing changes.
    ds.tamper = True
    state_before = (await second.conversation(chat)).state.encode()
    with pytest.raises((MlsError, PingError)):
        await second.rejoin(chat, attempts=1)
    assert (await second.conversation(chat)).state.encode() == state_before
    ds.tamper = False

    # alice commits between the GroupInfo second read and its external commit: the first
    # attempt loses the epoch, the second one (from the newer GroupInfo) is taken.
    async def alice_commits():
        await alice.sync()
        await alice.self_update(chat)

    ds.before_join = alice_commits
    ds.calls = 0
    commit = await second.rejoin(chat)
    assert ds.calls == 2  # the first external commit lost its epoch; the second one was taken
    assert commit.epoch == (await alice.conversation(chat)).epoch()
    await alice.sync()
    await second.send(chat, b"after the race")
    assert [m.plaintext for m in (await alice.sync()).messages] == [b"after the race"]


@run_in_pyodide(packages=["ping_web"])
async def _restored_twice_through_a_relay(selenium, url):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.delivery.relay import RelayDelivery
    from ping_web.errors import RejoinRequired
    from ping_web.storage import MemoryStorage

    def delivery():
        return RelayDelivery(url, push="off")

    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=delivery())
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=delivery())
    await bob.publish_key_packages(2)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_user(chat, b"bob")
    await bob.sync()
    backup = await bob.backup()
    await bob.close()
    first = await MessagingClient.restore(MemoryStorage(), backup, delivery=delivery())
    await first.send(chat, b"first copy")
    second = await MessagingClient.restore(MemoryStorage(), backup, delivery=delivery())
    with pytest.raises(RejoinRequired):
        await second.send(chat, b"refused")
    await second.rejoin(chat)  # the relay kept the GroupInfo of first's self-update
    await second.send(chat, b"rejoined through the relay")
    texts = [m.plaintext for m in (await alice.sync()).messages]
    assert texts == [b"first copy", b"rejoined through the relay"], texts
    await alice.send(chat, b"hello again")
    assert [m.plaintext for m in (await second.sync()).messages] == [b"hello again"]


def test_a_restored_copy_rejoins_through_a_relay(selenium, relay):
    _restored_twice_through_a_relay(selenium, relay.url)


@run_in_pyodide(packages=["ping_web"])
async def _new_device_joins_by_itself(selenium, url):
    import asyncio

    from ping_web.client import MessagingClient
    from ping_web.client.identity import IdentityEventKind
    from ping_web.delivery.relay import RelayDelivery
    from ping_web.storage import MemoryStorage

    def delivery():
        return RelayDelivery(url, push="off")

    phone = await MessagingClient.open(MemoryStorage(), b"ann", delivery=delivery(), label="phone")
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=delivery())
    await phone.publish_key_packages(3)
    await bob.publish_key_packages(3)
    events = []
    bob.on_identity_event = events.append
    laptop = await MessagingClient.open(MemoryStorage(), b"ann", delivery=delivery(), linked=True)
    code = await phone.start_link()
    linking = asyncio.ensure_future(laptop.request_link(code, label="laptop"))
    request = await phone.wait_link_request(code)
    await phone.approve_link(code, request)
    await linking
    # bob makes a conversation with ann's phone only (as a client that knew only that device would)
    chat = (await bob.create_conversation("with ann's phone only")).id
    kp = await bob._delivery.claim_key_package(phone.device_id)
    await bob.add_members(chat, [(phone.device_id, kp)])
    await phone.sync()
    await bob.send(chat, b"before the laptop")
    await phone.close()  # every other device of ann is offline from here on
    await laptop.sync()  # the device group, from the phone's Welcome
    joined = await laptop.join_user_conversations()
    assert chat in joined, joined
    await laptop.send(chat, b"from ann's new laptop")
    got = (await bob.sync()).messages
    assert [m.plaintext for m in got] == [b"from ann's new laptop"] and got[0].sender_user.raw == b"ann"
    assert await bob.unverified_members(chat) == []  # bob read ann's log: the laptop is hers
    (joined_event,) = [e for e in events if e.kind is IdentityEventKind.DEVICE_JOINED]
    assert joined_event.user_id.raw == b"ann" and joined_event.conversation_id == chat
    await bob.send(chat, b"hi laptop")
    assert [m.plaintext for m in (await laptop.sync()).messages] == [b"hi laptop"]


def test_a_linked_device_joins_its_users_conversations_by_itself(selenium, relay):
    _new_device_joins_by_itself(selenium, relay.url)


@run_in_pyodide(packages=["ping_web"])
async def test_a_linked_device_gets_its_users_history_when_asked(selenium):
    import asyncio
    import hashlib

    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core.envelope import IncomingMessage
    from ping_web.core.history import HistoryChunk, chunks
    from ping_web.core.hlc import Hlc
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import DecodeError, InvalidInput
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    phone = await MessagingClient.open(MemoryStorage(), b"ann", delivery=ds, label="phone")
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(2)
    chat = (await phone.create_conversation("chat")).id
    await phone.add_user(chat, b"bob")
    await bob.sync()
    for i in range(5):
        await phone.send(chat, f"ann {i}".encode())
        await bob.send(chat, f"bob {i}".encode())
    await phone.sync()
    before = [m.plaintext for m in await phone.history(chat)]
    assert len(before) == 10

    laptop = await MessagingClient.open(MemoryStorage(), b"ann", delivery=ds, linked=True)
    code = await phone.start_link()
    linking = asyncio.ensure_future(laptop.request_link(code, label="laptop"))
    await phone.approve_link(code, await phone.wait_link_request(code))
    await linking
    await laptop.sync()
    assert await laptop.history(chat) == []  # MLS gave the new leaf nothing of the past

    with pytest.raises(InvalidInput):
        await phone.share_history(bob.device_id)  # only to the user's own devices
    assert await phone.share_history(laptop.device_id) == 10
    outcome = await laptop.sync()
    assert outcome.messages == []  # history is not news
    assert [m.plaintext for m in await laptop.history(chat)] == before
    device_group = laptop.device_group_id
    assert await laptop.history(device_group) == []  # the chunks are not shown as messages
    assert await phone.share_history(laptop.device_id) == 10  # again: resumes, stores nothing twice
    await laptop.sync()
    assert [m.plaintext for m in await laptop.history(chat)] == before

    # A chunk from a device that is not one of ann's, or for another device, is not taken.
    (chunk,) = chunks(laptop.device_id, [(chat, [m.encode() for m in (await phone.history(chat))[:1]])])
    forged = IncomingMessage(device_group, bob.device_id, bob.user_id, 1, 1, Hlc(1, 0), chunk.encode(),
                             hashlib.sha256(chunk.encode()).digest())  # fmt: skip
    taken = []
    assert laptop._take_history(forged, taken) and taken == []
    (other,) = chunks(phone.device_id, [(chat, [m.encode() for m in (await phone.history(chat))[:1]])])
    own = IncomingMessage(device_group, phone.device_id, phone.user_id, 1, 1, Hlc(1, 0), other.encode(),
                          hashlib.sha256(other.encode()).digest())  # fmt: skip
    assert laptop._take_history(own, taken) and taken == []
    with pytest.raises(DecodeError):
        HistoryChunk.parse(chunk.encode()[:-3])
