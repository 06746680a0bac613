"""IndexedDB storage: the browser and worker backend (a polyfill in Node tests).

Layout: database ``ping_web:{name}``, version :data:`DB_VERSION`, one object store per namespace in
:data:`~ping_web.storage.NAMESPACES` plus ``keys`` (CryptoKey records for
:class:`~ping_web.storage.encrypted.EncryptedStorage`). Keys are binary (IndexedDB orders
binary keys bytewise, like :meth:`scan` must); values are ``Uint8Array``.

IndexedDB commits a transaction by itself as soon as control returns to the event loop
with no request pending, and Pyodide resumes a coroutine in a later task. So every
operation here issues all of its requests synchronously, then awaits only the
transaction's ``complete``/``abort`` event: one batch is one transaction.

Single owner: :meth:`IndexedDbStorage.open` holds the Web Lock ``ping_web:{name}`` until
:meth:`~IndexedDbStorage.close` (other tabs and workers are refused), and a process-wide
registry refuses a second opener in this Python process (the only guard where the host
has no Web Locks, as in Node). A caller that already holds that lock (a tab elected
leader by waiting for it, :mod:`ping_web.client.tabs`) hands it over instead. Opening
never deletes or resets anything, whatever fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ping_web import _ffi
from ping_web.errors import (
    DatabaseInUse,
    InvalidInput,
    StorageCorrupted,
    StorageError,
    StorageQuotaExceeded,
    StorageUnavailable,
)
from ping_web.storage.base import NAMESPACES, Batch, check_key, validate_batch
from ping_web.storage.locks import WebLock, acquire_lock

__all__ = ["DB_VERSION", "KEYS_STORE", "IndexedDbStorage", "database_name", "delete_database"]

DB_VERSION: Final = 3
"""1: the first five namespaces; 2 adds ``journal``; 3 adds ``requests`` (an upgrade only
creates missing stores)."""
KEYS_STORE: Final = "keys"
KEY_RECORD_VERSION: Final = 1
STORES: Final = (*NAMESPACES, KEYS_STORE)

_open_names: set[str] = set()
"""Database names open in this Python process (the single-owner guard without Web Locks)."""


def database_name(name: str) -> str:
    """The IndexedDB database (and Web Lock) name for the device storage ``name``."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("storage name must be a non-empty string")
    return f"ping_web:{name}"


def _u8(data: bytes) -> Any:
    return _ffi.to_js_bytes(data)


def storage_error(error: Any, action: str) -> StorageError:
    """Map a DOM error (``DOMException`` or ``JsException``) to the package's storage errors.

    Only a full quota is told apart from everything else (a transient failure: aborted or
    inactive transaction, closed connection, unknown I/O error): both leave data intact.
    """
    info = error.info if isinstance(error, _ffi.JsCallFailed) else _ffi.error_info(error)
    name, detail = info.name, info.message
    said = f"{name}: {detail}" if detail else name or "no reason given"
    if name == "QuotaExceededError":
        return StorageQuotaExceeded(
            f"could not {action}: the site's storage quota is full ({said}); nothing was applied "
            "and stored data is intact; free space (old history, other site data) and retry"
        )
    if name == "VersionError":
        return StorageUnavailable(
            f"could not {action}: the database was written by a newer version of ping_web ({said}); "
            "update the app; nothing was changed"
        )
    if name == "InvalidStateError":
        return StorageUnavailable(
            f"could not {action}: the database connection is closed ({said}); nothing was applied; "
            "reopen the storage and retry"
        )
    return StorageUnavailable(f"could not {action}: IndexedDB failed ({said}); nothing was applied; retry later")


# -- opening -----------------------------------------------------------------------------------


def _proxy_once(fn: Callable[[Any], None]) -> Any:
    """A JS function that calls ``fn`` for the first event it gets, then frees itself."""

    def once(event: Any) -> None:
        if not proxy_box:
            return
        _ffi.destroy_soon(proxy_box.pop())  # not from inside its own call
        fn(event)

    proxy_box = [_ffi.proxy(once)]
    return proxy_box[0]


async def _open_database(factory: Any, db_name: str) -> Any:
    """Open (creating on first use) the database; never deletes or resets anything."""
    try:
        request = _ffi.call_catching(factory, "open", db_name, DB_VERSION)
    except _ffi.JsCallFailed as exc:
        raise storage_error(exc, f"open {db_name!r}") from None
    gave_up = False

    def upgrade(event: Any) -> None:
        if gave_up:  # we reported "blocked": leave the database exactly as it was
            request.transaction.abort()
            return
        db = request.result
        for store in STORES:
            if not db.objectStoreNames.contains(store):
                db.createObjectStore(store)

    upgrade_proxy = _ffi.proxy(upgrade)
    request.onupgradeneeded = upgrade_proxy
    event = await _ffi.first_event(request, ("success", "error", "blocked"))
    if event.type == "blocked":
        gave_up = True

        def settle(event: Any) -> None:  # the upgrade may still run later: undo it quietly
            if event.type == "success":
                request.result.close()
            upgrade_proxy.destroy()

        request.onsuccess = request.onerror = _proxy_once(settle)
        raise StorageUnavailable(
            f"could not open {db_name!r}: another connection with an older version of the database "
            "is open (another tab or worker) and blocks the upgrade; close it and retry; nothing was changed"
        )
    upgrade_proxy.destroy()
    if event.type != "success":
        raise storage_error(request.error, f"open {db_name!r}")
    db = request.result
    missing = [store for store in STORES if not db.objectStoreNames.contains(store)]
    if missing:
        db.close()
        raise StorageCorrupted(
            f"database {db_name!r} lacks the object stores {', '.join(missing)}: it was not created by "
            "ping_web or is damaged; nothing was changed; inspect it or restore a backup"
        )
    return db


# -- the backend -------------------------------------------------------------------------------


class IndexedDbStorage:
    """A :class:`~ping_web.storage.Storage` over IndexedDB. Create it with :meth:`open`."""

    def __init__(self, db_name: str, db: Any, lock: WebLock | None) -> None:
        self.database_name = db_name
        self._db: Any = db
        self._lock = lock
        self._owner = True  # holds the name (registry and Web Lock) until close()
        self._closed_reason = "this storage is closed; open it again"
        self._on_versionchange = _ffi.proxy(self._versionchange)
        db.onversionchange = self._on_versionchange
        db.onclose = self._on_versionchange

    @classmethod
    async def open(cls, name: str, *, indexed_db: Any = None, lock: WebLock | None = None) -> IndexedDbStorage:
        """Open (or create) the device storage ``name``; DatabaseInUse if another owner has it.

        ``lock``: the Web Lock of this database, already held by the caller (who waited for
        it); the storage takes it over and releases it on :meth:`close`, or at once if
        opening fails.
        """
        db_name = database_name(name)
        factory = indexed_db if indexed_db is not None else _ffi.host_global("indexedDB")
        refusal: StorageError | InvalidInput | None = None
        if lock is not None and (lock.name != db_name or not lock.held):
            refusal = InvalidInput(f"the lock handed to open {db_name!r} must be its own Web Lock, still held")
        elif factory is None:
            refusal = StorageUnavailable("this JavaScript host has no IndexedDB; use MemoryStorage or another backend")
        elif db_name in _open_names:
            refusal = DatabaseInUse(f"the device storage {db_name!r} is already open in this process; close it first")
        if refusal is not None:
            if lock is not None:
                await lock.release()
            raise refusal
        _open_names.add(db_name)  # before any await: two concurrent openers cannot both pass
        try:
            if lock is None:
                lock = await acquire_lock(db_name)
            db = await _open_database(factory, db_name)
        except BaseException:
            if lock is not None:
                await lock.release()
            _open_names.discard(db_name)
            raise
        return cls(db_name, db, lock)

    def _versionchange(self, event: Any) -> None:
        """Another connection upgrades or deletes the database, or the browser closed ours.

        The connection is closed so the other side can proceed; ownership stays until close().
        """
        reason = "was closed by the browser" if event.type == "close" else "is being upgraded or deleted elsewhere"
        self._close_connection(f"the database {self.database_name!r} {reason}; close and reopen the storage")

    def _close_connection(self, reason: str) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        self._closed_reason = reason
        db.onversionchange = db.onclose = None
        db.close()
        # Not destroyed synchronously: this may run inside that very proxy's call.
        _ffi.destroy_soon(self._on_versionchange)

    async def close(self) -> None:
        """Close the connection and release the single-owner lock. Idempotent."""
        self._close_connection("this storage is closed; open it again")
        if not self._owner:
            return
        self._owner = False
        try:
            if self._lock is not None:
                await self._lock.release()  # returns once another opener can take it
        finally:
            _open_names.discard(self.database_name)

    @property
    def closed(self) -> bool:
        return self._db is None

    def _transaction(self, stores: list[str], mode: str, action: str) -> Any:
        if self._db is None:
            raise StorageUnavailable(f"could not {action}: {self._closed_reason}")
        options = _ffi.js_object({"durability": "strict"}) if mode == "readwrite" else None
        try:
            return _ffi.call_catching(self._db, "transaction", stores, mode, options)
        except _ffi.JsCallFailed as exc:
            raise storage_error(exc, action) from None

    async def _finish(self, tx: Any, action: str) -> None:
        event = await _ffi.first_event(tx, ("complete", "abort"))
        if event.type != "complete":
            raise storage_error(tx.error, action)

    async def get(self, namespace: str, key: bytes) -> bytes | None:
        check_key(namespace, key)
        action = f"read from {namespace!r}"
        tx = self._transaction([namespace], "readonly", action)
        request = tx.objectStore(namespace).get(_u8(key))
        await self._finish(tx, action)
        return None if _ffi.is_absent(request.result) else _value(request.result, namespace)

    async def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        check_key(namespace, prefix, what="prefix")
        action = f"scan {namespace!r}"
        tx = self._transaction([namespace], "readonly", action)
        store = tx.objectStore(namespace)
        bounds = _prefix_range(prefix)
        keys, values = store.getAllKeys(bounds), store.getAll(bounds)  # both in key order
        await self._finish(tx, action)
        return [(_ffi.js_bytes(k), _value(v, namespace)) for k, v in zip(keys.result, values.result, strict=True)]

    async def commit(self, batch: Batch) -> None:
        """One readwrite transaction: every request issued at once, then await its completion."""
        validate_batch(batch)
        if not len(batch):
            return
        touched = sorted(
            {ns for ns, _ in batch.delete_prefixes} | {ns for ns, _ in batch.deletes} | {ns for ns, _, _ in batch.puts}
        )
        action = f"write to {', '.join(touched)}"
        tx = self._transaction(touched, "readwrite", action)
        try:
            stores = {ns: tx.objectStore(ns) for ns in touched}
            for namespace, prefix in batch.delete_prefixes:
                bounds = _prefix_range(prefix)
                if bounds is None:
                    stores[namespace].clear()
                else:
                    stores[namespace].delete(bounds)
            for namespace, key in batch.deletes:
                stores[namespace].delete(_u8(key))
            for namespace, key, value in batch.puts:
                stores[namespace].put(_u8(value), _u8(key))
        except BaseException as exc:
            _abort(tx)  # requests already issued must not land without the rest
            if isinstance(exc, _ffi.JsException):
                raise storage_error(exc, action) from None
            raise
        await self._finish(tx, action)

    async def load_or_create_key(self, key_name: str) -> Any:
        """The non-extractable AES-GCM CryptoKey stored under ``key_name``, created the first time.

        The key object itself is stored (structured clone): its bytes never reach JavaScript
        or Python, and a copy of the database without the browser's key store is useless.
        """
        from ping_web.storage.encrypted import EncryptedStorage

        if not isinstance(key_name, str) or not key_name:
            raise InvalidInput("key name must be a non-empty string")
        key = await self._read_key(key_name)
        if key is not None:
            return key
        created = await EncryptedStorage.generate_key()  # async: never inside a transaction
        action = f"store the key {key_name!r}"
        tx = self._transaction([KEYS_STORE], "readwrite", action)
        tx.objectStore(KEYS_STORE).add(_ffi.js_object({"v": KEY_RECORD_VERSION, "key": created}), key_name)
        event = await _ffi.first_event(tx, ("complete", "abort"))
        if event.type == "complete":
            return created
        if _ffi.error_info(tx.error).name == "ConstraintError":  # another caller stored one first: use it
            key = await self._read_key(key_name)
            if key is not None:
                return key
        raise storage_error(tx.error, action)

    async def _read_key(self, key_name: str) -> Any:
        action = f"read the key {key_name!r}"
        tx = self._transaction([KEYS_STORE], "readonly", action)
        request = tx.objectStore(KEYS_STORE).get(key_name)
        await self._finish(tx, action)
        record = request.result
        if _ffi.is_absent(record):
            return None
        version = getattr(record, "v", None)
        key = getattr(record, "key", None)
        if version != KEY_RECORD_VERSION or _ffi.is_absent(key) or _ffi.is_absent(getattr(key, "algorithm", None)):
            raise StorageCorrupted(
                f"the key record {key_name!r} in {self.database_name!r} is not a version-{KEY_RECORD_VERSION} "
                "CryptoKey record; nothing was changed; restore a backup"
            )
        return key


def _abort(tx: Any) -> None:
    try:
        tx.abort()
    except _ffi.JsException:  # already finished or aborted
        pass


def _value(value: Any, namespace: str) -> bytes:
    try:
        return _ffi.js_bytes(value)
    except TypeError:
        raise StorageCorrupted(
            f"a record in {namespace!r} is not a byte array (found {type(value).__name__}); "
            "it was not written by ping_web; nothing was deleted"
        ) from None


def prefix_successor(prefix: bytes) -> bytes | None:
    """The least key greater than every key starting with ``prefix``; None if there is none.

    Trailing 0xFF bytes cannot be incremented, so they are dropped first: the successor of
    ``b"a\\xff"`` is ``b"b"``; an empty or all-0xFF prefix has no upper bound.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _prefix_range(prefix: bytes) -> Any:
    """An IDBKeyRange of every key starting with ``prefix`` (None: the whole store)."""
    if not prefix:
        return None
    key_range = _ffi.host_global("IDBKeyRange")
    if key_range is None:
        raise StorageUnavailable("this JavaScript host has no IndexedDB (IDBKeyRange)")
    upper = prefix_successor(prefix)
    if upper is None:
        return key_range.lowerBound(_u8(prefix))
    return key_range.bound(_u8(prefix), _u8(upper), False, True)


async def delete_database(name: str, *, indexed_db: Any = None) -> None:
    """Delete the device storage ``name`` for good. Explicit only: ping_web never calls it."""
    db_name = database_name(name)
    if db_name in _open_names:
        raise DatabaseInUse(f"the device storage {db_name!r} is open in this process; close it first")
    factory = indexed_db if indexed_db is not None else _ffi.host_global("indexedDB")
    if factory is None:
        raise StorageUnavailable("this JavaScript host has no IndexedDB")
    request = factory.deleteDatabase(db_name)
    event = await _ffi.first_event(request, ("success", "error", "blocked"))
    if event.type == "blocked":
        raise StorageUnavailable(
            f"deleting {db_name!r} waits for another connection (another tab or worker) to close; "
            "it will complete when that connection closes"
        )
    if event.type != "success":
        raise storage_error(request.error, f"delete {db_name!r}")
