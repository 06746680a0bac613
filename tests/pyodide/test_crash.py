"""Crash or fail at every storage write of a scripted run; nothing acknowledged is lost."""

import pytest
from pytest_pyodide import run_in_pyodide


@pytest.mark.parametrize("mode", ["error", "crash", "crash_after"])
@run_in_pyodide(packages=["ping_web"])
async def test_fault_at_every_write(selenium, mode):
    from ping_web.client import MessagingClient
    from ping_web.core.envelope import MessageEnvelope
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import PingError
    from ping_web.storage import MemoryStorage
    from ping_web.testing import FaultyStorage, SimulatedCrash

    async def scripted_run(fail_at):
        ds = LocalDeliveryService()
        bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
        await bob.publish_key_packages(6)
        faulty = FaultyStorage(MemoryStorage(), fail_at=fail_at, mode=mode)
        acked = []  # plaintexts alice's send() returned for: these must never be lost
        alice = None

        def conversation_id():
            ids = [m.id for m in alice.conversations() if not m.is_device_group]
            return ids[0] if ids else None

        async def ensure_conversation():
            if conversation_id() is None:
                await alice.create_conversation("chat")

        async def ensure_bob():
            conv = conversation_id()
            if (await alice.conversation(conv)).meta.member_count < 2:
                await alice.add_members(conv, [(bob.device_id, await ds.claim_key_package(bob.device_id))])

        async def send(text):
            if conversation_id() is not None:
                env = await alice.send(conversation_id(), text)
                acked.append((text, env.seq, env.epoch))

        async def bob_talks():
            await bob.sync()
            conv = conversation_id()
            if conv in {m.id for m in bob.conversations()}:
                await bob.send(conv, b"bob says hi")

        steps = [ensure_conversation, ensure_bob, lambda: send(b"a1"), lambda: send(b"a2"), bob_talks,
                 alice_sync := (lambda: alice.sync()), lambda: alice.self_update(conversation_id()),
                 lambda: send(b"a3"), bob_talks, alice_sync, lambda: send(b"a4"),
                 # recovery: alice re-posts her outbox, everyone catches up, one more round
                 ensure_conversation, alice_sync, bob.sync, ensure_bob, bob.sync, lambda: send(b"final"), bob.sync]  # fmt: skip
        crashes = 0
        i = -1
        while i < len(steps):
            try:
                if alice is None:
                    alice = await MessagingClient.open(faulty, b"alice", delivery=ds)
                    if i == -1:
                        i = 0
                    continue
                await steps[i]()
            except SimulatedCrash:
                crashes += 1
                await faulty.inner.close()  # the process died: its lock goes with it
                faulty.inner = faulty.inner.reopen()
                alice = None
            except PingError:
                pass  # a failed operation; the app goes on
            i += 1
        faulty.fail_at = None
        if alice is None:
            alice = await MessagingClient.open(faulty, b"alice", delivery=ds)
        await alice.sync()
        await bob.sync()

        conv = conversation_id()
        joined_at = (await bob.conversation(conv)).cursor.min_epoch
        received = [(m.plaintext, m.seq) for m in await bob.history(conv) if m.sender_device == alice.device_id]
        for text, seq, epoch in acked:
            expected = 1 if epoch >= joined_at else 0  # sent before bob was added: not for him
            assert received.count((text, seq)) == expected, (fail_at, mode, text, received)
        assert len(received) == len(set(received))
        mine = [(m.plaintext, m.seq) for m in await alice.history(conv)]
        assert all(mine.count((text, seq)) == 1 for text, seq, _ in acked)
        # One envelope per (sender, seq) in the log, re-posts being byte-identical copies.
        by_seq = {}
        for raw in (await ds.fetch(conv, 0)).envelopes:
            env = MessageEnvelope.decode(raw)
            if env.sender_device == alice.device_id:
                assert by_seq.setdefault(env.seq, raw) == raw, f"seq {env.seq} reused"
        assert await alice.outbox() == []
        assert (await bob.sync()).rejected == []
        return faulty.commits, crashes

    import gc

    import js

    def release_instances():
        # Every scripted run leaves several wasm instances behind (crashed clients are
        # never closed); collect them so a browser tab does not run out of wasm memory.
        gc.collect()
        if hasattr(js, "gc"):
            js.gc()

    total, _ = await scripted_run(None)
    assert total >= 20  # writes of the scripted run, each one failed in turn below
    for k in range(1, total + 1):
        release_instances()
        try:
            await scripted_run(k)
        except Exception as exc:
            raise AssertionError(f"{mode} at write {k} of {total}: {exc!r}") from exc
