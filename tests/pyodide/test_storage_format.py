"""A database written before storage value format 2 opens and carries on.

``data/format1_db.json`` is two devices' storage as ping-web wrote it while every OpenMLS
working-set value was JSON (format 1; made by ``data/make_format1_db.py``): alice and bob in
one conversation, messages both ways, a self-update, and a spare KeyPackage of bob's. This
version reads every value in either format and writes group values in format 2 as they
change, each in the batch of the operation that changed it (docs/storage.md).
"""

import json
from pathlib import Path
from typing import Any

import pytest
from pytest_pyodide import run_in_pyodide

DATA = Path(__file__).parent / "data" / "format1_db.json"


@pytest.fixture
def format1_db() -> Any:
    return json.loads(DATA.read_text())


@pytest.mark.parametrize("backend", ["memory", "indexeddb"])
@run_in_pyodide(packages=["ping_web"])
async def test_a_format_1_database_opens_and_moves_to_format_2(selenium, format1_db, backend):
    import json
    import os

    from ping_web.client import MessagingClient
    from ping_web.core.ids import ConversationId
    from ping_web.storage import Batch, MemoryStorage
    from ping_web.storage.indexeddb import IndexedDbStorage

    run = os.urandom(4).hex()
    db = format1_db
    cid = ConversationId(bytes.fromhex(db["conversation"]))

    async def open_storage(name, rows=None):
        storage = MemoryStorage() if backend == "memory" else await IndexedDbStorage.open(f"{run}-{name}")
        if rows is not None:
            batch = Batch()
            for namespace, entries in rows.items():
                for key, value in entries:
                    batch.put(namespace, bytes.fromhex(key), bytes.fromhex(value))
            await storage.commit(batch)
        return storage

    def is_json(value):
        try:
            json.loads(value)
        except ValueError:
            return False
        return True

    async def group_formats(client):
        """Format of each group-scoped OpenMLS value of the conversation: "json", or the
        first byte of a format-2 value. Chunks (their keys alone have a 0xff) are left out."""
        prefix = client._engine.group_prefix(cid.raw)
        rows = await client._storage.scan("mls", prefix)
        return {key: ("json" if is_json(value) else value[0]) for key, value in rows if b"\xff" not in key}

    stores = {name: await open_storage(name, rows) for name, rows in db["devices"].items()}
    alice = await MessagingClient.open(stores["alice"])
    bob = await MessagingClient.open(stores["bob"])
    assert {m.id for m in alice.conversations()} >= {cid}
    for client in (alice, bob):
        assert [m.plaintext.decode() for m in await client.history(cid)] == db["texts"]
    before = await group_formats(alice)
    assert before and all(f == "json" for f in before.values())

    # Both ways, as before the upgrade.
    got = await bob.receive((await alice.send(cid, b"alice, after the upgrade")).encode())
    assert [m.plaintext for m in got] == [b"alice, after the upgrade"]
    got = await alice.receive((await bob.send(cid, b"bob, after the upgrade")).encode())
    assert [m.plaintext for m in got] == [b"bob, after the upgrade"]
    # The message secrets were written again: in format 2, the rest is still JSON.
    after = await group_formats(alice)
    assert any(f in (2, 3) for f in after.values()) and any(f == "json" for f in after.values())

    # A commit, then bob's spare KeyPackage (a JSON entry of his) joins a new conversation.
    update = await alice.self_update(cid)
    await alice.confirm_commit(cid)
    await bob.receive(update.encode())
    other = (await alice.create_conversation("after the upgrade")).id
    added = await alice.add_members(other, [(bob.device_id, bytes.fromhex(db["spare_key_package"]))])
    await alice.confirm_commit(other)
    await bob.join(added.welcome.encode())
    got = await bob.receive((await alice.send(other, b"in the new conversation")).encode())
    assert [m.plaintext for m in got] == [b"in the new conversation"]
    assert sum(f == "json" for f in (await group_formats(alice)).values()) < sum(f == "json" for f in after.values())

    # A restart reads the mix of formats.
    await alice.close()
    await bob.close()
    if backend == "memory":
        alice = await MessagingClient.open(stores["alice"].reopen())
        bob = await MessagingClient.open(stores["bob"].reopen())
    else:
        alice = await MessagingClient.open(await open_storage("alice"))
        bob = await MessagingClient.open(await open_storage("bob"))
    got = await alice.receive((await bob.send(cid, b"after a restart")).encode())
    assert [m.plaintext for m in got] == [b"after a restart"]
    got = await bob.receive((await alice.send(other, b"there too")).encode())
    assert [m.plaintext for m in got] == [b"there too"]
    history = [m.plaintext.decode() for m in await bob.history(cid)]
    assert history[: len(db["texts"])] == db["texts"]
    assert sorted(history[len(db["texts"]) :]) == [
        "after a restart",
        "alice, after the upgrade",
        "bob, after the upgrade",
    ]
    await alice.close()
    await bob.close()
