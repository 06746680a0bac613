"""Exactly-once requests (ping_web.client.requests): a retried request id returns the
recorded outcome and applies nothing twice, across crashes at every write."""

import pytest
from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
async def test_a_retry_returns_the_recorded_result(selenium):
    import asyncio

    import pytest

    from ping_web.client import MessagingClient
    from ping_web.client.requests import new_request_id
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import InvalidInput
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    carol = await MessagingClient.open(MemoryStorage(), b"carol", delivery=ds)
    await bob.publish_key_packages(1)
    await carol.publish_key_packages(1)

    r = [new_request_id() for _ in range(6)]
    chat = await alice.create_conversation("chat", request_id=r[0])
    assert await alice.create_conversation("chat", request_id=r[0]) == chat
    assert len([m for m in alice.conversations() if not m.is_device_group]) == 1

    bob_kp = await ds.claim_key_package(bob.device_id)
    added = await alice.add_members(chat.id, [(bob.device_id, bob_kp)], request_id=r[1])
    again = await alice.add_members(chat.id, [(bob.device_id, bob_kp)], request_id=r[1])
    assert again.encode() == added.encode()
    assert (await alice.conversation(chat.id)).epoch() == 1
    await bob.sync()
    assert chat.id in {m.id for m in bob.conversations()}

    # Two copies of one request at once: one is applied, both get its envelope.
    first, second = await asyncio.gather(
        alice.send(chat.id, b"hello", request_id=r[2]), alice.send(chat.id, b"hello", request_id=r[2])
    )
    assert first == second
    assert [m.plaintext for m in await alice.history(chat.id)] == [b"hello"]
    assert [m.plaintext for m in (await bob.sync()).messages] == [b"hello"]
    assert (await alice.send(chat.id, b"hello", request_id=r[2])) == first
    assert ds.log_length(chat.id) == 2  # the add's commit and one message

    update = await alice.self_update(chat.id, request_id=r[3])
    assert await alice.self_update(chat.id, request_id=r[3]) == update
    assert (await alice.conversation(chat.id)).epoch() == 2

    carol_kp = await ds.claim_key_package(carol.device_id)
    await alice.add_members(chat.id, [(carol.device_id, carol_kp)], request_id=r[4])
    leaf = (await alice.conversation(chat.id)).leaf_index_of(carol.device_id)
    removal = await alice.remove_members(chat.id, [leaf], request_id=r[5])
    assert await alice.remove_members(chat.id, [leaf], request_id=r[5]) == removal
    assert (await alice.conversation(chat.id)).epoch() == 4
    assert alice._requests.replayed == 6

    with pytest.raises(InvalidInput, match="was used for send"):
        await alice.self_update(chat.id, request_id=r[2])
    with pytest.raises(InvalidInput, match="16 bytes"):
        await alice.send(chat.id, b"x", request_id=b"short")

    # Recorded outcomes survive a restart.
    storage = alice._storage
    await alice.close()
    alice = await MessagingClient.open(storage.reopen(), delivery=ds)
    assert await alice.send(chat.id, b"hello", request_id=r[2]) == first
    assert [m.plaintext for m in await alice.history(chat.id)] == [b"hello"]


@run_in_pyodide(packages=["ping_web"])
async def test_a_refused_commit_is_recorded_as_refused(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.client.requests import new_request_id
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import StateConflict
    from ping_web.storage import MemoryStorage
    from ping_web.testing import FaultyStorage, SimulatedCrash

    ds = LocalDeliveryService()
    faulty = FaultyStorage(MemoryStorage())
    alice = await MessagingClient.open(faulty, b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(1)
    chat = await alice.create_conversation("chat")
    await alice.add_members(chat.id, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
    await bob.sync()

    # Refused while the caller waits: a retry raises the same refusal, applies nothing.
    await bob.self_update(chat.id)
    refused = new_request_id()
    with pytest.raises(StateConflict):
        await alice.self_update(chat.id, request_id=refused)
    with pytest.raises(StateConflict, match="discarded"):
        await alice.self_update(chat.id, request_id=refused)
    assert (await alice.conversation(chat.id)).epoch() == 2

    # Recorded, then the process dies before posting; meanwhile bob takes the epoch. The
    # next sync discards the commit, and the record says so in that same batch.
    await bob.self_update(chat.id)
    late = new_request_id()
    faulty.fail_at, faulty.mode = faulty.commits + 1, "crash_after"
    with pytest.raises(SimulatedCrash):
        await alice.self_update(chat.id, request_id=late)
    await faulty.inner.close()
    faulty.inner, faulty.fail_at = faulty.inner.reopen(), None
    alice = await MessagingClient.open(faulty, delivery=ds)
    await alice.sync()
    with pytest.raises(StateConflict, match="discarded"):
        await alice.self_update(chat.id, request_id=late)
    assert (await alice.conversation(chat.id)).epoch() == 3
    assert (await bob.conversation(chat.id)).epoch() == 3
    await alice.send(chat.id, b"still in sync")
    assert [m.plaintext for m in (await bob.sync()).messages] == [b"still in sync"]


@run_in_pyodide(packages=["ping_web"])
async def test_recorded_outcomes_are_bounded(selenium):
    from ping_web.client import MessagingClient, keys
    from ping_web.client.requests import new_request_id
    from ping_web.storage import MemoryStorage

    alice = await MessagingClient.open(MemoryStorage(), b"alice")
    alice._requests.kept = 3
    chat = await alice.create_conversation("chat")
    ids = [new_request_id() for _ in range(5)]
    for i, request_id in enumerate(ids):
        await alice.send(chat.id, f"m{i}".encode(), request_id=request_id)
    rows = await alice._storage.scan(keys.REQUESTS)
    records = [key for key, _ in rows if key[:1] == b"r"]
    order = [value for key, value in rows if key[:1] == b"n"]
    assert sorted(records) == sorted(keys.request_key(i) for i in ids[2:])
    assert order == ids[2:]  # oldest first

    # The newest are answered from their record; the pruned one would be applied again.
    await alice.send(chat.id, b"m4", request_id=ids[4])
    assert len(await alice.history(chat.id)) == 5
    storage = alice._storage
    await alice.close()
    alice = await MessagingClient.open(storage.reopen())
    alice._requests.kept = 3
    await alice.send(chat.id, b"m3", request_id=ids[3])
    assert len(await alice.history(chat.id)) == 5
    await alice.send(chat.id, b"m0", request_id=ids[0])
    assert len(await alice.history(chat.id)) == 6
    assert len([k for k, _ in await alice._storage.scan(keys.REQUESTS) if k[:1] == b"r"]) == 3


@pytest.mark.parametrize("mode", ["error", "crash", "crash_after"])
@run_in_pyodide(packages=["ping_web"])
async def test_retry_after_a_fault_at_every_write(selenium, mode):
    """A scripted run where every call carries a request id; a fault at write k (failed,
    crashed before, or crashed after it landed) is followed by a restart and a retry of
    the same call with the same id, as a tab retries on a new leader. Every call is
    applied exactly once."""
    import gc

    import js

    from ping_web.client import MessagingClient
    from ping_web.client.requests import new_request_id
    from ping_web.core.envelope import MessageEnvelope, MessageKind
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import PingError
    from ping_web.storage import MemoryStorage
    from ping_web.testing import FaultyStorage, SimulatedCrash

    async def scripted_run(fail_at):
        ds = LocalDeliveryService()
        bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
        carol = await MessagingClient.open(MemoryStorage(), b"carol", delivery=ds)
        await bob.publish_key_packages(1)
        await carol.publish_key_packages(1)
        bob_kp = await ds.claim_key_package(bob.device_id)
        carol_kp = await ds.claim_key_package(carol.device_id)
        faulty = FaultyStorage(MemoryStorage(), mode=mode)
        alice = await MessagingClient.open(faulty, b"alice", delivery=ds)
        opened = faulty.commits
        faulty.fail_at = None if fail_at is None else opened + fail_at  # faults in the calls only
        state = {}

        def chat():
            return state["chat"].id

        async def carol_leaf():
            return (await alice.conversation(chat())).leaf_index_of(carol.device_id)

        steps = [
            ("create", lambda r: alice.create_conversation("chat", request_id=r)),
            ("add bob", lambda r: alice.add_members(chat(), [(bob.device_id, bob_kp)], request_id=r)),
            ("m1", lambda r: alice.send(chat(), b"m1", request_id=r)),
            ("m2", lambda r: alice.send(chat(), b"m2", request_id=r)),
            ("update", lambda r: alice.self_update(chat(), request_id=r)),
            ("m3", lambda r: alice.send(chat(), b"m3", request_id=r)),
            ("add carol", lambda r: alice.add_members(chat(), [(carol.device_id, carol_kp)], request_id=r)),
            ("m4", lambda r: alice.send(chat(), b"m4", request_id=r)),
            ("remove carol", None),
            ("m5", lambda r: alice.send(chat(), b"m5", request_id=r)),
            ("sync", lambda r: alice.sync()),  # hands over what a fault left in the outbox
        ]
        results = {}
        retries = 0
        leaf = None
        for name, call in steps:
            request_id = new_request_id()
            while True:
                try:
                    if name == "remove carol":
                        leaf = leaf if leaf is not None else await carol_leaf()  # the caller's argument, kept
                        result = await alice.remove_members(chat(), [leaf], request_id=request_id)
                    else:
                        result = await call(request_id)
                    break
                except SimulatedCrash:
                    await faulty.inner.close()  # the process died: start it again
                    faulty.inner = faulty.inner.reopen()
                    alice = await MessagingClient.open(faulty, delivery=ds)
                except PingError:
                    pass  # a failed write: retry the same request
                retries += 1
            results[name] = result
            if name == "create":
                state["chat"] = result
        replayed = alice._requests.replayed
        await bob.sync()

        conversations = [m for m in alice.conversations() if not m.is_device_group]
        assert [m.id for m in conversations] == [chat()], "create applied twice"
        assert (await alice.conversation(chat())).epoch() == 4, "a commit applied twice or lost"
        assert (await bob.conversation(chat())).epoch() == 4
        texts = [b"m1", b"m2", b"m3", b"m4", b"m5"]
        assert [m.plaintext for m in await alice.history(chat())] == texts
        assert [m.plaintext for m in await bob.history(chat())] == texts
        by_seq, applications = {}, set()
        for raw in (await ds.fetch(chat(), 0)).envelopes:
            envelope = MessageEnvelope.decode(raw)
            if envelope.sender_device == alice.device_id:
                assert by_seq.setdefault(envelope.seq, raw) == raw, f"seq {envelope.seq} reused"
                if envelope.kind is MessageKind.APPLICATION:
                    applications.add(envelope.seq)
        assert len(applications) == 5
        assert [results[t.decode()].seq for t in texts] == sorted(applications)
        assert await alice.outbox() == []
        return faulty.commits - opened, retries, replayed

    total, retries, _ = await scripted_run(None)
    assert total > 15 and retries == 0
    replays = 0
    for k in range(1, total + 1):
        gc.collect()
        if hasattr(js, "gc"):
            js.gc()
        try:
            _, retries, replayed = await scripted_run(k)
        except Exception as exc:
            raise AssertionError(f"{mode} at write {k} of {total}: {exc!r}") from exc
        replays += replayed
    # A fault after a call's own batch landed (a later write of that call: the outbox,
    # the merge of the commit) leaves a retry that finds the first attempt recorded.
    assert replays > 0
