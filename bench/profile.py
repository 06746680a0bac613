"""Where the time of a ping-web round trip goes, inside Pyodide (run by bench/profile.mjs).

Two methods, because each alone misleads:

1. Category timers: a handful of functions are wrapped with perf_counter_ns timers that
   keep self time (a nested timed call is subtracted from its caller). Categories: wasm
   (MlsRuntime.call: the wasm export plus the FFI call itself), FFI glue (copying bytes in
   with to_js / out with to_bytes and the JsProxy attribute lookups around the call), CBOR
   (ping_web.core.codec encode/decode), hashing (SHA-256 in envelope.content_hash), storage
   (Storage.commit), and the rest (Python: client, conversation, envelope, cursor,
   records, asyncio). The wrappers themselves add ~1 us per wrapped call.
2. Isolated micro-measurements of the same operations, timed alone in a loop, to check
   the categories and to split "wasm" into the wasm work and the FFI crossing (the same
   export called from JavaScript on the same module is measured by bench/profile.mjs).

cProfile output of the same loop is printed last (its overhead inflates Python-heavy
code roughly 2x, so only its ordering is meaningful).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import time

from ping_web.client import MessagingClient
from ping_web.core import codec, envelope
from ping_web.mls import openmls as mls
from ping_web.storage import MemoryStorage

MESSAGES = 300
PLAINTEXT = bytes(range(200))

_now = time.perf_counter_ns


class Timers:
    def __init__(self) -> None:
        self.self_ns: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.stack: list[list[int]] = []  # [start, child_ns]
        self.enabled = False

    def wrap(self, category: str, fn):
        timers = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not timers.enabled:
                return fn(*args, **kwargs)
            frame = [_now(), 0]
            timers.stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = _now() - frame[0]
                timers.stack.pop()
                own = elapsed - frame[1]
                timers.self_ns[category] = timers.self_ns.get(category, 0) + own
                timers.calls[category] = timers.calls.get(category, 0) + 1
                if timers.stack:
                    timers.stack[-1][1] += elapsed

        return wrapper

    def wrap_async(self, category: str, fn):
        timers = self

        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            if not timers.enabled:
                return await fn(*args, **kwargs)
            # Storage commits run in the writer task; nothing else is timed while they run.
            start = _now()
            try:
                return await fn(*args, **kwargs)
            finally:
                timers.self_ns[category] = timers.self_ns.get(category, 0) + _now() - start
                timers.calls[category] = timers.calls.get(category, 0) + 1

        return wrapper


TIMERS = Timers()


def install(storage_classes) -> None:
    """Wrap the functions that define each category (before any client is made)."""
    t = TIMERS
    mls.MlsRuntime.call = t.wrap("wasm (export + FFI call)", mls.MlsRuntime.call)
    # Everything in mls.py around the call: to_js copies, to_bytes, JsProxy lookups, decoding.
    for cls, names in (
        (mls.Group, ("create_message", "process_message", "members")),
        (mls.Provider, ("checkpoint",)),
    ):
        for name in names:
            setattr(cls, name, t.wrap("FFI glue (mls.py)", getattr(cls, name)))
    for name in ("epoch", "is_active"):  # group_id and own_leaf_index are read once, at load
        prop = getattr(mls.Group, name)
        setattr(mls.Group, name, property(t.wrap("FFI glue (mls.py)", prop.fget)))
    codec.encode = t.wrap("CBOR (codec)", codec.encode)
    codec.decode = t.wrap("CBOR (codec)", codec.decode)
    envelope.content_hash = t.wrap("SHA-256 (hashlib)", envelope.content_hash)
    for cls in storage_classes:
        cls.commit = t.wrap_async("storage commit", cls.commit)


async def pair(storage_factory):
    alice = await MessagingClient.open(await storage_factory("a"), b"alice")
    bob = await MessagingClient.open(await storage_factory("b"), b"bob")
    meta = await alice.create_conversation("profile")
    kp = await bob.new_key_package()
    outcome = await alice.add_members(meta.id, [(bob.device_id, kp)])
    await alice.confirm_commit(meta.id)
    await bob.join(outcome.welcome.encode())
    return alice, bob, meta.id


async def round_trips(alice, bob, conversation_id, n):
    for _ in range(n):
        envelope_ = await alice.send(conversation_id, PLAINTEXT)
        got = await bob.receive(envelope_.encode())
        assert got[0].plaintext == PLAINTEXT


ROUNDS = 5


async def profile_storage(label, storage_factory) -> dict:
    """ROUNDS rounds of MESSAGES // ROUNDS round trips untimed, then timed, alternating."""
    import statistics

    alice, bob, cid = await pair(storage_factory)
    await round_trips(alice, bob, cid, 50)  # warm up
    per_round = MESSAGES // ROUNDS
    plain, timed, categories, calls = [], [], [], []
    for _ in range(ROUNDS):
        start = _now()
        await round_trips(alice, bob, cid, per_round)
        plain.append((_now() - start) / per_round)
        TIMERS.self_ns.clear()
        TIMERS.calls.clear()
        TIMERS.enabled = True
        start = _now()
        await round_trips(alice, bob, cid, per_round)
        elapsed = (_now() - start) / per_round
        TIMERS.enabled = False
        timed.append(elapsed)
        round_categories = {k: v / per_round for k, v in TIMERS.self_ns.items()}
        round_categories[PYTHON] = elapsed - sum(round_categories.values())
        categories.append(round_categories)
        calls.append({k: v / per_round for k, v in TIMERS.calls.items()})
    names = list(categories[0])
    return {
        "storage": label,
        "round_trip_us_untimed": statistics.median(plain) / 1000,
        "round_trip_us_timed": statistics.median(timed) / 1000,
        "categories_us": {k: statistics.median(c.get(k, 0) for c in categories) / 1000 for k in names},
        "calls_per_round_trip": calls[-1],
        "clients": (alice, bob, cid),
    }


PYTHON = "Python (client, conversation, envelope, cursor, records, asyncio)"


def ffi_split(rounds: int = 8, n: int = 100) -> dict:
    """The wasm calls of a round trip on one pair of groups, three ways, same process:
    from a JS loop (wasm work alone), from Python on raw JsProxy objects (+ the crossings),
    and through ping_web.mls (+ its glue: to_js copies, to_bytes, decoding results)."""
    import statistics

    from pyodide.code import run_js
    from pyodide.ffi import to_js

    runtime = mls.MlsRuntime.load()
    pa, pb = runtime.provider(), runtime.provider()
    ia, ib = pa.create_identity(b"alice"), pb.create_identity(b"bob")
    ga = pa.create_group(ia, bytes(range(16)))
    _, welcome = ga.add_members([ib.key_package()])
    ga.merge_pending_commit()
    gb = pb.join_group(ib, welcome)
    pa.checkpoint()
    pb.checkpoint()
    aad, sha = bytes(45), hashlib.sha256(PLAINTEXT).digest()
    pt_js, aad_js, sha_js = to_js(PLAINTEXT), to_js(aad), to_js(sha)
    js_loop = run_js(
        """(ga, gb, pa, pb, ia, pt, aad, sha, n) => {
             const t = performance.now();
             for (let i = 0; i < n; i++) {
               const c = ga.createMessage(pa, ia, pt, aad); pa.checkpoint();
               gb.processMessage(pb, c, aad, sha); pb.checkpoint();
             }
             return (performance.now() - t) / n * 1000; }"""
    )

    def raw() -> float:
        start = _now()
        for _ in range(n):
            c = ga.js.createMessage(pa.js, ia.js, pt_js, aad_js)
            pa.js.checkpoint()
            gb.js.processMessage(pb.js, c, aad_js, sha_js)
            pb.js.checkpoint()
        return (_now() - start) / n / 1000

    def wrapped() -> float:
        start = _now()
        for _ in range(n):
            c = ga.create_message(PLAINTEXT, aad)
            pa.checkpoint()
            gb.process_message(c, aad, sha)
            pb.checkpoint()
        return (_now() - start) / n / 1000

    js_us, raw_us, wrapped_us = [], [], []
    for _ in range(rounds):
        js_us.append(js_loop(ga.js, gb.js, pa.js, pb.js, ia.js, pt_js, aad_js, sha_js, n))
        raw_us.append(raw())
        wrapped_us.append(wrapped())
    med = statistics.median
    return {"js": med(js_us), "raw": med(raw_us), "wrapped": med(wrapped_us), "rounds": rounds, "n": n}


def micro(label: str, fn, n: int = 2000) -> tuple[str, float]:
    for _ in range(50):
        fn()
    start = _now()
    for _ in range(n):
        fn()
    return label, (_now() - start) / n / 1000


async def micro_async(label: str, fn, n: int = 2000) -> tuple[str, float]:
    for _ in range(20):
        await fn()
    start = _now()
    for _ in range(n):
        await fn()
    return label, (_now() - start) / n / 1000


async def micro_measurements(alice, bob, cid) -> list[tuple[str, float]]:
    from pyodide.ffi import to_js

    conversation = await alice.conversation(cid)
    group = conversation._group
    provider = group.provider
    out = []
    env = await alice.send(cid, PLAINTEXT)
    wire = env.encode()
    records = conversation.records()

    def encode_uncached():
        object.__setattr__(env, "_wire", None)  # envelopes keep their encoding once made
        return env.encode()

    out.append(micro("MessageEnvelope.encode (application, 200 B, not cached)", encode_uncached))
    out.append(micro("MessageEnvelope.decode + validate", lambda: envelope.MessageEnvelope.decode(wire)))
    out.append(micro("records(): meta+cursor+leaves+state CBOR", conversation.records))
    out.append(micro("codec.encode(meta-like map) alone", lambda: codec.encode({"v": 1, "c": b"x" * 16})))
    out.append(micro("codec.decode(cursor record)", lambda: codec.decode(records["cursor"])))
    out.append(micro("hashlib.sha256(200 B)", lambda: hashlib.sha256(PLAINTEXT).digest()))
    out.append(micro("to_js(bytes 200 B)", lambda: to_js(PLAINTEXT)))
    out.append(micro("to_js(bytes 400 B)", lambda: to_js(wire)))
    buf = __import__("js").Uint8Array.new(4096)
    out.append(micro("Uint8Array(4096).subarray(0,200).assign(bytes)", lambda: buf.subarray(0, 200).assign(PLAINTEXT)))
    out.append(micro("JsProxy getter group.js.epoch", lambda: group.js.epoch))
    out.append(micro("provider.checkpoint() with nothing changed", provider.checkpoint))
    out.append(micro("trivial JS call (provider.js.hasChanges)", lambda: provider.js.hasChanges))

    async def noop():
        return None

    loop = asyncio.get_running_loop()

    async def fut():
        f = loop.create_future()
        f.set_result(None)
        await f

    out.append(await micro_async("await of a coroutine (no suspension)", noop))
    out.append(await micro_async("await asyncio.sleep(0) (one loop turn)", lambda: asyncio.sleep(0), 500))
    return out


async def main(with_indexeddb: bool) -> str:
    storages = [MemoryStorage]
    if with_indexeddb:
        from ping_web.storage.indexeddb import IndexedDbStorage

        storages.append(IndexedDbStorage)
    install(storages)

    async def memory(_name):
        return MemoryStorage()

    results = [await profile_storage("MemoryStorage", memory)]
    if with_indexeddb:
        from ping_web.storage.indexeddb import IndexedDbStorage

        opened = itertools.count(1)

        async def idb(name):
            return await IndexedDbStorage.open(f"profile-{name}-{next(opened)}")

        results.append(await profile_storage("IndexedDbStorage (fake-indexeddb)", idb))
    alice, bob, cid = results[0].pop("clients")
    for r in results[1:]:
        r.pop("clients")
    micro_rows = await micro_measurements(alice, bob, cid)
    split = ffi_split()

    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    await round_trips(alice, bob, cid, MESSAGES)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(22)
    text.write("\n---- by cumulative time, ping_web functions only ----\n")
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats("ping_web/", 30)
    catchup = await profile_catchup()
    return json.dumps(
        {
            "breakdown": results,
            "micro": micro_rows,
            "cprofile": text.getvalue(),
            "messages": MESSAGES,
            "rounds": ROUNDS,
            "ffi": split,
            "catchup": catchup,
        }
    )


CATCHUP = 2000


async def profile_catchup() -> dict:
    """receive_batch of CATCHUP queued messages: wall time, then the same under cProfile."""
    import cProfile
    import io
    import pstats

    sender = await MessagingClient.open(MemoryStorage(), b"sender", create_device_group=False)
    receivers = [await MessagingClient.open(MemoryStorage(), f"r{i}".encode(), create_device_group=False)
                 for i in range(2)]  # fmt: skip
    meta = await sender.create_conversation("catch-up")
    outcome = await sender.add_members(meta.id, [(r.device_id, await r.new_key_package()) for r in receivers])
    await sender.confirm_commit(meta.id)
    for r in receivers:
        await r.join(outcome.welcome.encode())
    conversation = await sender.conversation(meta.id)
    now = int(time.time() * 1000)
    wires = [conversation.send_application(PLAINTEXT, now).encode() for _ in range(CATCHUP)]
    start = _now()
    got = await receivers[0].receive_batch(wires)
    wall = (_now() - start) / CATCHUP / 1000
    assert len(got.messages) == CATCHUP
    profiler = cProfile.Profile()
    profiler.enable()
    await receivers[1].receive_batch(wires)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return {"n": CATCHUP, "us_per_message": wall, "cprofile": text.getvalue()}
