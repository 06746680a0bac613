"""What a buggy or hostile delivery service, a stale backup or a broken backup file can do,
and what it cannot: real OpenMLS, real client, the local delivery service."""

from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
async def test_an_envelope_naming_this_device_that_it_never_sent_is_refused_and_changes_nothing(selenium):
    import dataclasses

    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core.codec import U32_MAX, U64_MAX
    from ping_web.core.envelope import MessageEnvelope, MessageKind
    from ping_web.core.hlc import Hlc
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import UnknownOwnEnvelope
    from ping_web.storage import NAMESPACES, MemoryStorage

    ds = LocalDeliveryService()
    alice_store = MemoryStorage()
    alice = await MessagingClient.open(alice_store, b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(1)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_members(chat, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
    await bob.sync()
    genuine = await alice.send(chat, b"hello")

    async def everything_alice_stores():
        return {ns: await alice_store.scan(ns) for ns in NAMESPACES}

    # A relay rewrites alice's own envelope: an extreme seq and clock, or another payload.
    forgeries = [
        dataclasses.replace(genuine, seq=U64_MAX),
        dataclasses.replace(genuine, seq=genuine.seq + 1, hlc=Hlc(U64_MAX, U32_MAX)),
        MessageEnvelope.handshake(MessageKind.COMMIT, chat, genuine.epoch, alice.device_id, U64_MAX - 1,
                                  genuine.hlc, b"not a commit alice made"),
    ]  # fmt: skip
    for forged in forgeries:
        before = await everything_alice_stores()
        with pytest.raises(UnknownOwnEnvelope):
            await alice.receive(forged.encode())
        assert await everything_alice_stores() == before
    # Nothing in them was trusted: alice's next seq follows her last real one, and she can
    # still send, commit and be read.
    after = await alice.send(chat, b"still fine")
    assert after.seq == genuine.seq + 1 and after.hlc.wall_ms < U64_MAX
    commit = await alice.self_update(chat)
    assert commit.seq == after.seq + 1
    got = [m.plaintext for m in (await bob.sync()).messages]
    assert got == [b"hello", b"still fine"]

    # A commit that claims to be the echo of alice's pending one, with other bytes, is
    # refused; the real echo confirms it.
    offline = await MessagingClient.open(MemoryStorage(), b"carol")
    solo = (await offline.create_conversation()).id
    pending = await offline.self_update(solo)
    fake_echo = MessageEnvelope.handshake(MessageKind.COMMIT, solo, pending.epoch, offline.device_id, pending.seq,
                                          pending.hlc, pending.payload[:-1] + bytes([pending.payload[-1] ^ 1]))  # fmt: skip
    with pytest.raises(UnknownOwnEnvelope):
        await offline.receive(fake_echo)
    assert (await offline.conversation(solo)).has_pending_commit
    await offline.receive(pending.encode())
    conversation = await offline.conversation(solo)
    assert not conversation.has_pending_commit and conversation.epoch() == pending.epoch + 1


@run_in_pyodide(packages=["ping_web"])
async def test_a_sender_clock_far_in_the_future_is_delivered_but_does_not_drag_the_clock(selenium):
    from ping_web.client import MessagingClient
    from ping_web.core.hlc import MAX_AHEAD_MS
    from ping_web.delivery import LocalDeliveryService
    from ping_web.storage import MemoryStorage

    now = 1_800_000_000_000
    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds, clock=lambda: now)
    skewed = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds, clock=lambda: 2**62)
    await skewed.publish_key_packages(1)
    chat = (await alice.create_conversation()).id
    await alice.add_members(chat, [(skewed.device_id, await ds.claim_key_package(skewed.device_id))])
    await skewed.sync()
    await skewed.send(chat, b"from a broken clock")
    assert [m.plaintext for m in (await alice.sync()).messages] == [b"from a broken clock"]
    reply = await alice.send(chat, b"reply")
    assert reply.hlc.wall_ms <= now + MAX_AHEAD_MS
    assert [m.plaintext for m in (await skewed.sync()).messages] == [b"reply"]


@run_in_pyodide(packages=["ping_web"])
async def test_a_backup_restored_twice_never_sends_with_keys_another_copy_used(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core.envelope import MessageEnvelope, MessageKind
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import RejoinRequired, UnknownOwnEnvelope
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(1)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_members(chat, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
    await bob.sync()
    await bob.send(chat, b"before the backup")
    backup = await bob.backup()
    await bob.close()  # the phone is lost

    first = await MessagingClient.restore(MemoryStorage(), backup, delivery=ds)
    await first.sync()
    for i in range(3):
        await first.send(chat, f"first copy {i}".encode())
    log_before = (await ds.fetch(chat, 0)).envelopes

    second_store = MemoryStorage()
    second = await MessagingClient.restore(second_store, backup, delivery=ds)
    await second.sync()
    with pytest.raises(RejoinRequired):
        await second.send(chat, b"second copy")
    # It sent nothing: its refused self-update never reached the log, no application message either.
    assert (await ds.fetch(chat, 0)).envelopes == log_before
    # And it keeps refusing, after a restart too.
    with pytest.raises(RejoinRequired):
        await second.send(chat, b"second copy again")
    await second.close()
    reopened = await MessagingClient.open(second_store.reopen(), delivery=ds)
    with pytest.raises(RejoinRequired):
        await reopened.send(chat, b"after a restart")
    outcome = await reopened.sync()
    assert all(isinstance(error, UnknownOwnEnvelope) for _, error in outcome.rejected)  # the first copy's commit

    # Every envelope in the log decrypts for alice; bob's device never used one (epoch, seq) twice.
    received = (await alice.sync()).messages
    assert [m.plaintext for m in received] == [b"before the backup", b"first copy 0", b"first copy 1", b"first copy 2"]
    bob_envelopes = [MessageEnvelope.decode(raw) for raw in (await ds.fetch(chat, 0)).envelopes]
    bob_envelopes = [e for e in bob_envelopes if e.sender_device == first.device_id]
    assert len({e.seq for e in bob_envelopes}) == len(bob_envelopes)
    kinds = [e.kind for e in bob_envelopes]
    assert kinds == [MessageKind.APPLICATION, MessageKind.COMMIT] + [MessageKind.APPLICATION] * 3
    backup_epoch = bob_envelopes[1].epoch  # the first copy's self-update, made in the backup's epoch
    assert bob_envelopes[0].epoch == backup_epoch  # sent before the backup
    assert all(e.epoch == backup_epoch + 1 for e in bob_envelopes[2:])  # the copy never sent in the old epoch
    # The first copy goes on.
    await first.send(chat, b"first copy goes on")
    assert [m.plaintext for m in (await alice.sync()).messages] == [b"first copy goes on"]


@run_in_pyodide(packages=["ping_web"])
async def test_a_restored_device_shows_the_history_it_had_then_what_came_after(selenium):
    from ping_web.client import MessagingClient
    from ping_web.delivery import LocalDeliveryService
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(1)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_members(chat, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
    await bob.sync()
    for i in range(3):
        await alice.send(chat, f"alice {i}".encode())
        await bob.sync()
        await bob.send(chat, f"bob {i}".encode())
    at_backup = [(m.sender_device, m.seq, m.plaintext) for m in await bob.history(chat)]
    assert len(at_backup) == 6
    backup = await bob.backup()
    await bob.close()

    restored = await MessagingClient.restore(MemoryStorage(), backup, delivery=ds)
    assert [(m.sender_device, m.seq, m.plaintext) for m in await restored.history(chat)] == at_backup
    await alice.send(chat, b"after the restore")
    await restored.sync()
    await restored.send(chat, b"bob is back")
    history = [m.plaintext for m in await restored.history(chat)]
    assert history == [p for _, _, p in at_backup] + [b"after the restore", b"bob is back"]


@run_in_pyodide(packages=["ping_web"])
async def test_a_malformed_or_truncated_backup_is_refused_and_writes_nothing(selenium):
    import gc
    import random

    import js
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core import codec
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import PingError
    from ping_web.storage import NAMESPACES, MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    chat = (await alice.create_conversation("chat")).id
    await alice.send(chat, b"kept in the backup")
    backup = await alice.backup()
    rng = random.Random(7)

    bad = [b"", b"\x00", backup[:1], backup[:-1], backup + b"\x00", codec.encode([1, 2, 3]),
           codec.encode({"v": 2, "d": b"", "k": [], "c": []}), codec.encode({"v": 2, "d": 5, "k": {}, "c": [7]}),
           codec.encode({"v": 9, "d": b"", "k": [], "c": []})]  # fmt: skip
    bad += [backup[: rng.randrange(len(backup))] for _ in range(60)]
    structural = len(bad)
    for _ in range(150):
        flipped = bytearray(backup)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        bad.append(bytes(flipped))
    decoded = codec.decode(backup, max_size=1 << 30)
    for key in decoded:
        bad.append(codec.encode({k: (v if k != key else "wrong type") for k, v in decoded.items()}))

    def release_wasm_instances():  # each restore that got as far as MLS made one (Chromium caps wasm memory)
        gc.collect()
        if hasattr(js, "gc"):
            js.gc()

    storage = MemoryStorage()
    for i, data in enumerate(bad):
        if i % 20 == 0:
            release_wasm_instances()
        try:
            restored = await MessagingClient.restore(storage, data)
        except PingError:  # anything else (TypeError, ValueError, KeyError...) fails the test
            assert [await storage.scan(ns) for ns in NAMESPACES] == [[]] * len(NAMESPACES), "a refused restore wrote"
            continue
        # A flip inside a value nothing can check (a name, a number in an opaque MLS entry)
        # may still restore; never one that breaks the structure.
        assert i >= structural, f"malformed backup {i} was restored"
        await restored.close()
        storage = MemoryStorage()
    release_wasm_instances()
    with pytest.raises(PingError):
        await MessagingClient.restore(storage, "not bytes")  # type: ignore[arg-type]
    restored = await MessagingClient.restore(storage, backup)
    assert [m.plaintext for m in await restored.history(chat)] == [b"kept in the backup"]


@run_in_pyodide(packages=["ping_web"])
async def test_a_message_the_log_refuses_as_too_old_is_sent_again_never_dropped(selenium):
    from ping_web.client import MessagingClient
    from ping_web.core.envelope import MessageEnvelope
    from ping_web.delivery import LocalDeliveryService
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(1)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_members(chat, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
    await bob.sync()
    old_epoch = (await bob.conversation(chat)).epoch()
    for _ in range(3):  # the group moves on while bob is away
        await alice.self_update(chat)

    sent = await bob.send(chat, b"written on the train")  # made in bob's old epoch; the log refuses it
    assert sent.epoch == old_epoch
    log = [MessageEnvelope.decode(raw) for raw in (await ds.fetch(chat, 0)).envelopes]
    from_bob = [e for e in log if e.sender_device == bob.device_id]
    assert len(from_bob) == 1 and from_bob[0].epoch == old_epoch + 3 and from_bob[0].seq > sent.seq
    assert await bob.outbox() == []
    assert [m.plaintext for m in await bob.history(chat)] == [b"written on the train"]
    assert [m.plaintext for m in (await alice.sync()).messages] == [b"written on the train"]
