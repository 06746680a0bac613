"""MessagingClient with real OpenMLS, real storage code and the local delivery service."""

from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
async def test_cold_restart_of_three_users_keeps_history_and_never_reuses_a_seq(selenium):
    from ping_web.client import MessagingClient
    from ping_web.delivery import LocalDeliveryService
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    names = ["alice", "bob", "carol"]
    stores = {n: MemoryStorage() for n in names}
    clients = {n: await MessagingClient.open(stores[n], n.encode(), delivery=ds) for n in names}
    for c in clients.values():
        await c.publish_key_packages(4)

    async def add(owner, conv_id, others):
        entries = [(clients[o].device_id, await ds.claim_key_package(clients[o].device_id)) for o in others]
        await clients[owner].add_members(conv_id, entries)
        for o in others:
            await clients[o].sync()

    one = (await clients["alice"].create_conversation("one")).id
    await add("alice", one, ["bob", "carol"])
    two = (await clients["bob"].create_conversation("two")).id
    await add("bob", two, ["alice"])

    sent = {one: [], two: []}
    last_seq = {}

    async def chat(round_):
        for conv, speakers in [(one, names), (two, ["alice", "bob"])]:
            for n in speakers:
                env = await clients[n].send(conv, f"{n} round {round_}".encode())
                assert env.seq > last_seq.get((conv, n), 0), "a seq was reused"
                last_seq[(conv, n)] = env.seq
                sent[conv].append(f"{n} round {round_}".encode())
        for c in clients.values():
            outcome = await c.sync()
            assert outcome.rejected == []

    await chat(1)
    before = {n: {conv: [m.plaintext for m in await clients[n].history(conv)] for conv in clients[n]._metas
                  if conv in sent} for n in names}  # fmt: skip
    for n in names:
        await clients[n].close()
    # Cold restart: each device from its storage alone, in a fresh wasm instance.
    clients = {n: await MessagingClient.open(stores[n].reopen(), delivery=ds) for n in names}
    for n in names:
        metas = {m.id: m for m in clients[n].conversations()}
        assert one in metas and metas[one].name in ("one", None)
        for conv, texts in before[n].items():
            assert [m.plaintext for m in await clients[n].history(conv)] == texts
    await chat(2)
    for n in names:
        history = [m.plaintext for m in await clients[n].history(one)]
        assert sorted(history) == sorted(sent[one]), n
        assert len(history) == len(set((m.sender_device, m.seq) for m in await clients[n].history(one)))
    assert sorted(m.plaintext for m in await clients["alice"].history(two)) == sorted(sent[two])


@run_in_pyodide(packages=["ping_web"])
async def test_no_lock_is_held_across_a_write_and_batches_land_in_order(selenium):
    import asyncio
    import random

    from ping_web.client import MessagingClient
    from ping_web.storage import Batch, MemoryStorage

    class JitteryStorage(MemoryStorage):
        """Each commit takes a random time: a writer that overlaps writes lands them out of order."""

        rng = random.Random(5)
        in_flight = 0
        most_in_flight = 0
        gate = asyncio.Event()  # the test holds writes here while it looks
        gate.set()

        async def commit(self, batch: Batch) -> None:
            JitteryStorage.in_flight += 1
            JitteryStorage.most_in_flight = max(JitteryStorage.most_in_flight, JitteryStorage.in_flight)
            try:
                await JitteryStorage.gate.wait()
                await asyncio.sleep(self.rng.uniform(0, 0.01))
                await super().commit(batch)
            finally:
                JitteryStorage.in_flight -= 1

    a_store, b_store = JitteryStorage(), JitteryStorage()
    a = await MessagingClient.open(a_store, b"alice")
    b = await MessagingClient.open(b_store, b"bob")
    convs = []
    for name in ("x", "y"):
        conv = (await a.create_conversation(name)).id
        outcome = await a.add_members(conv, [(b.device_id, await b.new_key_package())])
        await a.confirm_commit(conv)
        await b.join(outcome.welcome)
        convs.append(conv)

    JitteryStorage.gate.clear()  # the first write will wait, in flight, until the test has looked
    sends = [asyncio.ensure_future(a.send(convs[i % 2], f"m{i}".encode())) for i in range(40)]
    for _ in range(5):
        await asyncio.sleep(0)
    # While the first write is still in flight, every other send has already captured its
    # batch: nothing (no lock, no busy flag) waited for the write.
    assert JitteryStorage.in_flight == 1
    assert a.pending_writes >= 39, a.pending_writes
    JitteryStorage.gate.set()
    envelopes = await asyncio.gather(*sends)
    assert JitteryStorage.most_in_flight == 1  # one FIFO writer
    for conv in convs:
        seqs = [e.seq for e in envelopes if e.conversation_id == conv]
        assert seqs == sorted(seqs) and len(set(seqs)) == 20

    # Receiving concurrently too, while sending more.
    receives = [asyncio.ensure_future(b.receive(e)) for e in envelopes]
    more = [asyncio.ensure_future(a.send(convs[0], b"late")) for _ in range(5)]
    got = await asyncio.gather(*receives)
    await asyncio.gather(*more)
    assert [m[0].plaintext for m in got] == [f"m{i}".encode() for i in range(40)]

    # What landed last is the newest state: after a restart the next seq follows on.
    await a.close()
    a2 = await MessagingClient.open(a_store.reopen())
    env = await a2.send(convs[0], b"after restart")
    assert env.seq == max(e.seq for e in envelopes if e.conversation_id == convs[0]) + 6
    assert [m.plaintext for m in await b.receive(env)] == [b"after restart"]
    assert len(await a2.history(convs[0])) == 20 + 5 + 1
    assert await a2.outbox() == []  # without a delivery service nothing waits to be posted


@run_in_pyodide(packages=["ping_web"])
async def test_revoked_device_is_removed_everywhere_and_a_second_opener_is_refused(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import DatabaseInUse, PingError
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice_store = MemoryStorage()
    alice = await MessagingClient.open(alice_store, b"alice", delivery=ds)
    with pytest.raises(DatabaseInUse):
        await MessagingClient.open(alice_store.reopen(), delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    mallory = await MessagingClient.open(MemoryStorage(), b"mallory", delivery=ds)
    await mallory.publish_key_packages(3)
    await bob.publish_key_packages(3)
    convs = []
    for name in ("a", "b", "c"):
        conv = (await alice.create_conversation(name)).id
        members = [(bob.device_id, await ds.claim_key_package(bob.device_id))]
        if name != "c":
            members.append((mallory.device_id, await ds.claim_key_package(mallory.device_id)))
        await alice.add_members(conv, members)
        convs.append(conv)
    await bob.sync()
    await mallory.sync()
    assert len(mallory.conversations()) == 3  # own device group + a + b

    commits = await alice.revoke_device(mallory.device_id)
    assert len(commits) == 2
    for conv in convs:
        c = await alice.conversation(conv)
        assert c.leaf_index_of(mallory.device_id) is None
        assert mallory.user_id not in {m.user_id for m in c.members()}
    await bob.sync()
    await mallory.sync()
    for conv in convs[:2]:
        assert (await mallory.conversation(conv)).state.removed
    env = await alice.send(convs[0], b"mallory cannot read this")
    assert [m.plaintext for m in await bob.receive(env)] == [b"mallory cannot read this"]
    with pytest.raises(PingError):
        await mallory.receive(env)


@run_in_pyodide(packages=["ping_web"])
async def test_linked_second_device_reads_and_sends_everywhere(selenium):
    import asyncio

    from ping_web.client import MessagingClient
    from ping_web.delivery import LocalDeliveryService
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice1 = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(4)
    convs = []
    for name in ("work", "home"):
        conv = (await alice1.create_conversation(name)).id
        await alice1.add_members(conv, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
        convs.append(conv)
    await bob.sync()
    await alice1.send(convs[0], b"before the new phone")

    alice2 = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds, linked=True)
    assert alice2.device_group_id is None
    code = await alice1.start_link()  # shown on alice1, typed into alice2
    linking = asyncio.ensure_future(alice2.request_link(code))
    await alice1.approve_link(code, await alice1.wait_link_request(code))  # adds it everywhere
    await linking
    assert await alice1.link_device(alice2.device_id) == []  # nothing left to add it to
    await alice2.sync()
    await bob.sync()
    assert alice2.device_group_id == alice1.device_group_id
    assert {m.id for m in alice2.conversations()} == {m.id for m in alice1.conversations()}
    for conv in convs:
        env = await alice2.send(conv, b"from the new phone")
        for reader in (alice1, bob):
            assert [m.plaintext for m in await reader.receive(env)] == [b"from the new phone"]
        env = await bob.send(conv, b"hi both alices")
        assert [m.plaintext for m in await alice2.receive(env)] == [b"hi both alices"]
        members = (await alice2.conversation(conv)).members()
        assert sorted(m.user_id.raw for m in members) == [b"alice", b"alice", b"bob"]


@run_in_pyodide(packages=["ping_web"])
async def test_device_restored_from_backup_never_reuses_a_ratchet_generation(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core.envelope import MessageKind
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import StateConflict
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(2)
    conv = (await alice.create_conversation("c")).id
    await alice.add_members(conv, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
    await bob.sync()
    await bob.send(conv, b"before backup")
    backup = await bob.backup()
    backup_epoch = (await bob.conversation(conv)).epoch()
    # After the backup bob sends more: ratchet generations 1.. of his leaf in this epoch.
    for i in range(3):
        await bob.send(conv, f"after backup {i}".encode())
    assert (await alice.sync()).rejected == []

    # Bob's device is wiped; he restores it from the backup.
    restored = await MessagingClient.restore(MemoryStorage(), backup, delivery=ds)
    assert restored.device_id == bob.device_id
    await restored.sync()
    sent = [await restored.send(conv, f"restored {i}".encode()) for i in range(3)]
    log = (await ds.fetch(conv, 0)).envelopes
    from ping_web.core.envelope import MessageEnvelope

    after = [MessageEnvelope.decode(e) for e in log if MessageEnvelope.decode(e).sender_device == bob.device_id]
    after = after[-4:]
    # First a self-update commit, then messages only in the new epoch: fresh ratchets.
    assert after[0].kind is MessageKind.COMMIT and after[0].epoch == backup_epoch
    assert all(e.epoch > backup_epoch for e in sent)
    # Alice already consumed generations of bob's old ratchet: any reuse would fail here.
    outcome = await alice.sync()
    assert outcome.rejected == []
    assert [m.plaintext for m in outcome.messages] == [b"restored 0", b"restored 1", b"restored 2"]
    # Without a delivery service the restored copy refuses to send before its self-update.
    offline = await MessagingClient.restore(MemoryStorage(), backup)
    with pytest.raises(StateConflict):
        await offline.send(conv, b"too early")


@run_in_pyodide(packages=["ping_web"])
async def test_bad_input_changes_nothing(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core.ids import ConversationId
    from ping_web.errors import InvalidInput, PingError, UnknownConversation
    from ping_web.storage import MemoryStorage

    store = MemoryStorage()
    a = await MessagingClient.open(store, b"alice")
    conv = (await a.create_conversation("c")).id
    snapshot = {ns: await store.scan(ns) for ns in ("device", "mls", "conversations", "history", "outbox")}
    with pytest.raises(UnknownConversation):
        await a.send(ConversationId.new(), b"x")
    with pytest.raises(InvalidInput):
        await a.send(conv, "not bytes")
    for junk in [b"", b"\x00" * 10, b"\xa0", bytes(range(256))]:
        with pytest.raises(PingError):
            await a.receive(junk)
        with pytest.raises(PingError):
            await a.join(junk)
    with pytest.raises(PingError):
        await a.add_members(conv, [(a.device_id, b"not a key package")])
    with pytest.raises(InvalidInput):
        await MessagingClient.open(MemoryStorage())  # no device, no user id
    assert {ns: await store.scan(ns) for ns in snapshot} == snapshot
    env = await a.send(conv, b"still fine")
    assert env.seq == 1


@run_in_pyodide(packages=["ping_web"])
async def test_a_wasm_trap_fails_the_operation_and_the_client_recovers_from_storage(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.errors import WasmTrap
    from ping_web.storage import MemoryStorage

    a = await MessagingClient.open(MemoryStorage(), b"alice")
    b = await MessagingClient.open(MemoryStorage(), b"bob")
    conv = (await a.create_conversation("c")).id
    outcome = await a.add_members(conv, [(b.device_id, await b.new_key_package())])
    await a.confirm_commit(conv)
    await b.join(outcome.welcome)
    first = await a.send(conv, b"before the trap")
    runtime = a._runtime
    with pytest.raises(WasmTrap):
        runtime.call(runtime._exports.debugTrap)
    assert runtime.trapped
    # The trapped instance is never called again: the next operation fails...
    with pytest.raises(WasmTrap):
        await a.send(conv, b"lost with the trapped instance")
    # ...and the one after runs on a fresh instance restored from storage.
    env = await a.send(conv, b"after recovery")
    assert a._runtime is not runtime and not a._runtime.trapped
    assert env.seq == first.seq + 1
    got = [m.plaintext for e in (first, env) for m in await b.receive(e)]
    assert got == [b"before the trap", b"after recovery"]
    assert [m.plaintext for m in await a.history(conv)] == [b"before the trap", b"after recovery"]


@run_in_pyodide(packages=["ping_web"])
async def test_a_removed_device_can_be_added_again(selenium):
    from ping_web.client import MessagingClient
    from ping_web.delivery import LocalDeliveryService
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(3)
    conv = (await alice.create_conversation("again")).id
    await alice.add_members(conv, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
    await bob.sync()
    await alice.send(conv, b"first time")
    await bob.sync()
    await alice.receive(await bob.send(conv, b"bob was here"))
    leaf = (await alice.conversation(conv)).leaf_index_of(bob.device_id)
    await alice.remove_members(conv, [leaf])
    await bob.sync()
    assert (await bob.conversation(conv)).state.removed
    await alice.add_members(conv, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
    await bob.sync()
    rejoined = await bob.conversation(conv)
    assert not rejoined.state.removed
    await alice.send(conv, b"welcome back")
    await bob.sync()
    assert [m.plaintext for m in await bob.history(conv)] == [b"first time", b"bob was here", b"welcome back"]
    env = await bob.send(conv, b"glad to be back")
    assert [m.plaintext for m in await alice.receive(env)] == [b"glad to be back"]
