"""RelayDelivery in Pyodide (Node: fetch, and WebSocket with --experimental-websocket) against a
real relay process on 127.0.0.1 (``relay`` fixture, SQLite). Waits are on notices and
connection-state events, never on timers.

The restart test runs in steps: the relay is SIGKILLed and started again by the host
between them, while the clients live on in the same Pyodide.
"""

from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
async def _chat(selenium, url):
    import asyncio

    from ping_web.client import MessagingClient
    from ping_web.core.ids import UserId
    from ping_web.delivery.relay import RelayDelivery
    from ping_web.delivery.relay_wire import b64e
    from ping_web.errors import StateConflict
    from ping_web.storage import MemoryStorage

    events = {"alice": asyncio.Event(), "bob": asyncio.Event()}

    def delivery(name, **options):
        return RelayDelivery(url, on_notice=lambda notice: events[name].set(), backoff_cap_s=1.0, **options)

    async def until(name, condition, limit_s=30):
        """Wait for notices to ``name`` until ``condition()`` (a coroutine) is truthy."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + limit_s
        while True:
            events[name].clear()
            value = await condition()
            if value:
                return value
            await asyncio.wait_for(events[name].wait(), deadline - loop.time())

    async def _joined(client, conversation_id):
        await client.sync()
        return conversation_id in {m.id for m in client.conversations()}

    async def _texts(client, conversation_id):
        await client.sync()
        return [m.plaintext for m in await client.history(conversation_id) if m.sender_device != client.device_id]

    async def _has(client, conversation_id, text):
        await client.sync()
        return text in [m.plaintext for m in await client.history(conversation_id)]

    da, db = delivery("alice"), delivery("bob")
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=da)
    bob_store = MemoryStorage()
    bob = await MessagingClient.open(bob_store, b"bob", delivery=db)
    await bob.publish_key_packages(3)
    assert da.state.status in ("connecting", "connected") and da.state.push == "websocket"

    # alice creates and adds bob's device (from the relay's device list) with a claimed KeyPackage.
    chat = await alice.create_conversation("chat")
    (bob_device,) = await da.devices_of(UserId(b"bob"))
    assert bob_device == bob.device_id
    await alice.add_members(chat.id, [(bob_device, await da.claim_key_package(bob_device))])
    group = await da.group(chat.id)
    assert group["creator"] == b64e(alice.device_id.raw) and group["epoch"] == 1 and group["head"] == 1
    assert sorted(m["device_id"] for m in group["members"]) == sorted(
        b64e(d.raw) for d in (alice.device_id, bob_device)
    )

    # bob learns of the Welcome by push, joins, reads.
    await until("bob", lambda: _joined(bob, chat.id))
    sent = await alice.send(chat.id, b"hello bob")
    got = await until("bob", lambda: _texts(bob, chat.id))
    assert got == [b"hello bob"]

    # Pushed entries answered the fetch without a request to the relay.
    before = db.requests
    await alice.send(chat.id, b"pushed")
    assert await until("bob", lambda: _has(bob, chat.id, b"pushed"))
    assert db.requests == before  # the Welcome check and the log: both answered from the stream

    # A post repeated with the same bytes is in the log once (the relay answers its first seq).
    head = (await da.group(chat.id))["head"]
    assert await da.post(sent.encode()) is True
    assert (await da.group(chat.id))["head"] == head

    # Both commit for the same epoch at once: the relay takes one; the other is discarded,
    # raises StateConflict, and its author has applied the winner.
    results = await asyncio.gather(alice.self_update(chat.id), bob.self_update(chat.id), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], StateConflict), results
    await alice.sync()
    await bob.sync()
    assert (await alice.conversation(chat.id)).epoch() == (await bob.conversation(chat.id)).epoch() == 2
    # A sync running while alice's own commit is being settled may settle it too: once.
    epoch = (await alice.conversation(chat.id)).epoch()
    for _ in range(3):
        await asyncio.gather(alice.self_update(chat.id), alice.sync(), alice.sync())
    assert (await alice.conversation(chat.id)).epoch() == epoch + 3
    await bob.sync()
    await bob.send(chat.id, b"after the race")
    assert await until("alice", lambda: _has(alice, chat.id, b"after the race"))

    # bob restarts: his log positions come back from storage; nothing is read twice.
    await bob.sync()
    positions = dict(bob._log_positions)
    assert positions[chat.id] == (await da.group(chat.id))["head"]
    await bob.close()
    await db.close()
    db2 = delivery("bob")
    bob2 = await MessagingClient.open(bob_store.reopen(), delivery=db2)
    assert bob2._log_positions == positions
    again = await bob2.sync()
    assert again.messages == [] and again.rejected == []

    # An expired or unknown token is renewed on the 401, and the request goes through.
    db2._token = b64e(b"\x00" * 32)
    await bob2.send(chat.id, b"with a new token")
    assert db2._token != b64e(b"\x00" * 32)
    assert await until("alice", lambda: _has(alice, chat.id, b"with a new token"))

    # alice removes bob: the relay's roster ends his membership at that commit.
    leaf = (await alice.conversation(chat.id)).leaf_index_of(bob2.device_id)
    await alice.remove_members(chat.id, [leaf])
    roster = {m["device_id"]: m for m in (await da.group(chat.id))["members"]}
    assert roster[b64e(bob2.device_id.raw)]["removed_at"] is not None
    await alice.send(chat.id, b"bob cannot read this")
    await bob2.sync()
    assert (await bob2.conversation(chat.id)).state.removed
    assert b"bob cannot read this" not in [m.plaintext for m in await bob2.history(chat.id)]
    for d in (da, db2):
        assert d.state.status == "connected" and d.state.queued == 0
        assert d.stream_errors == []  # subscriptions and acknowledgements all taken
        await d.close()
        assert d.state.status == "closed"


def test_clients_chat_through_the_relay(selenium, relay):
    _chat(selenium, relay.url)


@run_in_pyodide(packages=["ping_web"])
async def _polling(selenium, url):
    import asyncio

    from pyodide.code import run_js

    from ping_web.client import MessagingClient
    from ping_web.core.ids import UserId
    from ping_web.delivery.relay import RelayDelivery
    from ping_web.storage import MemoryStorage

    heard = asyncio.Event()
    da = RelayDelivery(url, push="polling", poll_interval_s=0.2)
    # A host without WebSocket (Node 20 without --experimental-websocket): "auto" polls.
    websocket = run_js("globalThis.WebSocket")
    run_js("delete globalThis.WebSocket")
    try:
        db = RelayDelivery(url, poll_interval_s=0.2, on_notice=lambda notice: heard.set())
        alice = await MessagingClient.open(MemoryStorage(), b"ann", delivery=da)
        bob = await MessagingClient.open(MemoryStorage(), b"ben", delivery=db)
    finally:
        run_js("(w) => { globalThis.WebSocket = w; }")(websocket)
    await bob.publish_key_packages(1)
    chat = await alice.create_conversation()
    (device,) = await da.devices_of(UserId(b"ben"))
    await alice.add_members(chat.id, [(device, await da.claim_key_package(device))])
    await asyncio.wait_for(heard.wait(), 30)  # the poller saw the Welcome
    await bob.sync()
    heard.clear()
    await alice.send(chat.id, b"polled")
    await asyncio.wait_for(heard.wait(), 30)  # ... and the new entry
    messages = (await bob.sync()).messages
    assert [m.plaintext for m in messages] == [b"polled"]
    assert db.state.push == "polling" and db.state.status == "connected"
    assert "no WebSocket" in db.state.detail and "asked for" in da.state.detail
    await da.close()
    await db.close()


def test_polling_where_there_is_no_websocket(selenium, relay):
    _polling(selenium, relay.url)


@run_in_pyodide(packages=["ping_web"])
async def _before_the_kill(selenium, url):
    import asyncio
    import builtins

    from ping_web.client import MessagingClient
    from ping_web.core.ids import UserId
    from ping_web.delivery.relay import RelayDelivery
    from ping_web.storage import MemoryStorage

    state = builtins.relay_test = {"states": [], "changed": asyncio.Event(), "heard": asyncio.Event()}

    def on_state(s):
        state["states"].append(s)
        state["changed"].set()

    da = RelayDelivery(url, on_state=on_state, backoff_cap_s=1.0, retry_for_s=1.0)
    db = RelayDelivery(url, on_notice=lambda n: state["heard"].set(), backoff_cap_s=1.0)
    alice = await MessagingClient.open(MemoryStorage(), b"amy", delivery=da)
    bob = await MessagingClient.open(MemoryStorage(), b"bo", delivery=db)
    await bob.publish_key_packages(1)
    chat = await alice.create_conversation()
    (device,) = await da.devices_of(UserId(b"bo"))
    await alice.add_members(chat.id, [(device, await da.claim_key_package(device))])
    await bob.sync()
    await alice.send(chat.id, b"before")
    state.update(alice=alice, bob=bob, da=da, db=db, chat=chat.id)


@run_in_pyodide(packages=["ping_web"])
async def _while_down(selenium):
    import asyncio
    import builtins

    state = builtins.relay_test
    alice, da, chat = state["alice"], state["da"], state["chat"]
    while da.state.status == "connected":  # the stream notices the relay is gone
        state["changed"].clear()
        await asyncio.wait_for(state["changed"].wait(), 30)
    for i in range(3):
        await alice.send(chat, b"queued %d" % i)  # stored; the relay cannot take it: queued
    assert len(await alice.outbox()) == 3
    assert da.state.queued >= 1 and da.state.status in ("reconnecting", "offline")
    assert da.state.retry_in_s is not None and da.state.retry_in_s <= 1.0  # capped backoff


@run_in_pyodide(packages=["ping_web"])
async def _after_the_restart(selenium):
    import asyncio
    import builtins

    state = builtins.relay_test
    alice, bob, da, chat = state["alice"], state["bob"], state["da"], state["chat"]
    while da.state.status != "connected":
        state["changed"].clear()
        await asyncio.wait_for(state["changed"].wait(), 60)
    await alice.sync()  # what the app does on "connected": the outbox goes out, in order
    assert await alice.outbox() == [] and da.state.queued == 0
    wanted = [b"before", b"queued 0", b"queued 1", b"queued 2"]
    while True:
        state["heard"].clear()
        await bob.sync()
        texts = [m.plaintext for m in await bob.history(chat)]
        if len(texts) >= len(wanted):
            break
        await asyncio.wait_for(state["heard"].wait(), 60)
    assert texts == wanted  # each once, in order
    statuses = [s.status for s in state["states"]]
    assert statuses[-1] == "connected" and "reconnecting" in statuses
    attempts = [s.attempt for s in state["states"] if s.status != "connected"]
    assert max(attempts) >= 1
    for d in (state["da"], state["db"]):
        await d.close()


def test_reconnects_after_a_relay_restart_and_posts_what_waited(selenium, relay):
    _before_the_kill(selenium, relay.url)
    relay.kill()
    _while_down(selenium)
    relay.start()
    _after_the_restart(selenium)
