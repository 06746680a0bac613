"""In-memory storage: the default backend, and the reference for what the others must do.

Values live in one dict per namespace. Nothing survives the process, but a closed
:class:`MemoryStorage` can be reopened with :meth:`MemoryStorage.reopen` (same data, new
owner), so cold-restart logic can be exercised without a browser. Imports no JavaScript:
it runs on CPython as well as in Pyodide.
"""

from __future__ import annotations

from ping_web.errors import DatabaseInUse, StorageUnavailable
from ping_web.storage.base import NAMESPACES, Batch, check_key, validate_batch

__all__ = ["MemoryStorage"]


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
