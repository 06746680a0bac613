"""A conformance kit for :class:`~ping_web.storage.Storage` backends, ours and third parties'.

``await check_storage(open_storage)`` runs every check of the protocol's contract against
a backend: ``open_storage()`` must open one fresh, initially empty database, and calling
it again must open the same database (so persistence across close/reopen and the
single-owner rule can be checked). Each check raises ``AssertionError`` saying what
differs. :func:`check_encryption` adds the checks specific to
:class:`~ping_web.storage.encrypted.EncryptedStorage`.

This module is shipped in the wheel because pytest-pyodide runs only a test's body inside
Pyodide: shared test code must be importable from the package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ping_web.errors import DatabaseInUse, InvalidInput, StorageCorrupted, StorageUnavailable
from ping_web.storage.base import NAMESPACES, Batch, Storage

__all__ = ["check_encryption", "check_storage", "EDGE_KEYS"]

Opener = Callable[[], Awaitable[Storage]]

EDGE_KEYS: tuple[bytes, ...] = (
    b"\x00", b"\x00\x00", b"\x01", b"a", b"a\x00", b"a\x7f", b"a\x80", b"a\xff", b"a\xff\x00",
    b"a\xff\xff", b"ab", b"b", b"\xfe\xff", b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\xff",
)  # fmt: skip
"""Keys around the edges of bytewise order: NUL, 0x7f/0x80, runs of 0xff, prefixes of each other."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


async def _expect_raises(error: type[BaseException], awaitable: Awaitable[Any], what: str) -> BaseException:
    try:
        await awaitable
    except error as exc:
        return exc
    except BaseException as exc:
        raise AssertionError(f"{what}: expected {error.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{what}: expected {error.__name__}, nothing was raised")


async def _clear(storage: Storage) -> None:
    batch = Batch()
    for namespace in NAMESPACES:
        batch.delete_prefix(namespace, b"")
    await storage.commit(batch)


async def check_reads_and_scans(storage: Storage) -> None:
    """get/scan over edge keys: bytewise order, empty prefix, 0xff runs, namespaces kept apart."""
    await _clear(storage)
    for namespace in NAMESPACES:
        _expect(await storage.scan(namespace) == [], f"{namespace}: a cleared namespace scans empty")
    _expect(await storage.get("mls", b"missing") is None, "get of a missing key returns None")

    batch = Batch()
    for i, key in enumerate(reversed(EDGE_KEYS)):
        batch.put("history", key, b"v" + key + bytes([i]))
    batch.put("outbox", b"a", b"other namespace")
    batch.put("device", b"empty", b"")
    batch.put("device", b"every byte", bytes(range(256)))
    batch.put("device", b"large", bytes(range(256)) * 256)  # 64 KiB
    await storage.commit(batch)
    expected = {key: b"v" + key + bytes([i]) for i, key in enumerate(reversed(EDGE_KEYS))}

    def want(prefix: bytes) -> list[tuple[bytes, bytes]]:
        return sorted((k, v) for k, v in expected.items() if k.startswith(prefix))

    got = await storage.scan("history")
    _expect([k for k, _ in got] == sorted(EDGE_KEYS), f"scan is in bytewise key order: {[k for k, _ in got]}")
    _expect(got == want(b""), "scan with the empty prefix returns every entry with its value")
    for prefix in (b"\x00", b"a", b"a\xff", b"a\xff\xff", b"ab", b"\xfe", b"\xff", b"\xff\xff", b"\xff\xff\xff",
                   b"\xff\xff\xff\xff", b"c", b"a\xff\xff\x00"):  # fmt: skip
        got = await storage.scan("history", prefix)
        _expect(got == want(prefix), f"scan(prefix={prefix!r}) returned {[k for k, _ in got]}")
    for key in EDGE_KEYS:
        _expect(await storage.get("history", key) == expected[key], f"get({key!r}) returns its value")
    _expect(await storage.get("history", b"a\xff\xff\xff") is None, "get of a near-miss key returns None")
    _expect(await storage.scan("outbox") == [(b"a", b"other namespace")], "namespaces are kept apart")
    _expect(await storage.get("conversations", b"a") is None, "a key in one namespace is absent from another")
    _expect(await storage.get("device", b"empty") == b"", "an empty value round-trips (not None)")
    _expect(await storage.get("device", b"every byte") == bytes(range(256)), "all byte values round-trip")
    _expect(await storage.get("device", b"large") == bytes(range(256)) * 256, "a 64 KiB value round-trips")


async def check_batches(storage: Storage) -> None:
    """Batch semantics: order of application, later puts win, atomic refusal of bad input."""
    await _clear(storage)
    setup = Batch()
    for key in (b"p1", b"p2", b"p\xff", b"q"):
        setup.put("conversations", key, b"old " + key)
    await storage.commit(setup)

    ordered = Batch()
    ordered.put("conversations", b"p1", b"first")
    ordered.put("conversations", b"p1", b"second")  # a later put of the same key wins
    ordered.delete_prefix("conversations", b"p")  # prefix deletes come first...
    ordered.delete("conversations", b"q")  # ...then deletes...
    ordered.delete("conversations", b"never stored")
    ordered.put("conversations", b"q", b"new q")  # ...then puts
    await storage.commit(ordered)
    got = await storage.scan("conversations")
    _expect(got == [(b"p1", b"second"), (b"q", b"new q")], f"delete_prefix, deletes, then puts in order: {got}")

    await storage.commit(Batch())  # an empty batch is a no-op

    good = [("mls", b"k1", b"v1"), ("history", b"k2", b"v2")]
    bad_entries: list[tuple[str, Any, Any, str]] = [
        ("put", "nope", b"key", "unknown namespace"),
        ("put", "mls", "text key", "str key"),
        ("put", "mls", bytearray(b"key"), "bytearray key"),
        ("put", "mls", b"", "empty key"),
        ("value", "mls", b"key", "str value"),
        ("delete", "nope", b"key", "delete in an unknown namespace"),
        ("delete_prefix", "mls", None, "None prefix"),
    ]
    for kind, namespace, key, what in bad_entries:
        batch = Batch()
        for ns, k, v in good:
            batch.put(ns, k, v)
        batch.delete("conversations", b"p1")
        batch.delete_prefix("conversations", b"q")
        if kind == "put":
            batch.put(namespace, key, b"value")
        elif kind == "value":
            batch.put(namespace, key, "value")  # type: ignore[arg-type]
        elif kind == "delete":
            batch.delete(namespace, key)
        else:
            batch.delete_prefix(namespace, key)
        await _expect_raises(InvalidInput, storage.commit(batch), f"a batch with a {what}")
        for ns, k, _ in good:
            _expect(await storage.get(ns, k) is None, f"a refused batch ({what}) applied a put")
        _expect(await storage.get("conversations", b"p1") == b"second", f"a refused batch ({what}) applied a delete")
        _expect(
            await storage.get("conversations", b"q") == b"new q", f"a refused batch ({what}) applied a prefix delete"
        )
    await _expect_raises(InvalidInput, storage.commit([("mls", b"k", b"v")]), "commit of a non-Batch")  # type: ignore[arg-type]
    await _expect_raises(InvalidInput, storage.get("nope", b"k"), "get in an unknown namespace")
    await _expect_raises(InvalidInput, storage.get("mls", "k"), "get with a str key")  # type: ignore[arg-type]
    await _expect_raises(InvalidInput, storage.get("mls", b""), "get with an empty key")
    await _expect_raises(InvalidInput, storage.scan("mls", "k"), "scan with a str prefix")  # type: ignore[arg-type]
    await _expect_raises(InvalidInput, storage.scan("nope"), "scan of an unknown namespace")


async def check_delete_prefix(storage: Storage) -> None:
    """delete_prefix removes exactly the keys under the prefix, in one namespace only."""
    await _clear(storage)
    batch = Batch()
    for key in EDGE_KEYS:
        batch.put("outbox", key, key)
        batch.put("history", key, key)
    await storage.commit(batch)
    remaining = set(EDGE_KEYS)
    for prefix in (b"a\xff", b"\xff\xff", b"\x00", b"zz"):
        batch = Batch()
        batch.delete_prefix("outbox", prefix)
        await storage.commit(batch)
        remaining = {k for k in remaining if not k.startswith(prefix)}
        got = [k for k, _ in await storage.scan("outbox")]
        _expect(got == sorted(remaining), f"after delete_prefix({prefix!r}) the namespace holds {got}")
    batch = Batch()
    batch.delete_prefix("outbox", b"")
    await storage.commit(batch)
    _expect(await storage.scan("outbox") == [], "delete_prefix(b'') empties the namespace")
    _expect(len(await storage.scan("history")) == len(EDGE_KEYS), "delete_prefix touches one namespace only")


async def check_commit_order(storage: Storage) -> None:
    """Concurrent commits land in the order they started (the FIFO writer relies on it)."""
    await _clear(storage)
    batches = []
    for i in range(20):
        batch = Batch()
        batch.put("mls", b"counter", str(i).encode())
        batch.put("history", i.to_bytes(8, "big"), b"x" * (4096 if i % 2 else 1))  # uneven sizes
        batches.append(batch)
    await asyncio.gather(*(storage.commit(b) for b in batches))
    _expect(await storage.get("mls", b"counter") == b"19", "the last started commit wins")
    _expect(len(await storage.scan("history")) == 20, "every concurrent commit landed")


async def check_reopen(open_storage: Opener) -> None:
    """Data survives close + reopen; one owner at a time; close is idempotent; closed refuses."""
    first = await open_storage()
    try:
        batch = Batch()
        batch.put("device", b"identity", b"persisted")
        await first.commit(batch)
        await _expect_raises(DatabaseInUse, open_storage(), "a second opener while the first is open")
        _expect(await first.get("device", b"identity") == b"persisted", "a refused opener disturbs nothing")
    finally:
        await first.close()
    await first.close()  # idempotent
    await _expect_raises(StorageUnavailable, first.get("device", b"identity"), "get after close")
    await _expect_raises(StorageUnavailable, first.commit(batch), "commit after close")
    second = await open_storage()
    try:
        _expect(await second.get("device", b"identity") == b"persisted", "data survives close and reopen")
    finally:
        await second.close()
    third = await open_storage()  # the lock was released by close
    try:
        _expect(await third.get("device", b"identity") == b"persisted", "a later owner sees the data")
    finally:
        await third.close()


STORAGE_CHECKS: Final = ("reads_and_scans", "batches", "delete_prefix", "commit_order", "reopen")
"""What :func:`check_storage` runs, in order; it returns the names of those that passed."""


async def check_storage(open_storage: Opener) -> list[str]:
    """Every protocol check, against the fresh database ``open_storage()`` opens (and reopens).

    Returns the names of the checks that ran and passed (all of :data:`STORAGE_CHECKS`, or
    an ``AssertionError`` says which failed), so a caller can assert that they all ran.
    """
    passed: list[str] = []
    storage = await open_storage()
    try:
        for name, check in (
            ("reads_and_scans", check_reads_and_scans),
            ("batches", check_batches),
            ("delete_prefix", check_delete_prefix),
            ("commit_order", check_commit_order),
        ):
            await check(storage)
            passed.append(name)
    finally:
        await storage.close()
    await check_reopen(open_storage)
    passed.append("reopen")
    return passed


async def check_encryption(storage: Any) -> None:
    """EncryptedStorage only: no plaintext below it, values bound to their slot, format as documented."""
    from ping_web.storage.encrypted import NONCE_BYTES, OVERHEAD, EncryptedStorage

    inner = storage.inner
    await _clear(storage)
    marker = b"PLAINTEXT-MARKER-7f3a"
    batch = Batch()
    for namespace in NAMESPACES:
        batch.put(namespace, b"slot-a", marker + namespace.encode())
        batch.put(namespace, b"slot-b", marker)
    await storage.commit(batch)
    for namespace in NAMESPACES:
        rows = await inner.scan(namespace)
        _expect([k for k, _ in rows] == [b"slot-a", b"slot-b"], "keys pass through unchanged")
        for key, raw in rows:
            _expect(marker not in raw and b"MARKER" not in raw, f"plaintext visible in {namespace}/{key!r}")
            _expect(raw[0] == 1, "sealed values start with format version 1")
        a, b = (raw for _, raw in rows)
        _expect(len(b) == OVERHEAD + len(marker), "sealed = version || nonce || ciphertext || tag")
        _expect(a[1 : 1 + NONCE_BYTES] != b[1 : 1 + NONCE_BYTES], "every value gets a fresh nonce")
        _expect(await storage.get(namespace, b"slot-a") == marker + namespace.encode(), "values open again")

    raw_b = await inner.get("history", b"slot-b")
    swap = Batch()
    swap.put("history", b"slot-a", raw_b)  # moved to another key
    swap.put("outbox", b"slot-b", raw_b)  # moved to another namespace, same key
    swap.put("device", b"slot-b", raw_b[:-1] + bytes([raw_b[-1] ^ 1]))  # altered
    swap.put("mls", b"slot-b", b"\x02" + raw_b[1:])  # unknown format version
    swap.put("conversations", b"slot-b", raw_b[: OVERHEAD - 1])  # truncated
    await inner.commit(swap)
    for namespace, key in [("history", b"slot-a"), ("outbox", b"slot-b"), ("device", b"slot-b"), ("mls", b"slot-b"),
                           ("conversations", b"slot-b")]:  # fmt: skip
        exc = await _expect_raises(StorageCorrupted, storage.get(namespace, key), f"{namespace}/{key!r} tampered")
        _expect(repr(namespace) in str(exc), f"the error names the namespace: {exc}")
        _expect(await inner.get(namespace, key) is not None, "a value that fails to open is never deleted")
    await _expect_raises(StorageCorrupted, storage.scan("history"), "scan over a moved value")
    _expect(await storage.get("history", b"slot-b") == marker, "the original slot still opens")

    other = EncryptedStorage(inner, await EncryptedStorage.generate_key())
    await _expect_raises(StorageCorrupted, other.get("history", b"slot-b"), "reading with the wrong key")
    await _expect_raises(StorageCorrupted, other.scan("history", b"slot-b"), "scanning with the wrong key")
    _expect(await storage.get("history", b"slot-b") == marker, "a wrong-key reader changes nothing")
