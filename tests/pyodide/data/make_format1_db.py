"""Writes format1_db.json: two devices' storage as ping-web wrote it while the OpenMLS
working-set values were JSON (storage value format 1), for test_storage_format.py.

Run inside Pyodide with a wheel of that revision (the file in this directory was made by
revision be4d47d's wheel, under Node). The output is every namespace of both devices'
MemoryStorage, keys and values in hex, plus what the test expects to find.
"""

import json

from ping_web.client import MessagingClient
from ping_web.storage import NAMESPACES, MemoryStorage

CLOCK = iter(range(1_800_000_000_000, 1_900_000_000_000, 1000))


def clock() -> int:
    return next(CLOCK)


async def dump(storage: MemoryStorage) -> dict[str, list[list[str]]]:
    storage = storage.reopen()  # the client closed it
    return {ns: [[k.hex(), v.hex()] for k, v in await storage.scan(ns)] for ns in NAMESPACES}


async def main() -> str:
    alice_store, bob_store = MemoryStorage(), MemoryStorage()
    alice = await MessagingClient.open(alice_store, b"alice", clock=clock)
    bob = await MessagingClient.open(bob_store, b"bob", clock=clock)
    spare_key_package = await bob.new_key_package()  # left unused: a KeyPackage entry stays
    cid = (await alice.create_conversation("format 1")).id
    added = await alice.add_members(cid, [(bob.device_id, await bob.new_key_package())])
    await alice.confirm_commit(cid)
    await bob.join(added.welcome.encode())
    texts = []
    for i in range(3):
        text = f"alice {i}".encode()
        await bob.receive((await alice.send(cid, text)).encode())
        texts.append(text)
    update = await bob.self_update(cid)  # a second epoch: past epoch secrets are kept
    await bob.confirm_commit(cid)
    await alice.receive(update.encode())
    for i in range(2):
        text = f"bob {i}".encode()
        await alice.receive((await bob.send(cid, text)).encode())
        texts.append(text)
    await alice.close()
    await bob.close()
    return json.dumps(
        {
            "made_by": "ping-web be4d47d (OpenMLS working-set values in JSON)",
            "conversation": cid.raw.hex(),
            "texts": [t.decode() for t in texts],
            "spare_key_package": spare_key_package.hex(),
            "devices": {"alice": await dump(alice_store), "bob": await dump(bob_store)},
        },
        indent=1,
    )
