"""Typed Python face of the OpenMLS wasm module: bytes in, bytes out, PingErrors out.

The classes mirror the module's exports one to one (``docs/wasm-api.md``);
:mod:`ping_web.mls.engine` builds the :class:`~ping_web.core.engine.MlsEngine` on them.

One :class:`MlsRuntime` is one wasm instance. Objects made from it (providers, identities,
groups) belong to it. If the instance traps, the runtime is marked dead and every later
call raises :class:`~ping_web.errors.WasmTrap`: a trapped instance is never used again.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from ping_web import _ffi, errors
from ping_web.core.engine import Member, Processed, ProcessedKind
from ping_web.errors import PingError
from ping_web.mls.loader import instantiate

T = TypeVar("T")

Change = tuple[bytes, bytes | None]
"""One working-set change: ``(key, value)``, where ``value is None`` means deleted."""

_U32 = struct.Struct(">I")
_PROCESSED_HEADER = struct.Struct(">BBIQ")
_DELETED = 0xFFFF_FFFF

# Bytes passed into wasm go through reusable Uint8Arrays (measured in Pyodide: writing into an
# existing array with .assign() costs a fraction of a to_js() copy). wasm-bindgen copies
# every &[u8] argument into wasm memory during the call, so an array is free again as soon
# as the call returns. Small arrays only, a few per length.
_POOL_MAX_LENGTH = 4096
_POOL_PER_LENGTH = 4
_POOL_LENGTHS = 64

_STATE_ERRORS: dict[str, type[PingError]] = {
    "invalid_input": errors.InvalidInput,
    "malformed_message": errors.DecodeError,
    "wrong_message_type": errors.InvalidInput,
    "pending_commit": errors.PendingCommit,
    "no_pending_commit": errors.NoPendingCommit,
    "not_member": errors.NotAMember,
    "wrong_epoch": errors.WrongEpoch,
    "storage": errors.StorageCorrupted,
    "hash_mismatch": errors.ContentHashMismatch,
    "aad_mismatch": errors.HeaderMismatch,
}


def _translate(exc: Exception) -> PingError:
    """Turn a JS exception from the module into the matching PingError, by its ``code``."""
    info = _ffi.error_info(exc)
    if info.name == "RuntimeError":
        return errors.WasmTrap(f"the wasm instance trapped ({info.message}); reload from storage")
    if info.code is None:
        return errors.MlsError("unknown", f"{info.name}: {info.message}")
    cls = _STATE_ERRORS.get(info.code)
    if cls is None:
        return errors.MlsError(info.code, info.message)
    return cls(f"{info.message} [{info.code}]")


# -- flat byte encodings shared with wasm/src/bytes.rs -------------------------------------


def encode_byte_list(items: Iterable[bytes]) -> bytes:
    return b"".join(_U32.pack(len(item)) + item for item in items)


def _fields(data: bytes) -> Iterator[bytes | None]:
    """The length-prefixed fields of ``data`` in order; the DELETED length stands for ``None``."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        (size,) = _U32.unpack_from(view, pos)
        pos += 4
        if size == _DELETED:
            yield None
        else:
            yield bytes(view[pos : pos + size])
            pos += size


def decode_byte_list(data: bytes) -> list[bytes]:
    return [item or b"" for item in _fields(data)]


def encode_changes(changes: Iterable[Change]) -> bytes:
    out = bytearray()
    for key, value in changes:
        out += _U32.pack(len(key)) + key
        out += _U32.pack(_DELETED) if value is None else _U32.pack(len(value)) + value
    return bytes(out)


def decode_changes(data: bytes) -> list[Change]:
    fields = _fields(data)
    return [(key or b"", value) for key, value in zip(fields, fields, strict=True)]


# -- the runtime -----------------------------------------------------------------------------


class MlsRuntime:
    """One instance of the wasm module."""

    def __init__(self, exports: Any) -> None:
        self._exports = exports
        self._js_exception = _ffi.JsException
        self._new_u8 = _ffi.new_uint8array
        self._empty = self._new_u8(0)
        self._free: dict[int, list[Any]] = {}  # length -> arrays free for the next call
        self._lent: list[tuple[int, Any]] = []  # arrays handed out for the call being built
        self.trapped = False

    @classmethod
    def load(cls) -> MlsRuntime:
        """Instantiate the module shipped in this package afresh."""
        return cls(instantiate())

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call into wasm, translating JS exceptions; refuse once the instance trapped."""
        if self.trapped:
            raise errors.WasmTrap("this wasm instance trapped earlier; load a fresh one")
        try:
            return fn(*args)
        except self._js_exception as exc:
            error = _translate(exc)
        finally:
            if self._lent:
                self._give_back()
        # Raised outside the handler so no JS exception rides along as __context__.
        if isinstance(error, errors.WasmTrap):
            self.trapped = True
        raise error

    def u8(self, data: bytes) -> Any:
        """Python bytes as a JS Uint8Array, valid until the next :meth:`call` returns.

        Pass it to that call only: the array is reused afterwards.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise errors.InvalidInput(f"expected bytes, got {type(data).__name__}")
        size = len(data)
        if size == 0:
            return self._empty
        if size > _POOL_MAX_LENGTH:
            return _ffi.to_js_bytes(data)
        free = self._free.get(size)
        array = free.pop() if free else self._new_u8(size)
        array.assign(data)
        self._lent.append((size, array))
        return array

    def _give_back(self) -> None:
        for size, array in self._lent:
            free = self._free.get(size)
            if free is None:
                if len(self._free) >= _POOL_LENGTHS:
                    continue
                free = self._free[size] = []
            if len(free) < _POOL_PER_LENGTH:
                free.append(array)
        self._lent.clear()

    @property
    def build_info(self) -> dict[str, str]:
        text = str(self._exports.buildInfo())
        return dict(line.split("=", 1) for line in text.splitlines())

    def provider(self) -> Provider:
        return Provider(self, self.call(self._exports.Provider.new))


class Provider:
    """Crypto plus the key/value working set OpenMLS reads and writes."""

    def __init__(self, runtime: MlsRuntime, js: Any) -> None:
        self.runtime = runtime
        self.js = js
        self._checkpoint = js.checkpoint  # bound once: a JsProxy attribute lookup is a crossing

    def checkpoint(self) -> list[Change]:
        """Every change since the last checkpoint; starts a new one."""
        return decode_changes(self.runtime.call(self._checkpoint).to_bytes())

    def rollback(self) -> None:
        """Undo every change since the last checkpoint."""
        self.runtime.call(self.js.rollback)

    def savepoint(self) -> Savepoint:
        """Undo every change made inside the block if it raises. Savepoints nest.

        Use as ``with provider.savepoint(): ...``.
        """
        return Savepoint(self)

    @property
    def has_changes(self) -> bool:
        return bool(self.js.hasChanges)

    def restore(self, entries: Iterable[Change]) -> None:
        """Load stored entries (already durable; not reported by the next checkpoint)."""
        self.runtime.call(self.js.restore, self.runtime.u8(encode_changes(entries)))

    def import_entries(self, entries: Iterable[Change]) -> None:
        """Write entries as new changes (reported by the next checkpoint)."""
        self.runtime.call(self.js.importEntries, self.runtime.u8(encode_changes(entries)))

    def group_entries(self, group_id: bytes) -> list[tuple[bytes, bytes]]:
        raw = self.runtime.call(self.js.groupEntries, self.runtime.u8(group_id)).to_bytes()
        return [(key, value) for key, value in decode_changes(raw) if value is not None]

    def drop_group(self, group_id: bytes) -> None:
        self.runtime.call(self.js.dropGroup, self.runtime.u8(group_id))

    def group_prefix(self, group_id: bytes) -> bytes:
        return bytes(
            self.runtime.call(self.runtime._exports.Provider.groupPrefix, self.runtime.u8(group_id)).to_bytes()
        )

    @property
    def entry_count(self) -> int:
        return int(self.js.entryCount)

    def create_identity(self, user_id: bytes) -> Identity:
        """A new Ed25519 signing identity for ``user_id``, stored in this provider."""
        js = self.runtime.call(self.runtime._exports.Identity.create, self.js, self.runtime.u8(user_id))
        return Identity(self, js, bytes(user_id))

    def load_identity(self, user_id: bytes, public_key: bytes) -> Identity:
        js = self.runtime.call(
            self.runtime._exports.Identity.load, self.js, self.runtime.u8(user_id), self.runtime.u8(public_key)
        )
        return Identity(self, js, bytes(user_id))

    def create_group(self, identity: Identity, group_id: bytes) -> Group:
        js = self.runtime.call(self.runtime._exports.Group.create, self.js, identity.js, self.runtime.u8(group_id))
        return Group(self, js, identity)

    def join_group(self, identity: Identity, welcome: bytes) -> Group:
        """Join through ``welcome``, made for a KeyPackage of ``identity``'s."""
        js = self.runtime.call(self.runtime._exports.Group.join, self.js, self.runtime.u8(welcome))
        return Group(self, js, identity)

    def inspect_key_package(self, key_package: bytes) -> tuple[bytes, bytes]:
        """Validate a KeyPackage; returns ``(credential identity, signature key)``."""
        raw = self.runtime.call(self.runtime._exports.inspectKeyPackage, self.js, self.runtime.u8(key_package))
        identity, signature_key = decode_byte_list(raw.to_bytes())
        return identity, signature_key

    def load_group(self, identity: Identity, group_id: bytes) -> Group | None:
        js = self.runtime.call(self.runtime._exports.Group.load, self.js, self.runtime.u8(group_id))
        return None if js is None else Group(self, js, identity)


class Savepoint:
    """``with provider.savepoint():`` (a class, not a generator: every send goes through it)."""

    __slots__ = ("_provider",)

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def __enter__(self) -> None:
        provider = self._provider
        provider.runtime.call(provider.js.savepoint)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        provider = self._provider
        if exc is None:
            provider.runtime.call(provider.js.releaseSavepoint)
        else:
            provider.runtime.call(provider.js.rollbackToSavepoint)


class Identity:
    """A device's signature key pair and BasicCredential (identity = user id)."""

    def __init__(self, provider: Provider, js: Any, user_id: bytes) -> None:
        self.provider = provider
        self.js = js
        self.user_id = user_id
        self.public_key: bytes = js.publicKey.to_bytes()

    def key_package(self) -> bytes:
        """A fresh KeyPackage (TLS-serialized MlsMessage) whose private keys stay here."""
        return bytes(self.provider.runtime.call(self.js.keyPackage, self.provider.js).to_bytes())

    def sign_with_label(self, label: str, content: bytes) -> bytes:
        """An Ed25519 signature with this identity's key (:attr:`public_key`) over
        ``b"ping-web/" + label + b"\\x00" + content``: proof of the key to someone outside
        the group (a relay's registration and login). ``label`` is 1..64 printable ASCII
        characters, else :class:`~ping_web.errors.InvalidInput`. Changes no state."""
        if not isinstance(label, str) or not 1 <= len(label) <= 64 or not all(" " <= c <= "~" for c in label):
            raise errors.InvalidInput(f"a signature label is 1..64 printable ASCII characters, got {label!r}")
        runtime = self.provider.runtime
        signature = runtime.call(self.js.signWithLabel, self.provider.js, label, runtime.u8(bytes(content)))
        return bytes(signature.to_bytes())


class Group:
    """One MLS group, as a member whose ``identity`` signs what it sends.

    A :class:`~ping_web.core.engine.MlsGroup`. A failed call leaves the group and the
    working set unchanged.
    """

    def __init__(self, provider: Provider, js: Any, identity: Identity) -> None:
        self.provider = provider
        self.js = js
        self.identity = identity
        self._call = provider.runtime.call
        self._u8 = provider.runtime.u8
        # The per-message exports, bound once (a JsProxy attribute lookup is a crossing).
        self._create_message = js.createMessage
        self._process_message = js.processMessage
        # Fixed for the group's life: read once.
        self.group_id: bytes = bytes(js.groupId.to_bytes())
        self.own_leaf_index: int = int(js.ownLeafIndex)

    @property
    def epoch(self) -> int:
        return int(self.js.epoch)

    @property
    def is_active(self) -> bool:
        return bool(self.js.isActive)

    @property
    def has_pending_commit(self) -> bool:
        return bool(self.js.hasPendingCommit)

    def members(self) -> list[Member]:
        items = decode_byte_list(self._call(self.js.members).to_bytes())
        return [Member(_U32.unpack(items[i])[0], items[i + 1], items[i + 2]) for i in range(0, len(items), 3)]

    def add_members(self, key_packages: Sequence[bytes], aad: bytes = b"") -> tuple[bytes, bytes]:
        """Stage a commit adding these KeyPackages; returns ``(commit, welcome)``.

        ``aad`` (here and below) is authenticated data bound into the MLS message.
        """
        raw = self._call(
            self.js.addMembers,
            self.provider.js,
            self.identity.js,
            self._u8(encode_byte_list(key_packages)),
            self._u8(aad),
        )
        commit, welcome = decode_byte_list(raw.to_bytes())
        return commit, welcome

    def remove_members(self, leaf_indexes: Sequence[int], aad: bytes = b"") -> bytes:
        """Stage a commit removing the members at these leaves; returns the commit."""
        leaves = _ffi.uint32_array(leaf_indexes)
        return bytes(
            self._call(self.js.removeMembers, self.provider.js, self.identity.js, leaves, self._u8(aad)).to_bytes()
        )

    def self_update(self, aad: bytes = b"") -> bytes:
        """Stage a commit refreshing our own leaf; returns the commit."""
        return bytes(self._call(self.js.selfUpdate, self.provider.js, self.identity.js, self._u8(aad)).to_bytes())

    def merge_pending_commit(self) -> None:
        self._call(self.js.mergePendingCommit, self.provider.js)

    def clear_pending_commit(self) -> None:
        self._call(self.js.clearPendingCommit, self.provider.js)

    def create_message(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        call = self._call(self._create_message, self.provider.js, self.identity.js, self._u8(plaintext), self._u8(aad))
        return bytes(call.to_bytes())

    def process_message(self, message: bytes, expected_aad: bytes = b"", plaintext_sha256: bytes = b"") -> Processed:
        """Process one inbound message; commits are merged.

        With ``expected_aad``, a message that authenticated other data is rejected
        (:class:`~ping_web.errors.HeaderMismatch`); with ``plaintext_sha256``, an application
        message whose plaintext hashes to anything else is rejected
        (:class:`~ping_web.errors.ContentHashMismatch`). A rejected message changes nothing.
        """
        raw = self._call(
            self._process_message,
            self.provider.js,
            self._u8(message),
            self._u8(expected_aad),
            self._u8(plaintext_sha256),
        ).to_bytes()
        kind, flags, sender, epoch = _PROCESSED_HEADER.unpack_from(raw)
        return Processed(
            kind=ProcessedKind(kind),
            still_member=bool(flags & 1),
            sender_leaf=None if sender == _DELETED else sender,
            epoch=epoch,
            plaintext=raw[_PROCESSED_HEADER.size :],
        )

    def export_secret(self, label: str, context: bytes, length: int) -> bytes:
        if not isinstance(length, int) or not 1 <= length <= 1024:
            raise errors.InvalidInput(f"export_secret length must be 1..1024, got {length!r}")
        return bytes(self._call(self.js.exportSecret, self.provider.js, label, self._u8(context), length).to_bytes())
