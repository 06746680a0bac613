"""Durable storage: the :class:`Storage` protocol, its backends and the FIFO batch writer.

Owns the protocol (async get, prefix scan, atomic batch), the in-memory, IndexedDB and
encrypting backends, Web Locks ownership of a database, the writer that lands batches in
capture order, and the conformance checks every backend must pass. May import
:mod:`ping_web.errors` and :mod:`ping_web._ffi`; never core, mls, delivery or client.
"""

from ping_web.storage.base import NAMESPACES, Batch, Storage
from ping_web.storage.encrypted import EncryptedStorage
from ping_web.storage.indexeddb import IndexedDbStorage
from ping_web.storage.memory import MemoryStorage
from ping_web.storage.writer import BatchWriter

__all__ = ["NAMESPACES", "Batch", "BatchWriter", "EncryptedStorage", "IndexedDbStorage", "MemoryStorage", "Storage"]
