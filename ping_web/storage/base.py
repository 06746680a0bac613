"""The storage protocol: what MessagingClient needs from a backend, and nothing more.

A backend holds byte values under ``(namespace, key)``, reads one value or every value
under a key prefix, and applies a :class:`Batch` of puts and deletes atomically: after a
crash either all of a batch is stored or none of it. Everything is async, because the
browser's storage (IndexedDB, WebCrypto) is.

Backends: :class:`~ping_web.storage.memory.MemoryStorage` (default),
:class:`~ping_web.storage.indexeddb.IndexedDbStorage` (browser, worker; a polyfill in Node),
:class:`~ping_web.storage.encrypted.EncryptedStorage` (AES-GCM over any backend).
The namespaces and key layout are documented in ``docs/storage.md``. :func:`validate_batch`
and :func:`check_key` are shared by every backend, so all of them refuse the same inputs
with the same :class:`~ping_web.errors.InvalidInput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from ping_web.errors import InvalidInput

NAMESPACES: Final = ("device", "mls", "conversations", "history", "outbox", "journal", "requests")
"""Every namespace a backend must provide (IndexedDB needs them fixed at creation)."""


@dataclass(slots=True)
class Batch:
    """Puts and deletes applied together or not at all. Later operations on the same key win."""

    puts: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    deletes: list[tuple[str, bytes]] = field(default_factory=list)
    delete_prefixes: list[tuple[str, bytes]] = field(default_factory=list)
    """Delete every key of the namespace that starts with the prefix (applied before puts)."""

    def put(self, namespace: str, key: bytes, value: bytes) -> None:
        self.puts.append((namespace, key, value))

    def delete(self, namespace: str, key: bytes) -> None:
        self.deletes.append((namespace, key))

    def delete_prefix(self, namespace: str, prefix: bytes) -> None:
        self.delete_prefixes.append((namespace, prefix))

    def __len__(self) -> int:
        return len(self.puts) + len(self.deletes) + len(self.delete_prefixes)


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


@runtime_checkable
class Storage(Protocol):
    """An async key/value store with atomic batches. See the module docstring."""

    async def get(self, namespace: str, key: bytes) -> bytes | None:
        """The value under ``key``, or ``None``."""
        ...

    async def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, in bytewise key order."""
        ...

    async def commit(self, batch: Batch) -> None:
        """Apply ``batch`` atomically: deletes of prefixes, then deletes, then puts.

        Raises a :class:`~ping_web.errors.StorageError` subclass if nothing was applied.
        """
        ...

    async def close(self) -> None:
        """Release the backend (and its single-owner lock). Idempotent."""
        ...
