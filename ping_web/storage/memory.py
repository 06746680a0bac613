"""In-memory storage: the default backend, and the reference for what the others must do.

Values live in one dict per namespace. Nothing survives the process, but a closed
:class:`MemoryStorage` can be reopened with :meth:`MemoryStorage.reopen` (same data, new
owner), so cold-restart logic can be exercised without a browser. Imports no JavaScript:
it runs on CPython as well as in Pyodide.

:func:`validate_batch` and :func:`check_key` are shared by every backend, so all of them
refuse the same inputs with the same :class:`~ping_web.errors.InvalidInput`.
"""

from __future__ import annotations

from ping_web.errors import DatabaseInUse, InvalidInput, StorageUnavailable
from ping_web.storage.base import NAMESPACES, Batch

__all__ = ["MemoryStorage", "check_key", "check_namespace", "validate_batch"]


def check_namespace(namespace: object) -> str:
    """``namespace`` if it is one of :data:`~ping_web.storage.NAMESPACES`, else InvalidInput."""
    if not isinstance(namespace, str) or namespace not in NAMESPACES:
        raise InvalidInput(f"unknown storage namespace {namespace!r}; use one of {', '.join(NAMESPACES)}")
    return namespace


def check_key(namespace: object, key: object, *, what: str = "key") -> bytes:
    """``key`` if it is non-empty ``bytes``, else InvalidInput.

    Empty keys are refused everywhere because IndexedDB implementations disagree on them
    (the Node polyfill treats an empty binary key as a detached buffer).
    """
    check_namespace(namespace)
    if not isinstance(key, bytes):
        raise InvalidInput(f"storage {what} in {namespace!r} must be bytes, got {type(key).__name__}")
    if what == "key" and not key:
        raise InvalidInput(f"storage key in {namespace!r} must not be empty")
    return key


def validate_batch(batch: object) -> Batch:
    """Check every entry of ``batch`` before anything is applied; InvalidInput names the first bad one."""
    if not isinstance(batch, Batch):
        raise InvalidInput(f"expected a storage Batch, got {type(batch).__name__}")
    for namespace, prefix in batch.delete_prefixes:
        check_key(namespace, prefix, what="prefix")
    for namespace, key in batch.deletes:
        check_key(namespace, key)
    for namespace, key, value in batch.puts:
        check_key(namespace, key)
        if not isinstance(value, bytes):
            raise InvalidInput(f"storage value in {namespace!r} must be bytes, got {type(value).__name__}")
    return batch


class _Data:
    """The shared contents behind one or more (successive) MemoryStorage handles."""

    __slots__ = ("namespaces", "owner")

    def __init__(self) -> None:
        self.namespaces: dict[str, dict[bytes, bytes]] = {ns: {} for ns in NAMESPACES}
        self.owner: MemoryStorage | None = None


class MemoryStorage:
    """A :class:`~ping_web.storage.Storage` held in Python dicts. Single owner, like the others."""

    def __init__(self, _data: _Data | None = None) -> None:
        data = _data if _data is not None else _Data()
        if data.owner is not None:
            raise DatabaseInUse("this in-memory storage is still open elsewhere; close() it before reopening")
        data.owner = self
        self._data = data
        self._closed = False

    def reopen(self) -> MemoryStorage:
        """A new handle over the same data, as if the device restarted. ``self`` must be closed."""
        return MemoryStorage(self._data)

    def _namespaces(self) -> dict[str, dict[bytes, bytes]]:
        if self._closed:
            raise StorageUnavailable("this storage is closed; reopen it")
        return self._data.namespaces

    async def get(self, namespace: str, key: bytes) -> bytes | None:
        check_key(namespace, key)
        return self._namespaces()[namespace].get(key)

    async def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        check_key(namespace, prefix, what="prefix")
        table = self._namespaces()[namespace]
        return [(k, table[k]) for k in sorted(k for k in table if k.startswith(prefix))]

    async def commit(self, batch: Batch) -> None:
        validate_batch(batch)
        namespaces = self._namespaces()
        # Validation above is the only way to fail, so applying in place is atomic.
        for namespace, prefix in batch.delete_prefixes:
            table = namespaces[namespace]
            for k in [k for k in table if k.startswith(prefix)]:
                del table[k]
        for namespace, key in batch.deletes:
            namespaces[namespace].pop(key, None)
        for namespace, key, value in batch.puts:
            namespaces[namespace][key] = value

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._data.owner = None
