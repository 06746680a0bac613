"""Storage backends in real Pyodide: real IndexedDB (Chromium's, or fake-indexeddb in Node)
and real WebCrypto. The shared conformance checks live in ping_web.storage.conformance."""

from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
async def test_memory_storage_conforms(selenium):
    from ping_web.storage import MemoryStorage
    from ping_web.storage.conformance import STORAGE_CHECKS, check_storage

    handles = []

    async def open_storage():
        storage = handles[-1].reopen() if handles else MemoryStorage()
        handles.append(storage)
        return storage

    assert await check_storage(open_storage) == list(STORAGE_CHECKS)
    assert len(handles) == 4  # the checks opened, reopened (refused while open) and reopened again


@run_in_pyodide(packages=["ping_web"])
async def test_indexeddb_storage_conforms(selenium):
    from ping_web.storage.conformance import STORAGE_CHECKS, check_storage
    from ping_web.storage.indexeddb import IndexedDbStorage

    assert await check_storage(lambda: IndexedDbStorage.open("conformance-plain")) == list(STORAGE_CHECKS)
    storage = await IndexedDbStorage.open("conformance-plain")  # what the checks left is really stored
    assert await storage.get("device", b"identity") == b"persisted"
    await storage.close()


@run_in_pyodide(packages=["ping_web"])
async def test_encrypted_over_memory_conforms_and_hides_plaintext(selenium):
    from ping_web.storage import MemoryStorage
    from ping_web.storage.conformance import STORAGE_CHECKS, check_encryption, check_storage
    from ping_web.storage.encrypted import EncryptedStorage

    key = await EncryptedStorage.generate_key()
    handles = []

    async def open_storage():
        inner = handles[-1].reopen() if handles else MemoryStorage()
        handles.append(inner)
        return EncryptedStorage(inner, key)

    assert await check_storage(open_storage) == list(STORAGE_CHECKS)
    storage = await open_storage()
    await check_encryption(storage)
    await storage.close()
    assert all(b"persisted" not in value for _, value in await handles[-1].reopen().scan("device"))


@run_in_pyodide(packages=["ping_web"])
async def test_encrypted_over_indexeddb_conforms_and_hides_plaintext(selenium):
    from ping_web.storage.conformance import STORAGE_CHECKS, check_encryption, check_storage
    from ping_web.storage.encrypted import EncryptedStorage

    checks = await check_storage(lambda: EncryptedStorage.open_indexeddb("conformance-sealed"))
    assert checks == list(STORAGE_CHECKS)
    storage = await EncryptedStorage.open_indexeddb("conformance-sealed")
    try:
        await check_encryption(storage)
    finally:
        await storage.close()


@run_in_pyodide(packages=["ping_web"])
async def test_stored_key_is_non_extractable_and_survives_reopen(selenium):
    import js
    import pytest
    from pyodide.ffi import to_js

    from ping_web.errors import InvalidInput, StorageCorrupted
    from ping_web.storage import Batch, MemoryStorage
    from ping_web.storage.encrypted import EncryptedStorage
    from ping_web.storage.indexeddb import IndexedDbStorage

    storage = await EncryptedStorage.open_indexeddb("key-persistence")
    batch = Batch()
    batch.put("device", b"identity", b"secret identity record")
    await storage.commit(batch)
    await storage.close()

    inner = await IndexedDbStorage.open("key-persistence")
    key = await inner.load_or_create_key("storage")
    assert key.extractable is False and key.algorithm.name == "AES-GCM" and key.algorithm.length == 256
    assert await inner.load_or_create_key("storage") is not None
    other = await inner.load_or_create_key("another")  # a second name: a second, different key
    assert (await inner.get("device", b"identity"))[0] == 1
    assert await EncryptedStorage(inner, key).get("device", b"identity") == b"secret identity record"
    with pytest.raises(StorageCorrupted, match="'device'"):
        await EncryptedStorage(inner, other).get("device", b"identity")
    await inner.close()

    storage = await EncryptedStorage.open_indexeddb("key-persistence")
    assert await storage.get("device", b"identity") == b"secret identity record"
    await storage.close()

    algorithm = to_js({"name": "AES-GCM", "length": 256}, dict_converter=js.Object.fromEntries)
    extractable = await js.crypto.subtle.generateKey(algorithm, True, to_js(["encrypt", "decrypt"]))
    with pytest.raises(InvalidInput, match="extractable"):
        EncryptedStorage(MemoryStorage(), extractable)
    with pytest.raises(InvalidInput, match="AES-GCM"):
        EncryptedStorage(MemoryStorage(), b"\x00" * 32)


@run_in_pyodide(packages=["ping_web"])
async def test_single_owner_across_tabs_and_in_process(selenium):
    import js
    import pytest
    from pyodide.ffi import JsNull, create_once_callable, to_js

    from ping_web.errors import DatabaseInUse
    from ping_web.storage.indexeddb import IndexedDbStorage, delete_database

    storage = await IndexedDbStorage.open("owner")
    with pytest.raises(DatabaseInUse, match="already open in this process"):
        await IndexedDbStorage.open("owner")
    with pytest.raises(DatabaseInUse):
        await delete_database("owner")
    locks = getattr(getattr(js, "navigator", None), "locks", None)
    if locks is not None:  # a browser: another tab or worker asking for the lock is refused
        options = to_js({"ifAvailable": True}, dict_converter=js.Object.fromEntries)
        got = await locks.request(
            "ping_web:owner", options, create_once_callable(lambda lock: not isinstance(lock, JsNull))
        )
        assert got is False
        held = await locks.query()
        assert "ping_web:owner" in [lock.name for lock in held.held]
    await storage.close()
    if locks is not None:
        held = await locks.query()
        assert "ping_web:owner" not in [lock.name for lock in held.held]
        # Someone else (another tab) holding the lock: the opener is told so.
        release = []
        hold = create_once_callable(lambda lock: js.Promise.new(lambda resolve, reject: release.append(resolve)))
        locks.request("ping_web:owner", hold)
        while not release:
            await js.Promise.new(lambda resolve, reject: js.setTimeout(resolve, 5))
        with pytest.raises(DatabaseInUse, match="another tab or worker"):
            await IndexedDbStorage.open("owner")
        release[0]()
        while True:
            held = await locks.query()
            if "ping_web:owner" not in [lock.name for lock in held.held]:
                break
    reopened = await IndexedDbStorage.open("owner")
    await reopened.close()
    await delete_database("owner")


@run_in_pyodide(packages=["ping_web"])
async def test_indexeddb_write_that_fails_midway_applies_nothing(selenium):
    import pytest

    from ping_web.errors import StorageUnavailable
    from ping_web.storage import Batch
    from ping_web.storage import indexeddb as indexeddb_storage
    from ping_web.storage.indexeddb import IndexedDbStorage

    storage = await IndexedDbStorage.open("midway")
    batch = Batch()
    batch.put("mls", b"kept", b"before")
    await storage.commit(batch)

    real_u8, calls = indexeddb_storage._u8, []

    def failing_u8(data):
        calls.append(data)
        if len(calls) == 6:  # after several requests of the batch were issued
            raise RuntimeError("injected failure")
        return real_u8(data)

    batch = Batch()
    batch.delete("mls", b"kept")
    for i in range(5):
        batch.put("history", bytes([i + 1]), b"x")
    indexeddb_storage._u8 = failing_u8
    try:
        with pytest.raises(RuntimeError, match="injected"):
            await storage.commit(batch)
    finally:
        indexeddb_storage._u8 = real_u8
    assert await storage.get("mls", b"kept") == b"before"
    assert await storage.scan("history") == []
    assert len(calls) == 6

    await storage.close()
    with pytest.raises(StorageUnavailable, match="closed"):
        await storage.scan("history")


@run_in_pyodide(packages=["ping_web"])
async def test_dom_errors_map_to_storage_errors(selenium):
    import js
    import pytest
    from pyodide.code import run_js

    from ping_web import _ffi
    from ping_web.errors import StorageQuotaExceeded, StorageUnavailable
    from ping_web.storage.indexeddb import prefix_successor, storage_error

    def mapped(name):
        return storage_error(js.DOMException.new("detail", name), "write")

    assert isinstance(mapped("QuotaExceededError"), StorageQuotaExceeded)
    assert "free space" in str(mapped("QuotaExceededError"))
    for name in ["AbortError", "TransactionInactiveError", "InvalidStateError", "UnknownError", "VersionError"]:
        error = mapped(name)
        assert type(error) is StorageUnavailable and name in str(error), (name, error)
    assert type(storage_error(None, "write")) is StorageUnavailable
    # A DOM error thrown synchronously keeps its own name through the FFI's catching call.
    thrower = run_js("({ write() { throw new DOMException('full', 'QuotaExceededError'); } })")
    with pytest.raises(_ffi.JsCallFailed) as caught:
        _ffi.call_catching(thrower, "write")
    assert caught.value.info.name == "QuotaExceededError"
    assert isinstance(storage_error(caught.value, "write"), StorageQuotaExceeded)

    assert prefix_successor(b"") is None and prefix_successor(b"\xff\xff") is None
    assert prefix_successor(b"a") == b"b" and prefix_successor(b"a\xff\xff") == b"b"
    assert prefix_successor(b"\x00\xfe\xff") == b"\x00\xff"


@run_in_pyodide(packages=["ping_web"])
async def test_versionchange_closes_connection_and_newer_database_is_refused(selenium):
    import js
    import pytest

    from ping_web.errors import StorageUnavailable
    from ping_web.storage.indexeddb import DB_VERSION, IndexedDbStorage

    newer = DB_VERSION + 1
    storage = await IndexedDbStorage.open("versions")
    # Another connection (a newer app in another tab) upgrades the database.
    request = js.indexedDB.open("ping_web:versions", newer)
    event = await js.Promise.new(lambda resolve, reject: setattr(request, "onsuccess", resolve))
    assert event.type == "success"
    request.result.close()
    with pytest.raises(StorageUnavailable, match="upgraded or deleted elsewhere"):
        await storage.get("device", b"x")
    await storage.close()
    with pytest.raises(StorageUnavailable, match="newer version"):
        await IndexedDbStorage.open("versions")
    # The failed open left the database alone: the newer version is still there.
    request = js.indexedDB.open("ping_web:versions")
    await js.Promise.new(lambda resolve, reject: setattr(request, "onsuccess", resolve))
    assert request.result.version == newer and request.result.objectStoreNames.contains("device")
    request.result.close()


@run_in_pyodide(packages=["ping_web"])
async def test_blocked_upgrade_is_reported_and_changes_nothing(selenium):
    import js
    import pytest

    from ping_web.errors import StorageUnavailable
    from ping_web.storage import Batch
    from ping_web.storage import indexeddb as indexeddb_storage
    from ping_web.storage.indexeddb import IndexedDbStorage

    storage = await IndexedDbStorage.open("blocked")
    batch = Batch()
    batch.put("device", b"identity", b"kept")
    await storage.commit(batch)
    await storage.close()

    async def raw_open(*version):
        request = js.indexedDB.open("ping_web:blocked", *version)
        event = await js.Promise.new(lambda resolve, reject: setattr(request, "onsuccess", resolve))
        return event.target.result

    current = indexeddb_storage.DB_VERSION
    old_tab = await raw_open(current)  # an old tab that ignores versionchange
    indexeddb_storage.DB_VERSION = current + 1  # a newer ping_web whose database needs an upgrade
    try:
        with pytest.raises(StorageUnavailable, match="blocks the upgrade"):
            await IndexedDbStorage.open("blocked")
    finally:
        indexeddb_storage.DB_VERSION = current
    old_tab.close()  # the upgrade that was blocked now runs, and is rolled back
    db = await raw_open()
    assert db.version == current
    db.close()
    storage = await IndexedDbStorage.open("blocked")
    assert await storage.get("device", b"identity") == b"kept"
    await storage.close()
