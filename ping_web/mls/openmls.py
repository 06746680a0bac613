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
# Head of a ...WithChanges input: flags, then the first field's length.
_WITH_CHANGES_HEAD = struct.Struct(">BI")
_CHECKPOINT_FIRST = 1

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


def _fields(data: bytes, start: int = 0) -> Iterator[bytes | None]:
    """The length-prefixed fields of ``data`` (from ``start``) in order; the DELETED length
    stands for ``None``."""
    view = memoryview(data)
    pos = start
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


def decode_changes(data: bytes, start: int = 0) -> list[Change]:
    fields = _fields(data, start)
    return [(key or b"", value) for key, value in zip(fields, fields, strict=True)]


def _require_bytes(*values: object) -> None:
    for value in values:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise errors.InvalidInput(f"expected bytes, got {type(value).__name__}")


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

    def verify(self, public_key: bytes, label: str, content: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``public_key``'s strict Ed25519 signature over ``b"ping-web/"
        + label + b"\\x00" + content`` (what :meth:`Identity.sign_with_label` makes): a
        :class:`~ping_web.core.devlog.SignatureVerifier` for device logs."""
        _require_bytes(public_key, content, signature)
        return bool(
            self.call(self._exports.verifyWithLabel, self.u8(public_key), label, self.u8(content), self.u8(signature))
        )

    @property
    def memory_bytes(self) -> int:
        """Size of this instance's linear memory (it only grows)."""
        return int(self._exports.wasmMemory.buffer.byteLength)


class Provider:
    """Crypto plus the key/value working set OpenMLS reads and writes.

    Sending and receiving a message is one crossing into wasm each: the call also reports
    every change since the last checkpoint, and :meth:`checkpoint` hands that report out
    without another call. What the provider tracks for that:

    * ``_report``: the last such report (raw bytes and where its change list starts), which
      is every change since the last checkpoint as long as nothing else changed the working
      set since (``_dirty`` is false);
    * ``_checkpoint_due``: :meth:`checkpoint` handed a report out, so wasm still counts those
      changes; the next message call takes its checkpoint first, any other mutating call
      takes it before it runs.
    """

    def __init__(self, runtime: MlsRuntime, js: Any) -> None:
        self.runtime = runtime
        self.js = js
        self._checkpoint = js.checkpoint  # bound once: a JsProxy attribute lookup is a crossing
        self._report: tuple[bytes, int] | None = None
        self._dirty = False
        self._checkpoint_due = False

    def checkpoint(self) -> list[Change]:
        """Every change since the last checkpoint; starts a new one."""
        report = self._report
        if report is not None and not self._dirty:
            self._report = None
            self._checkpoint_due = True
            raw, start = report
            return decode_changes(raw, start)
        changes = decode_changes(self.runtime.call(self._checkpoint).to_bytes())
        self._report, self._dirty, self._checkpoint_due = None, False, False
        return changes

    def _settle(self) -> None:
        """Take the checkpoint :meth:`checkpoint` already handed out, if it is due."""
        if self._checkpoint_due:
            self.runtime.call(self._checkpoint)
            self._checkpoint_due = False

    def _mutating(self) -> None:
        """Before any call that may change the working set, other than the message calls."""
        self._settle()
        self._dirty = True
        self._report = None

    def _reported(self, raw: bytes, start: int) -> None:
        """A message call reported every change since the last checkpoint (from ``start``)."""
        self._report = (raw, start)
        self._dirty = False

    def rollback(self) -> None:
        """Undo every change since the last checkpoint."""
        self._settle()
        self.runtime.call(self.js.rollback)
        self._report, self._dirty = None, False

    def savepoint(self) -> Savepoint:
        """Undo every change made inside the block if it raises. Savepoints nest.

        Use as ``with provider.savepoint(): ...``.
        """
        return Savepoint(self)

    @property
    def has_changes(self) -> bool:
        if not self._dirty:
            if self._report is not None:
                raw, start = self._report
                return len(raw) > start
            if self._checkpoint_due:
                return False  # what wasm still counts was handed out already
        return bool(self.js.hasChanges)

    def restore(self, entries: Iterable[Change]) -> None:
        """Load stored entries (already durable; not reported by the next checkpoint)."""
        self._settle()
        self.runtime.call(self.js.restore, self.runtime.u8(encode_changes(entries)))

    def import_entries(self, entries: Iterable[Change]) -> None:
        """Write entries as new changes (reported by the next checkpoint)."""
        self._mutating()
        self.runtime.call(self.js.importEntries, self.runtime.u8(encode_changes(entries)))

    def group_entries(self, group_id: bytes) -> list[tuple[bytes, bytes]]:
        raw = self.runtime.call(self.js.groupEntries, self.runtime.u8(group_id)).to_bytes()
        return [(key, value) for key, value in decode_changes(raw) if value is not None]

    def drop_group(self, group_id: bytes) -> None:
        self._mutating()
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
        self._mutating()
        js = self.runtime.call(self.runtime._exports.Identity.create, self.js, self.runtime.u8(user_id))
        return Identity(self, js, bytes(user_id))

    def load_identity(self, user_id: bytes, public_key: bytes) -> Identity:
        js = self.runtime.call(
            self.runtime._exports.Identity.load, self.js, self.runtime.u8(user_id), self.runtime.u8(public_key)
        )
        return Identity(self, js, bytes(user_id))

    def create_group(self, identity: Identity, group_id: bytes) -> Group:
        self._mutating()
        js = self.runtime.call(self.runtime._exports.Group.create, self.js, identity.js, self.runtime.u8(group_id))
        return Group(self, js, identity)

    def join_group(self, identity: Identity, welcome: bytes) -> Group:
        """Join through ``welcome``, made for a KeyPackage of ``identity``'s."""
        self._mutating()
        js = self.runtime.call(self.runtime._exports.Group.join, self.js, self.runtime.u8(welcome))
        return Group(self, js, identity)

    def inspect_group_info(self, group_info: bytes) -> tuple[bytes, int]:
        """``(group id, epoch)`` a GroupInfo claims (unverified; joining verifies it)."""
        raw = self.runtime.call(self.runtime._exports.inspectGroupInfo, self.runtime.u8(group_info))
        group_id, epoch = decode_byte_list(raw.to_bytes())
        return group_id, int.from_bytes(epoch, "big")

    def join_external(self, identity: Identity, group_info: bytes, aad: bytes) -> tuple[Group, bytes]:
        """Join the group ``group_info`` describes by an external commit (a leaf with
        ``identity``'s key is removed in the same commit: a stale copy rejoining). Returns the
        group, already merged as OpenMLS does for external commits, and the commit."""
        self._mutating()
        join = self.runtime.call(
            self.runtime._exports.Group.joinExternal, self.js, identity.js, self.runtime.u8(group_info),
            self.runtime.u8(aad),
        )  # fmt: skip
        commit = bytes(join.commit.to_bytes())
        return Group(self, self.runtime.call(join.takeGroup), identity), commit

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
        provider._settle()
        provider.runtime.call(provider.js.savepoint)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        provider = self._provider
        if exc is None:
            provider.runtime.call(provider.js.releaseSavepoint)
        else:
            provider._mutating()  # a report taken inside the savepoint no longer holds
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
        self.provider._mutating()
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
        self._create_message = js.createMessageWithChanges
        self._process_message = js.processMessageWithChanges
        # Fixed for the group's life: read once.
        self.group_id: bytes = bytes(js.groupId.to_bytes())
        self.own_leaf_index: int = int(js.ownLeafIndex)
        # Read from wasm when needed, then kept: a processed message reports both, and only
        # processing a commit or merging our own changes them (or a failed call that reloads).
        self._epoch: int | None = None
        self._active: bool | None = None

    @property
    def epoch(self) -> int:
        if self._epoch is None:
            self._epoch = int(self.js.epoch)
        return self._epoch

    @property
    def is_active(self) -> bool:
        if self._active is None:
            self._active = bool(self.js.isActive)
        return self._active

    @property
    def has_pending_commit(self) -> bool:
        return bool(self.js.hasPendingCommit)

    def _mutating(self) -> None:
        self.provider._mutating()
        self._epoch = self._active = None

    def members(self) -> list[Member]:
        items = decode_byte_list(self._call(self.js.members).to_bytes())
        return [Member(_U32.unpack(items[i])[0], items[i + 1], items[i + 2]) for i in range(0, len(items), 3)]

    def add_members(self, key_packages: Sequence[bytes], aad: bytes = b"") -> tuple[bytes, bytes]:
        """Stage a commit adding these KeyPackages; returns ``(commit, welcome)``.

        ``aad`` (here and below) is authenticated data bound into the MLS message.
        """
        self._mutating()
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
        self._mutating()
        return bytes(
            self._call(self.js.removeMembers, self.provider.js, self.identity.js, leaves, self._u8(aad)).to_bytes()
        )

    def self_update(self, aad: bytes = b"") -> bytes:
        """Stage a commit refreshing our own leaf; returns the commit."""
        self._mutating()
        return bytes(self._call(self.js.selfUpdate, self.provider.js, self.identity.js, self._u8(aad)).to_bytes())

    @property
    def staged_group_info(self) -> bytes | None:
        """The GroupInfo of the epoch our last staged commit makes (``None`` if none was
        staged since this group was loaded)."""
        raw = bytes(self.js.stagedGroupInfo.to_bytes())
        return raw or None

    def export_group_info(self) -> bytes:
        """A GroupInfo of the current epoch (signed by us, ratchet tree and external_pub
        inside): enough for a member's other device, or a stale copy of one, to join by
        external commit."""
        return bytes(self._call(self.js.exportGroupInfo, self.provider.js, self.identity.js).to_bytes())

    def merge_pending_commit(self) -> None:
        self._mutating()
        self._call(self.js.mergePendingCommit, self.provider.js)

    def clear_pending_commit(self) -> None:
        self._mutating()
        self._call(self.js.clearPendingCommit, self.provider.js)

    def create_message(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt an application message (one call into wasm, which also reports the
        working set's changes for the provider's next checkpoint)."""
        _require_bytes(plaintext, aad)
        provider = self.provider
        due = provider._checkpoint_due
        data = self._u8(_WITH_CHANGES_HEAD.pack(_CHECKPOINT_FIRST if due else 0, len(aad)) + aad + plaintext)
        try:
            raw: bytes = self._call(self._create_message, provider.js, self.identity.js, data).to_bytes()
        finally:
            provider._checkpoint_due = False  # the call took it first, whatever came next
        (size,) = _U32.unpack_from(raw)
        provider._reported(raw, 4 + size)
        return raw[4 : 4 + size]

    def process_message(self, message: bytes, expected_aad: bytes = b"", plaintext_sha256: bytes = b"") -> Processed:
        """Process one inbound message; commits are merged.

        With ``expected_aad``, a message that authenticated other data is rejected
        (:class:`~ping_web.errors.HeaderMismatch`); with ``plaintext_sha256``, an application
        message whose plaintext hashes to anything else is rejected
        (:class:`~ping_web.errors.ContentHashMismatch`). A rejected message changes nothing.
        One call into wasm, which also reports the working set's changes.
        """
        _require_bytes(message, expected_aad, plaintext_sha256)
        provider = self.provider
        due = provider._checkpoint_due
        head = _WITH_CHANGES_HEAD.pack(_CHECKPOINT_FIRST if due else 0, len(message))
        data = self._u8(head + message + _U32.pack(len(expected_aad)) + expected_aad + plaintext_sha256)
        try:
            raw: bytes = self._call(self._process_message, provider.js, data).to_bytes()
        except PingError:
            self._epoch = self._active = None  # a failed call may have reloaded the group
            raise
        finally:
            provider._checkpoint_due = False
        (size,) = _U32.unpack_from(raw)
        end = 4 + size
        provider._reported(raw, end)
        kind, flags, sender, epoch = _PROCESSED_HEADER.unpack_from(raw, 4)
        still_member = bool(flags & 1)
        self._epoch, self._active = epoch, still_member
        return Processed(
            kind=ProcessedKind(kind),
            still_member=still_member,
            sender_leaf=None if sender == _DELETED else sender,
            epoch=epoch,
            plaintext=raw[4 + _PROCESSED_HEADER.size : end],
            external=bool(flags & 2),
        )

    def export_secret(self, label: str, context: bytes, length: int) -> bytes:
        if not isinstance(length, int) or not 1 <= length <= 1024:
            raise errors.InvalidInput(f"export_secret length must be 1..1024, got {length!r}")
        return bytes(self._call(self.js.exportSecret, self.provider.js, label, self._u8(context), length).to_bytes())
