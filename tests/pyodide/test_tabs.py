"""SharedDevice (ping_web.client.tabs) with tabs simulated in one process (LocalTabs): one
leader, followers forwarding to it, and takeover when the leader crashes, with every call
applied exactly once. The browser run (Web Locks, BroadcastChannel, IndexedDB, real tabs)
is tests/browser/test_shared_tabs.py."""

from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
async def test_followers_forward_and_a_crashed_leader_is_replaced(selenium):
    import asyncio

    import pytest

    from ping_web.client import MessagingClient
    from ping_web.client.tabs import FOLLOWER, LEADER, LeaderUnavailable, LocalTabs, SharedDevice
    from ping_web.core.envelope import MessageEnvelope, MessageKind
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import DatabaseInUse, DeliveryUnavailable, InvalidInput
    from ping_web.storage import MemoryStorage
    from ping_web.testing import FaultyStorage

    ds = LocalDeliveryService()

    class TabDelivery:
        """One tab's handle on the delivery service: it dies with its tab."""

        def __init__(self):
            self.dead = False

        def __getattr__(self, name):
            method = getattr(ds, name)
            if not asyncio.iscoroutinefunction(method):
                return method

            async def call(*args, **kwargs):
                if self.dead:
                    raise DeliveryUnavailable("this tab is gone")
                return await method(*args, **kwargs)

            return call

    data = MemoryStorage()
    await data.close()
    opened = []  # (tab number, storage handle) of each leader, in order

    def opener(number, faulty=None):
        async def open_storage(lock):
            handle = data.reopen()
            if faulty is not None:
                faulty.inner = handle
                handle = faulty
            opened.append((number, handle))
            return handle

        return open_storage

    origin = LocalTabs()
    tabs, devices, deliveries, events = [], [], [], []

    async def open_tab(faulty=None, **kwargs):
        number = len(tabs)
        tab, delivery, seen = origin.tab(), TabDelivery(), []
        tabs.append(tab)
        deliveries.append(delivery)
        events.append(seen)
        device = await SharedDevice.open(
            "alice", b"alice", host=tab, open_storage=opener(number, faulty), delivery=delivery,
            on_event=seen.append, **kwargs,
        )  # fmt: skip
        devices.append(device)
        return device

    async def crash(number):
        """Tab ``number`` dies: its channels and lock go, its storage handle and delivery die."""
        tabs[number].crash()
        deliveries[number].dead = True
        for owner, handle in opened:
            if owner == number:
                await (handle.inner if isinstance(handle, FaultyStorage) else handle).close()

    async def until(check):
        """Let the simulated tabs run until ``check()`` holds."""
        for _ in range(100_000):
            if check():
                return
            await asyncio.sleep(0)
        raise AssertionError("it never happened")

    def texts(seen):
        return [m.plaintext for event in seen if event.kind == "messages" for m in event.messages]

    one, two = await open_tab(), await open_tab()
    assert (one.role, two.role) == (LEADER, FOLLOWER)
    assert two.device_id == one.device_id and two.user_id == one.user_id
    with pytest.raises(InvalidInput, match="another user"):
        await SharedDevice.open("alice", b"mallory", host=origin.tab(), open_storage=opener(99))
    three = await open_tab()

    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(1)
    chat = await two.create_conversation("chat")  # from a follower
    await three.add_members(chat.id, [(bob.device_id, await ds.claim_key_package(bob.device_id))])
    await bob.sync()
    assert [m.id for m in await three.conversations() if not m.is_device_group] == [chat.id]

    sent = {}  # text -> envelope, for every call that returned
    for device, text in [(one, b"from one"), (two, b"from two"), (three, b"from three")]:
        sent[text] = await device.send(chat.id, text)
    for seen in events:
        assert texts(seen) == [b"from one", b"from two", b"from three"]

    # The leader applies the followers' calls but dies before answering any of them.
    withheld = []
    one._withhold = withheld.append
    burst = [b"two %d" % i for i in range(3)] + [b"three %d" % i for i in range(3)]
    calls = [asyncio.ensure_future((two if text.startswith(b"two") else three).send(chat.id, text)) for text in burst]
    await until(lambda: len(withheld) == len(burst))
    assert not any(call.done() for call in calls)
    await crash(0)
    for text, call in zip(burst, calls, strict=True):
        sent[text] = await call
    assert (two.role, three.role) == (LEADER, FOLLOWER)
    assert two.client._requests.replayed == len(burst)  # all answered from the record
    assert two.resent == 3 and three.resent == 3
    assert any(event.kind == "leader" and event.this_tab for event in events[1])
    assert any(event.kind == "leader" and not event.this_tab for event in events[2])

    # A fourth tab, whose storage crashes right after the write of the call it serves.
    faulty = FaultyStorage(None, mode="crash_after")
    four = await open_tab(faulty)
    assert four.role == FOLLOWER
    await crash(1)  # two goes: three leads (first in the lock's queue), four follows
    sent[b"warm up"] = await four.send(chat.id, b"warm up")
    assert three.role == LEADER
    await crash(2)  # three goes: four leads, on the faulty storage
    await four.conversations()
    await until(lambda: not four._serving)  # its catch-up sync
    assert four.role == LEADER
    faulty.fail_at = faulty.commits + 1
    five = await open_tab()
    call = asyncio.ensure_future(five.send(chat.id, b"mid-write"))
    await until(lambda: faulty.commits == faulty.fail_at and not four._serving)
    assert not call.done()
    await crash(3)  # four died inside the write: it landed, nobody heard
    sent[b"mid-write"] = await call
    assert five.role == LEADER and five.client._requests.replayed == 1

    # A graceful close hands over too; a call made meanwhile waits for the next leader.
    six = await open_tab()
    leaving = asyncio.ensure_future(five.close())
    sent[b"after close"] = await six.send(chat.id, b"after close")
    await leaving
    assert six.role == LEADER
    await six.sync()
    await bob.sync()

    expected = [b"from one", b"from two", b"from three", *burst, b"warm up", b"mid-write", b"after close"]
    history = [m.plaintext for m in await six.history(chat.id)]
    assert sorted(history) == sorted(expected), history
    assert sorted(m.plaintext for m in await bob.history(chat.id)) == sorted(expected)
    by_seq = {}
    for raw in (await ds.fetch(chat.id, 0)).envelopes:
        envelope = MessageEnvelope.decode(raw)
        if envelope.sender_device == six.device_id and envelope.kind is MessageKind.APPLICATION:
            assert by_seq.setdefault(envelope.seq, raw) == raw, f"seq {envelope.seq} reused"
    assert len(by_seq) == len(expected)
    assert {sent[text].seq for text in expected} == set(by_seq)
    assert set(texts(events[5])) >= {b"after close"}

    # A call that times out may still be applied; retried with its id, it is applied once.
    seven = await open_tab(call_timeout_s=0.2)
    held = []
    six._withhold = held.append
    with pytest.raises(LeaderUnavailable) as timed_out:
        await seven.send(chat.id, b"timed out")
    six._withhold = None
    assert len(held) == 1
    retried = await seven.send(chat.id, b"timed out", request_id=timed_out.value.request_id)
    assert [m.seq for m in await seven.history(chat.id) if m.plaintext == b"timed out"] == [retried.seq]

    # Something that holds the storage without answering as a leader.
    await seven.close()
    await six.close()
    squatter = await origin.tab().acquire("ping_web:alice", wait=False)
    with pytest.raises(DatabaseInUse, match="does not answer"):
        await SharedDevice.open("alice", host=origin.tab(), open_storage=opener(98), announce_timeout_s=0.2)
    await squatter.release()
