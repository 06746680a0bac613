"""MessagingClient over IndexedDB, plain and encrypted: cold restart, nothing in the clear.

These run on every runtime (`--runtime node` with fake-indexeddb, `--runtime chrome` with
Chromium's own IndexedDB, Web Locks and WebCrypto). Chromium commits an IndexedDB
transaction as soon as control returns to the event loop, so an await inside a write
would fail there, not in Node.
"""

import pytest
from pytest_pyodide import run_in_pyodide


@pytest.mark.parametrize("encrypted", [False, True], ids=["indexeddb", "encrypted-indexeddb"])
@run_in_pyodide(packages=["ping_web"])
async def test_cold_restart_on_indexeddb(selenium, encrypted):
    import json
    import os

    import pytest

    from ping_web.client import MessagingClient
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import DatabaseInUse
    from ping_web.storage import NAMESPACES
    from ping_web.storage.encrypted import EncryptedStorage
    from ping_web.storage.indexeddb import IndexedDbStorage

    run = os.urandom(4).hex()

    async def open_storage(name):
        if encrypted:
            return await EncryptedStorage.open_indexeddb(f"{run}-{name}")
        return await IndexedDbStorage.open(f"{run}-{name}")

    ds = LocalDeliveryService()
    names = ["alice", "bob", "carol"]
    clients = {n: await MessagingClient.open(await open_storage(n), n.encode(), delivery=ds) for n in names}
    with pytest.raises(DatabaseInUse):
        await open_storage("alice")
    for c in clients.values():
        await c.publish_key_packages(3)

    async def add(owner, conv, others):
        entries = [(clients[o].device_id, await ds.claim_key_package(clients[o].device_id)) for o in others]
        await clients[owner].add_members(conv, entries)
        for o in others:
            await clients[o].sync()

    one = (await clients["alice"].create_conversation("one")).id
    await add("alice", one, ["bob", "carol"])
    two = (await clients["carol"].create_conversation("two")).id
    await add("carol", two, ["bob"])
    marker = f"secret-marker-{run}"
    sent = []
    for round_ in range(2):
        for n in names:
            text = f"{marker} {n} {round_}".encode()
            await clients[n].send(one, text)
            sent.append(text)
        for c in clients.values():
            assert (await c.sync()).rejected == []
    await clients["bob"].send(two, f"{marker} bob in two".encode())
    await clients["carol"].sync()

    for n in names:
        await clients[n].close()
    # Cold restart from IndexedDB alone, each in a fresh wasm instance.
    clients = {n: await MessagingClient.open(await open_storage(n), delivery=ds) for n in names}
    for n in names:
        assert sorted(m.plaintext for m in await clients[n].history(one)) == sorted(sent)
        assert {m.id for m in clients[n].conversations()} >= {one}
    assert [m.plaintext for m in await clients["carol"].history(two)] == [f"{marker} bob in two".encode()]
    await clients["carol"].send(one, b"after restart")
    for n in ("alice", "bob"):
        got = (await clients[n].sync()).messages
        assert [m.plaintext for m in got] == [b"after restart"]
    last = {}
    for raw in (await ds.fetch(one, 0)).envelopes:
        from ping_web.core.envelope import MessageEnvelope

        e = MessageEnvelope.decode(raw)
        assert last.get(e.sender_device, 0) < e.seq, "a seq was reused"
        last[e.sender_device] = e.seq

    if encrypted:
        # Nothing stored in the clear: no plaintext, no private key material.
        alice_store = clients["alice"]._storage
        inner = alice_store._inner if hasattr(alice_store, "_inner") else alice_store.inner
        private_keys = []
        for _, value in await alice_store.scan("mls", b"\x02SignatureKeyPair\x00"):
            pair = json.loads(value)
            private_keys.append(bytes(pair["private"]["vec"] if isinstance(pair["private"], dict) else pair["private"]))
        assert private_keys and all(len(k) >= 32 for k in private_keys)
        for namespace in NAMESPACES:
            for _, value in await inner.scan(namespace):
                assert marker.encode() not in value and b"after restart" not in value
                assert b'"private"' not in value and b"SignatureKeyPair" not in value
                assert all(k not in value for k in private_keys)
    for c in clients.values():
        await c.close()
