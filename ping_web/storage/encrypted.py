"""Encrypting storage: AES-GCM-256 (WebCrypto) around any other backend.

Every value is sealed on its way in and opened on its way out; keys pass through as they
are. Keys are ids (conversation ids, sequence numbers, OpenMLS entry labels), not
secrets: values hold every secret and every plaintext. The additional data binds each
value to its slot, so a value copied or moved to another namespace or key fails to open.

Stored value: ``0x01 (format version) || nonce (12 random bytes) || ciphertext || tag (16)``,
additional data ``0x01 || namespace (ASCII) || 0x00 || key``. A fresh random nonce per value
keeps the usual AES-GCM bound (about 2**32 writes per key) far above a device's lifetime.

The key is a non-extractable WebCrypto ``CryptoKey``: its bytes are never visible to
JavaScript or Python. :meth:`IndexedDbStorage.load_or_create_key
<ping_web.storage.indexeddb.IndexedDbStorage.load_or_create_key>` keeps it in the same
database; :meth:`EncryptedStorage.open_indexeddb` does both steps.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Final

from ping_web import _ffi
from ping_web.errors import InvalidInput, StorageCorrupted, StorageUnavailable
from ping_web.storage.base import Batch, Storage, check_key, validate_batch

__all__ = ["FORMAT_VERSION", "NONCE_BYTES", "TAG_BYTES", "EncryptedStorage", "additional_data"]

FORMAT_VERSION: Final = 1
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
OVERHEAD: Final = 1 + NONCE_BYTES + TAG_BYTES


def additional_data(namespace: str, key: bytes) -> bytes:
    """What each sealed value is bound to: format version, namespace and key."""
    return bytes([FORMAT_VERSION]) + namespace.encode("ascii") + b"\x00" + key


def _subtle() -> Any:
    crypto = _ffi.host_global("crypto")
    subtle = None if crypto is None else getattr(crypto, "subtle", None)
    if _ffi.is_absent(subtle):
        raise StorageUnavailable(
            "this JavaScript host has no WebCrypto (crypto.subtle); browsers offer it only in secure "
            "contexts (https or localhost)"
        )
    return subtle


def _gcm(nonce: bytes, aad: bytes) -> Any:
    return _ffi.js_object({"name": "AES-GCM", "iv": nonce, "additionalData": aad, "tagLength": TAG_BYTES * 8})


def _check_crypto_key(key: Any) -> None:
    """Refuse anything but a non-extractable AES-GCM-256 key usable for both directions."""
    algorithm = getattr(key, "algorithm", None)
    usages = set(getattr(key, "usages", None) or [])
    if (
        algorithm is None
        or getattr(algorithm, "name", None) != "AES-GCM"
        or getattr(algorithm, "length", None) != 256
        or not {"encrypt", "decrypt"} <= usages
    ):
        raise InvalidInput("EncryptedStorage needs an AES-GCM-256 CryptoKey for encrypt and decrypt")
    if getattr(key, "extractable", True) is not False:
        raise InvalidInput("EncryptedStorage refuses an extractable key; use EncryptedStorage.generate_key()")


class EncryptedStorage:
    """A :class:`~ping_web.storage.Storage` that seals every value of ``inner`` with AES-GCM."""

    def __init__(self, inner: Storage, key: Any) -> None:
        _check_crypto_key(key)
        self.inner = inner
        self._key = key
        self._last_commit: asyncio.Future[None] | None = None

    @staticmethod
    async def generate_key() -> Any:
        """A fresh non-extractable AES-GCM-256 CryptoKey."""
        algorithm = _ffi.js_object({"name": "AES-GCM", "length": 256})
        return await _subtle().generateKey(algorithm, False, _ffi.js_object(["encrypt", "decrypt"]))

    @classmethod
    async def open_indexeddb(cls, name: str, *, key_name: str = "storage", indexed_db: Any = None) -> EncryptedStorage:
        """Open IndexedDB storage ``name`` sealed with its own stored key (created on first open)."""
        from ping_web.storage.indexeddb import IndexedDbStorage

        inner = await IndexedDbStorage.open(name, indexed_db=indexed_db)
        try:
            return cls(inner, await inner.load_or_create_key(key_name))
        except BaseException:
            await inner.close()
            raise

    async def _seal(self, namespace: str, key: bytes, value: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        aad = additional_data(namespace, key)
        try:
            sealed = await _subtle().encrypt(_gcm(nonce, aad), self._key, _ffi.to_js_bytes(value))
        except _ffi.JsException as exc:
            raise StorageUnavailable(f"WebCrypto could not encrypt a value for {namespace!r}: {exc}") from None
        return bytes([FORMAT_VERSION]) + nonce + _ffi.js_bytes(sealed)

    async def _open(self, namespace: str, key: bytes, stored: bytes) -> bytes:
        if len(stored) < OVERHEAD or stored[0] != FORMAT_VERSION:
            raise StorageCorrupted(
                f"a stored value in {namespace!r} is not a version-{FORMAT_VERSION} sealed value "
                f"({len(stored)} bytes); nothing was deleted; inspect it or restore a backup"
            )
        nonce = stored[1 : 1 + NONCE_BYTES]
        try:
            opened = await _subtle().decrypt(
                _gcm(nonce, additional_data(namespace, key)), self._key, _ffi.to_js_bytes(stored[1 + NONCE_BYTES :])
            )
        except _ffi.JsException:
            raise StorageCorrupted(
                f"a stored value in {namespace!r} failed to decrypt: wrong key, or the value was altered "
                "or moved from another key; nothing was deleted; open with the right key or restore a backup"
            ) from None
        return _ffi.js_bytes(opened)

    async def get(self, namespace: str, key: bytes) -> bytes | None:
        check_key(namespace, key)
        stored = await self.inner.get(namespace, key)
        return None if stored is None else await self._open(namespace, key, stored)

    async def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        check_key(namespace, prefix, what="prefix")
        rows = await self.inner.scan(namespace, prefix)
        values = await asyncio.gather(*(self._open(namespace, k, v) for k, v in rows))
        return [(k, v) for (k, _), v in zip(rows, values, strict=True)]

    async def commit(self, batch: Batch) -> None:
        """Seal the whole batch first (WebCrypto is async), then hand it to ``inner`` in one commit.

        Batches reach ``inner`` in the order their commits started, even though sealing a
        small batch can finish before sealing a large one started earlier.
        """
        validate_batch(batch)
        previous, done = self._last_commit, asyncio.get_event_loop().create_future()
        self._last_commit = done
        try:
            sealed = await asyncio.gather(*(self._seal(ns, k, v) for ns, k, v in batch.puts))
            if previous is not None:
                await asyncio.wait([previous])  # never cancels the predecessor
            await self.inner.commit(
                Batch(
                    puts=[(ns, k, s) for (ns, k, _), s in zip(batch.puts, sealed, strict=True)],
                    deletes=list(batch.deletes),
                    delete_prefixes=list(batch.delete_prefixes),
                )
            )
        finally:
            # Done only once the predecessor is, even if this commit failed early.
            if previous is None or previous.done():
                done.set_result(None)
            else:
                previous.add_done_callback(lambda _: done.set_result(None))
            if self._last_commit is done and done.done():
                self._last_commit = None

    async def close(self) -> None:
        """Close ``inner`` (and release its lock). Idempotent."""
        await self.inner.close()
