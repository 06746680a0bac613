"""ping-web's benchmark cases, run inside Pyodide by bench/peers/pingweb_py.mjs.

The same cases as the JavaScript peers (bench/lib/driver.mjs), through ping-web's public
Python API: MessagingClient over MemoryStorage or IndexedDbStorage (fake-indexeddb in
Node), which persists the state of every operation (MLS working-set delta, cursor,
records, history, outbox) in one atomic batch before it returns. Timers run in Python
(time.perf_counter), so no benchmark loop crosses into JavaScript per message except
where ping-web itself does.

Entry points (each takes and returns JSON text): ``prepare(kind, params)``,
``rep(kind, params)``, ``sizes()``, ``versions()``.
"""

from __future__ import annotations

import itertools
import json
import time

from ping_web.client import MessagingClient
from ping_web.core.ids import DeviceId
from ping_web.mls.openmls import MlsRuntime
from ping_web.storage import NAMESPACES, MemoryStorage

PLAINTEXT = bytes(i % 256 for i in range(200))
_db_names = itertools.count(1)
_state: dict = {}


async def new_storage(kind: str, label: str):
    if kind == "idb":
        from ping_web.storage.indexeddb import IndexedDbStorage

        return await IndexedDbStorage.open(f"bench-py-{label}-{next(_db_names)}")
    return MemoryStorage()


async def new_client(label: str, storage_kind: str = "memory", storage=None) -> MessagingClient:
    storage = storage if storage is not None else await new_storage(storage_kind, label)
    return await MessagingClient.open(storage, label.encode(), create_device_group=False)


async def group_of_two(alice: MessagingClient, bob: MessagingClient):
    meta = await alice.create_conversation("bench")
    outcome = await alice.add_members(meta.id, [(bob.device_id, await bob.new_key_package())])
    await alice.confirm_commit(meta.id)
    await bob.join(outcome.welcome.encode())
    return meta.id


async def round_trip(alice, bob, cid) -> None:
    wire = (await alice.send(cid, PLAINTEXT)).encode()
    got = await bob.receive(wire)
    if len(got) != 1 or got[0].plaintext != PLAINTEXT:
        raise AssertionError("round trip: wrong plaintext")


async def pair(storage_kind: str):
    key = ("pair", storage_kind)
    if key not in _state:
        alice = await new_client("alice", storage_kind)
        bob = await new_client("bob", storage_kind)
        cid = await group_of_two(alice, bob)
        for _ in range(20):  # warm-up
            await round_trip(alice, bob, cid)
        _state[key] = (alice, bob, cid)
    return _state[key]


def other_key_packages(count: int) -> list[tuple[DeviceId, bytes]]:
    """KeyPackages of ``count`` distinct other devices (one wasm instance makes them all)."""
    provider = MlsRuntime.load().provider()
    return [(DeviceId.new(), provider.create_identity(f"other-{i}".encode()).key_package()) for i in range(count)]


async def _prepare(kind: str, params: dict) -> None:
    if kind == "throughput":
        await pair(params["storage"])
    elif kind == "catchup":
        sender = await new_client("sender")
        receivers = [await new_client(f"receiver{i}") for i in range(params["receivers"])]
        meta = await sender.create_conversation("catch-up")
        entries = [(r.device_id, await r.new_key_package()) for r in receivers]
        outcome = await sender.add_members(meta.id, entries)
        await sender.confirm_commit(meta.id)
        for r in receivers:
            await r.join(outcome.welcome.encode())
        # The queue is made with the Conversation API directly (untimed; nothing persisted).
        conversation = await sender.conversation(meta.id)
        now = int(time.time() * 1000)
        wires = [conversation.send_application(PLAINTEXT, now).encode() for _ in range(params["n"])]
        _state["catchup"] = {"receivers": receivers, "wires": wires, "next": 0}
    elif kind == "groupsize":
        # A group of N: alice, bob and N - 2 members who never send; alice sends, bob receives.
        store = MemoryStorage()
        alice = await new_client("alice", storage=store)
        bob = await new_client("bob")
        cid = (await alice.create_conversation("group")).id
        entries = [(bob.device_id, await bob.new_key_package()), *other_key_packages(params["N"] - 2)]
        outcome = await alice.add_members(cid, entries)
        await alice.confirm_commit(cid)
        await bob.join(outcome.welcome.encode())
        for _ in range(5):
            await round_trip(alice, bob, cid)
        stored = 0
        for ns in NAMESPACES:
            stored += sum(len(k) + len(v) for k, v in await store.scan(ns))
        memory = alice._runtime.memory_bytes if alice._runtime is not None else None
        _state["groupsize"] = (alice, bob, cid, stored, memory)
    elif kind == "history":
        await _prepare_history(params["storage"], params["stored"])
    elif kind == "membership":
        _state["membership"] = {
            "alice": await new_client("alice"),
            "bob": await new_client("bob"),
            "others": other_key_packages(params["N"] - 1),
        }
    elif kind == "identity":
        _state["identity"] = {"log": device_log_of(params["log"])}
    elif kind == "recovery":
        pass  # every rep builds its own group (a rejoin changes it)
    else:
        raise ValueError(f"unknown case {kind}")


def device_log_of(length: int) -> list[bytes]:
    """A user's device log of ``length`` entries, signed in wasm: a genesis, adds up to the
    16 active devices, then alternately a revoke and an add (untimed)."""
    from ping_web.core import devlog
    from ping_web.core.devlog import DeviceLog, LogOp
    from ping_web.core.ids import UserId

    provider = MlsRuntime.load().provider()
    user = UserId(b"hundred")
    first = provider.create_identity(user.raw)
    active = [(DeviceId.new(), first)]
    log = DeviceLog.start(_entry(devlog, LogOp.GENESIS, user, 0, devlog.NO_PREV, *active[0], first), None)
    while log.seq + 1 < length:
        if len(active) < devlog.MAX_ACTIVE_DEVICES:
            device = (DeviceId.new(), provider.create_identity(user.raw))
            entry = _entry(devlog, LogOp.ADD, user, log.seq + 1, log.head, *device, active[-1][1])
            active.append(device)
        else:
            device = active.pop(0)
            entry = _entry(devlog, LogOp.REVOKE, user, log.seq + 1, log.head, *device, active[-1][1])
        log = log.extend([entry], None)[0]
    return list(log.entries)


def _entry(devlog, op, user, seq, prev, device_id, identity, signer) -> bytes:  # type: ignore[no-untyped-def]
    unsigned = devlog.unsigned_entry(op, user, seq, prev, 1, device_id, identity.public_key, signer.public_key)
    consent = None
    if op is devlog.LogOp.ADD:
        content = devlog.consent_content(user, device_id, identity.public_key)
        consent = identity.sign_with_label(devlog.LABEL_CONSENT, content)
    return devlog.signed(unsigned, signer.sign_with_label(devlog.LABEL_ENTRY, unsigned.tbs()), consent).encode()


async def _identity_rep(params: dict) -> dict:
    """Verify a 100-entry device log; add ``users`` users' devices and join, with the device
    checks on and off, side by side (fresh clients, so every log is a first contact)."""
    from ping_web.core.devlog import DeviceLog
    from ping_web.delivery import LocalDeliveryService

    entries = _state["identity"]["log"]
    runtime = MlsRuntime.load()
    start = time.perf_counter()
    DeviceLog.replay(entries, runtime)
    verify = (time.perf_counter() - start) * 1000
    result = {"verify": verify, "entries": len(entries)}
    for checked in (True, False):
        ds = LocalDeliveryService()
        alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
        joiner = await MessagingClient.open(MemoryStorage(), b"joiner", delivery=ds)
        users = [await MessagingClient.open(MemoryStorage(), f"user{i}".encode(), delivery=ds)
                 for i in range(params["users"] - 1)]  # fmt: skip
        for client in (alice, joiner, *users):
            client._vetting.enabled = checked
        cid = (await alice.create_conversation("identity")).id
        packages = [(u.device_id, await u.new_key_package()) for u in (*users, joiner)]
        start = time.perf_counter()
        outcome = await alice.add_members(cid, packages)
        add = time.perf_counter() - start
        start = time.perf_counter()
        await joiner.join(outcome.welcome.encode())
        join = time.perf_counter() - start
        suffix = "checked" if checked else "unchecked"
        result[f"add_{suffix}"], result[f"join_{suffix}"] = add * 1000, join * 1000
        for client in (alice, joiner, *users):
            await client.close()
    return result


async def _recovery_rep(params: dict) -> dict:
    """A stale copy of a member rejoins a group of ``N`` by external commit (created, then
    processed by another member); and a history bundle of ``history`` messages goes to a
    new device of the same user (built and sent, then imported). Device checks off: the
    identity case measures those."""
    from ping_web.delivery import LocalDeliveryService, RosterChange

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    for client in (alice, bob):
        client._vetting.enabled = False
    cid = (await alice.create_conversation("recovery")).id
    await alice.add_members(cid, [(bob.device_id, await bob.new_key_package()), *other_key_packages(params["N"] - 2)])
    await bob.sync()
    backup = await bob.backup()
    first = await MessagingClient.restore(MemoryStorage(), backup, delivery=ds)
    first._vetting.enabled = False
    await first.send(cid, PLAINTEXT)  # this copy's self-update: the backup is no longer current
    second = await MessagingClient.restore(MemoryStorage(), backup, delivery=ds)
    second._vetting.enabled = False
    await alice.sync()  # untimed: everything before the external commit
    group_info = await ds.group_info(cid)
    conversation = await second.conversation(cid)
    start = time.perf_counter()
    commit = conversation.rejoin(group_info, int(time.time() * 1000))
    rejoin = time.perf_counter() - start
    await ds.commit(commit.encode(), None, RosterChange(), external=True)
    start = time.perf_counter()
    await alice.receive(commit)
    process = time.perf_counter() - start
    if (await alice.conversation(cid)).epoch() != commit.epoch + 1:
        raise AssertionError("recovery: the member did not apply the external commit")
    result = {"rejoin": rejoin * 1000, "process": process * 1000}
    if params.get("history"):
        result.update(await _history_rep(params["history"]))
    for client in (alice, bob, first, second):
        await client.close()
    return result


async def _history_rep(count: int) -> dict:
    """A device with ``count`` stored messages in one conversation sends them to a newly
    linked device of its user (``share_history``: built, encrypted, posted), which imports
    them (its ``sync``)."""
    import asyncio
    import hashlib

    from ping_web.client import keys
    from ping_web.core.envelope import IncomingMessage
    from ping_web.core.hlc import Hlc
    from ping_web.delivery import LocalDeliveryService
    from ping_web.storage import Batch

    ds = LocalDeliveryService()
    phone = await MessagingClient.open(MemoryStorage(), b"history", delivery=ds)
    cid = (await phone.create_conversation("history")).id
    laptop = await MessagingClient.open(MemoryStorage(), b"history", delivery=ds, linked=True)
    code = await phone.start_link()
    linking = asyncio.ensure_future(laptop.request_link(code))
    await phone.approve_link(code, await phone.wait_link_request(code))
    await linking
    await laptop.sync()
    digest = hashlib.sha256(PLAINTEXT).digest()
    batch = Batch()
    for i in range(count):
        message = IncomingMessage(cid, phone.device_id, phone.user_id, 0, 1_000_000 + i, Hlc(1_000 + i, 0),
                                  PLAINTEXT, digest)  # fmt: skip
        batch.put(keys.HISTORY, keys.history_key(message), message.encode())
    await phone._storage.commit(batch)
    start = time.perf_counter()
    sent = await phone.share_history(laptop.device_id, max_messages=count)
    send = time.perf_counter() - start
    start = time.perf_counter()
    await laptop.sync()
    imported = time.perf_counter() - start
    if sent != count or len(await laptop.history(cid)) != count:
        raise AssertionError("history: not every message arrived")
    for client in (phone, laptop):
        await client.close()
    return {"history_send": send * 1000, "history_import": imported * 1000}


async def _rep(kind: str, params: dict) -> dict:
    if kind == "throughput":
        alice, bob, cid = await pair(params["storage"])
        n, op = params["n"], params["op"]
        if op == "send":
            start = time.perf_counter()
            wires = [(await alice.send(cid, PLAINTEXT)).encode() for _ in range(n)]
            seconds = time.perf_counter() - start
            for wire in wires:  # untimed: keep bob in step
                await bob.receive(wire)
            return {"value": n / seconds}
        if op == "receive":
            wires = [(await alice.send(cid, PLAINTEXT)).encode() for _ in range(n)]
            start = time.perf_counter()
            for wire in wires:
                await bob.receive(wire)
            return {"value": n / (time.perf_counter() - start)}
        if op == "roundtrip":
            start = time.perf_counter()
            for _ in range(n):
                await round_trip(alice, bob, cid)
            return {"value": n / (time.perf_counter() - start)}
        raise ValueError(f"unknown op {op}")
    if kind == "catchup":
        c = _state["catchup"]
        receiver = c["receivers"][c["next"]]
        c["next"] += 1
        start = time.perf_counter()
        outcome = await receiver.receive_batch(c["wires"])
        seconds = time.perf_counter() - start
        if outcome.rejected or len(outcome.messages) != len(c["wires"]):
            raise AssertionError(f"catch-up: {len(outcome.messages)} stored, {len(outcome.rejected)} rejected")
        return {"value": len(c["wires"]) / seconds, "ms": seconds * 1000}
    if kind == "groupsize":
        alice, bob, cid, stored, memory = _state["groupsize"]
        n = params["n"]
        start = time.perf_counter()
        wires = [(await alice.send(cid, PLAINTEXT)).encode() for _ in range(n)]
        send = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for wire in wires:
            await bob.receive(wire)
        return {"send": send, "receive": n / (time.perf_counter() - start), "stored": stored, "memory": memory}
    if kind == "history":
        h = _state["history"]
        alice, bob, cid, n = h["alice"], h["bob"], h["cid"], params["n"]
        start = time.perf_counter()
        wires = [(await alice.send(cid, PLAINTEXT)).encode() for _ in range(n)]
        send = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for wire in wires:
            await bob.receive(wire)
        receive = n / (time.perf_counter() - start)
        # Reopen: a cold restart of bob's device from its storage, up to the conversation loaded.
        await bob.close()
        start = time.perf_counter()
        storage = await h["reopen"]()
        bob = await MessagingClient.open(storage)
        await bob.conversation(cid)
        reopen = (time.perf_counter() - start) * 1000
        h["bob"] = bob
        return {"send": send, "receive": receive, "reopen": reopen}
    if kind == "membership":
        m = _state["membership"]
        alice, bob = m["alice"], m["bob"]
        joiner = await new_client("joiner")
        joiner_kp = await joiner.new_key_package()
        cid = (await alice.create_conversation("members")).id
        first = await alice.add_members(cid, [(bob.device_id, await bob.new_key_package())])
        await alice.confirm_commit(cid)
        await bob.join(first.welcome.encode())
        start = time.perf_counter()
        outcome = await alice.add_members(cid, [*m["others"], (joiner.device_id, joiner_kp)])
        await alice.confirm_commit(cid)
        commit, welcome = outcome.commit.encode(), outcome.welcome.encode()
        add = time.perf_counter() - start
        start = time.perf_counter()
        await bob.receive(commit)
        process = time.perf_counter() - start
        start = time.perf_counter()
        await joiner.join(welcome)
        join = time.perf_counter() - start
        got = await joiner.receive((await alice.send(cid, PLAINTEXT)).encode())
        if [g.plaintext for g in got] != [PLAINTEXT]:
            raise AssertionError("the joiner cannot read the new epoch")
        await joiner.close()
        return {"add": add * 1000, "process": process * 1000, "join": join * 1000,
                "commitBytes": len(outcome.commit.payload), "welcomeBytes": len(outcome.welcome.payload)}  # fmt: skip
    if kind == "identity":
        return await _identity_rep(params)
    if kind == "recovery":
        return await _recovery_rep(params)
    raise ValueError(f"unknown case {kind}")


async def _prepare_history(storage_kind: str, stored: int) -> None:
    """A conversation of two whose devices each hold ``stored`` messages of history."""
    import hashlib

    from ping_web.client import keys
    from ping_web.core.envelope import IncomingMessage
    from ping_web.core.hlc import Hlc
    from ping_web.storage import Batch

    names = {who: f"bench-py-history-{who}-{next(_db_names)}" for who in ("alice", "bob")}
    if storage_kind == "idb":
        from ping_web.storage.indexeddb import IndexedDbStorage

        stores = {who: await IndexedDbStorage.open(name) for who, name in names.items()}
    else:
        stores = {who: MemoryStorage() for who in names}
    alice = await new_client("alice", storage=stores["alice"])
    bob = await new_client("bob", storage=stores["bob"])
    cid = await group_of_two(alice, bob)
    for _ in range(3):
        await round_trip(alice, bob, cid)
    digest = hashlib.sha256(PLAINTEXT).digest()
    start_ms = int(time.time() * 1000) - stored - 60_000
    for store in stores.values():
        for first in range(0, stored, 10_000):
            batch = Batch()
            for i in range(first, min(stored, first + 10_000)):
                message = IncomingMessage(
                    cid, alice.device_id, alice.user_id, 1, 1_000_000 + i, Hlc(start_ms + i, 0), PLAINTEXT, digest
                )
                batch.put(keys.HISTORY, keys.history_key(message), message.encode())
            await store.commit(batch)
    if storage_kind == "idb":

        async def reopen():
            return await IndexedDbStorage.open(names["bob"])
    else:
        memory = stores["bob"]

        async def reopen():
            nonlocal memory
            memory = memory.reopen()
            return memory

    _state["history"] = {"alice": alice, "bob": bob, "cid": cid, "reopen": reopen}


class CountingStorage:
    """Wraps a storage and counts the bytes (keys + values) every commit writes."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.written = 0

    async def get(self, namespace, key):
        return await self.inner.get(namespace, key)

    async def scan(self, namespace, prefix=b""):
        return await self.inner.scan(namespace, prefix)

    async def commit(self, batch) -> None:
        self.written += sum(len(k) + len(v) for _, k, v in batch.puts)
        await self.inner.commit(batch)

    async def close(self) -> None:
        await self.inner.close()

    async def total(self) -> int:
        total = 0
        for namespace in NAMESPACES:
            total += sum(len(k) + len(v) for k, v in await self.inner.scan(namespace))
        return total


async def _sizes() -> dict:
    sa, sb = CountingStorage(MemoryStorage()), CountingStorage(MemoryStorage())
    alice = await new_client("alice", storage=sa)
    bob = await new_client("bob", storage=sb)
    kp = await bob.new_key_package()
    cid = (await alice.create_conversation("sizes")).id
    before = await sb.total()
    outcome = await alice.add_members(cid, [(bob.device_id, kp)])
    await alice.confirm_commit(cid)
    await bob.join(outcome.welcome.encode())
    per_conversation = await sb.total() - before
    after_join = await sb.total()
    written = sa.written + sb.written
    messages = 100
    for _ in range(messages):
        envelope = await alice.send(cid, PLAINTEXT)
        wire = envelope.encode()
        await bob.receive(wire)
    return {
        "keyPackage": len(kp),
        "welcome": len(outcome.welcome.payload),
        "welcomeEnvelope": len(outcome.welcome.encode()),
        "commit": len(outcome.commit.payload),
        "commitEnvelope": len(outcome.commit.encode()),
        "ciphertext": len(envelope.payload),
        "ciphertextEnvelope": len(wire),
        "totalAfterJoin": after_join,
        "perConversation": per_conversation,
        "perMessage": (await sb.total() - after_join) / messages,
        "writtenPerMessage": (sa.written + sb.written - written) / messages,
    }


async def prepare(kind: str, params: str) -> str:
    await _prepare(kind, json.loads(params))
    return "null"


async def rep(kind: str, params: str) -> str:
    return json.dumps(await _rep(kind, json.loads(params)))


async def sizes() -> str:
    return json.dumps(await _sizes())


def versions() -> str:
    import sys

    return json.dumps({**MlsRuntime.load().build_info, "python": sys.version.split()[0]})
