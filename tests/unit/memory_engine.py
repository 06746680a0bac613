"""An in-memory MLS engine: a test double for the conversation logic, not cryptography.

:class:`MemoryEngine` and :class:`MemoryGroup` satisfy :class:`~ping_web.core.engine.MlsEngine`
and :class:`~ping_web.core.engine.MlsGroup` and keep the rules of that module's docstring, so
the CPython tests can drive :class:`~ping_web.core.conversation.Conversation` the way OpenMLS
(wasm) does in the Pyodide tests. Nothing here is secure: "encryption" is a SHAKE keystream and
an HMAC tag keyed by the epoch secret. What matters is that bytes cannot be forged or altered
without the secret, and that the behaviours the conversation relies on hold:

* a :class:`MemoryNetwork`, shared by every device, is the ground truth of each group: one
  immutable :class:`EpochState` per (group, epoch, branch) with the members by leaf (identity
  and signature key) and the epoch secret. Two commits made in the same epoch make two
  branches; a device that merged one cannot read the other's messages (a fork is visible);
* each device's MLS state is a working set of ``bytes -> bytes`` entries (identity,
  KeyPackage private keys, one record per group and one per kept epoch), which the tests
  persist and restore like the wasm provider's; a savepoint is a dict snapshot;
* a group object caches its state like the wasm object does: after a savepoint rolls back,
  only :meth:`MemoryEngine.load_group` sees the restored state;
* KeyPackages are minted per device (:meth:`MemoryEngine.key_package`), carry the device's
  identity and signature key under the network's tag, and are one-time: joining deletes the
  private part, so a second join with the same KeyPackage fails;
* add, remove and self-update stage one pending commit (another one is
  :class:`~ping_web.errors.PendingCommit`) until ``merge_pending_commit`` or
  ``clear_pending_commit``; processing another member's commit for the current epoch merges
  it (and drops our pending one, as OpenMLS does); a commit for any other epoch is
  :class:`~ping_web.errors.WrongEpoch`; a member removed by a commit reports
  ``still_member=False`` and is inactive from then on;
* application messages carry a per-sender generation: each generation decrypts once (no
  ratchet reuse), in the current epoch or one of the :data:`MAX_PAST_EPOCHS` before it;
  a message from this member's own leaf is :attr:`~ping_web.core.engine.ProcessedKind.OWN_MESSAGE`;
* ``expected_aad`` and ``plaintext_sha256`` are checked as the wasm module checks them
  (:class:`~ping_web.errors.HeaderMismatch`, :class:`~ping_web.errors.ContentHashMismatch`);
  malformed bytes are :class:`~ping_web.errors.DecodeError`, bytes that fail their tag are
  :class:`~ping_web.errors.MlsError`; every failing call changes nothing.

Left out: proposals, external joins, the sender ratchet's out-of-order window (every
generation of a kept epoch decrypts once, however late), and leaf key material (a
self-update changes the epoch secret, not the member's visible signature key).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Final

from ping_web.core import codec
from ping_web.core.engine import Member, Processed, ProcessedKind
from ping_web.errors import (
    ContentHashMismatch,
    DecodeError,
    HeaderMismatch,
    InvalidInput,
    MlsError,
    NoPendingCommit,
    NotAMember,
    PendingCommit,
    StorageCorrupted,
    WrongEpoch,
)

MAX_PAST_EPOCHS: Final = 3
"""Past epochs whose secrets are kept (as in the wasm module's group configuration)."""
MAX_EXPORT_LENGTH: Final = 1024
GROUP_ID_LENGTH: Final = 16

_IDENTITY_KEY: Final = b"\x00identity"
_KEY_PACKAGE_PREFIX: Final = b"\x00kp/"
_GROUP_PREFIX: Final = b"\x01group/"
_GROUP_RECORD: Final = b"g"
_EPOCH_RECORD: Final = b"e"

_APPLICATION: Final = "application"
_COMMIT: Final = "commit"
_WELCOME: Final = "welcome"
_KEY_PACKAGE: Final = "key_package"
_WIRE_KEYS: Final = frozenset({"v", "t", "b", "m"})


def _mac(key: bytes, label: str, data: bytes) -> bytes:
    return hmac.new(key, label.encode() + b"\x00" + data, hashlib.sha256).digest()


def _keystream(secret: bytes, nonce: bytes, length: int) -> bytes:
    return hashlib.shake_256(b"keystream\x00" + secret + nonce).digest(length)


def _xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


# -- the network: every group's ground truth ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class EpochState:
    """One epoch of one group, as some commit (or the creation) made it."""

    state_id: bytes
    group_id: bytes
    epoch: int
    parent: bytes | None
    """The state this one was committed from (``None`` for a new group's epoch 0)."""
    members: tuple[Member, ...]
    secret: bytes = field(repr=False)

    def member_at(self, leaf: int) -> Member | None:
        for member in self.members:
            if member.leaf_index == leaf:
                return member
        return None


class MemoryNetwork:
    """What every device shares: group states by id, and the key that tags KeyPackages and
    Welcomes (standing in for signatures and HPKE). Deterministic, so Hypothesis can replay."""

    def __init__(self, seed: bytes = b"") -> None:
        self._seed = seed
        self._counter = 0
        self._key = self.fresh("network key")
        self.states: dict[bytes, EpochState] = {}

    def fresh(self, label: str) -> bytes:
        """32 new bytes, never returned before."""
        self._counter += 1
        return hashlib.sha256(f"{label}\x00{self._counter}\x00".encode() + self._seed).digest()

    def new_state(self, group_id: bytes, epoch: int, parent: bytes | None, members: Iterable[Member]) -> EpochState:
        state = EpochState(
            state_id=self.fresh("state"),
            group_id=group_id,
            epoch=epoch,
            parent=parent,
            members=tuple(sorted(members, key=lambda m: m.leaf_index)),
            secret=self.fresh("epoch secret"),
        )
        self.states[state.state_id] = state
        return state

    def state(self, state_id: bytes) -> EpochState:
        try:
            return self.states[state_id]
        except KeyError:
            raise MlsError("process_failed", "unknown group state") from None

    def seal(self, kind: str, body: dict[str, Any], key: bytes | None = None) -> bytes:
        """Wire bytes of one message: its body and a tag under ``key`` (the network's if None)."""
        raw = codec.encode({"v": 1, **body})
        return codec.encode({"v": 1, "t": kind, "b": raw, "m": _mac(key or self._key, kind, raw)})

    def verify_network_tag(self, kind: str, raw: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(_mac(self._key, kind, raw), tag)

    @staticmethod
    def export(secret: bytes, label: str, context: bytes, length: int) -> bytes:
        return hashlib.shake_256(b"exporter\x00" + secret + label.encode() + b"\x00" + context).digest(length)


@dataclass(frozen=True, slots=True)
class Opened:
    """A message's parts, decoded but not yet verified."""

    kind: str
    raw: bytes
    tag: bytes
    body: dict[str, Any]


def open_message(data: bytes) -> Opened:
    """Decode wire bytes (any problem is :class:`DecodeError`); the tag is not checked here."""
    with codec.record(data, "memory MLS message", keys=_WIRE_KEYS, versions=(1,)) as wire:
        kind = codec.text(wire["t"], "type", hi=32)
        raw = codec.byte_string(wire["b"], "body", lo=1)
        tag = codec.byte_string(wire["m"], "tag", size=32)
    keys = _BODY_KEYS.get(kind)
    if keys is None:
        raise DecodeError(f"memory MLS message: unknown type {kind!r}")
    with codec.record(raw, f"memory MLS {kind}", keys=keys, versions=(1,)) as body:
        _check_body(kind, body)
    return Opened(kind, raw, tag, body)


_BODY_KEYS: Final = {
    _APPLICATION: frozenset({"v", "g", "e", "l", "n", "a", "c"}),
    _COMMIT: frozenset({"v", "g", "e", "l", "s", "a"}),
    _WELCOME: frozenset({"v", "g", "s", "k"}),
    _KEY_PACKAGE: frozenset({"v", "i", "k", "p"}),
}


def _check_body(kind: str, body: dict[str, Any]) -> None:
    if kind == _KEY_PACKAGE:
        codec.byte_string(body["i"], "identity", lo=1, hi=255)
        codec.byte_string(body["k"], "signature key", size=32)
        codec.byte_string(body["p"], "KeyPackage id", size=32)
        return
    codec.byte_string(body["g"], "group id", size=GROUP_ID_LENGTH)
    if kind == _WELCOME:
        codec.byte_string(body["s"], "state", size=32)
        if not isinstance(body["k"], list) or not body["k"]:
            raise InvalidInput("welcome: expected a non-empty list of KeyPackage ids")
        for item in body["k"]:
            codec.byte_string(item, "KeyPackage id", size=32)
        return
    codec.uint(body["e"], "epoch")
    codec.uint(body["l"], "leaf", hi=codec.U32_MAX)
    codec.byte_string(body["a"], "aad")
    if kind == _APPLICATION:
        codec.uint(body["n"], "generation", hi=codec.U32_MAX)
        codec.byte_string(body["c"], "ciphertext")
    else:
        codec.byte_string(body["s"], "state", size=32)


# -- one device's working set --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Epoch:
    """What a member keeps of one epoch: its state, secret and the generations consumed."""

    state_id: bytes
    secret: bytes = field(repr=False)
    consumed: dict[int, frozenset[int]] = field(default_factory=dict)

    def encode(self) -> bytes:
        consumed = [[leaf, sorted(gens)] for leaf, gens in sorted(self.consumed.items())]
        return codec.encode({"v": 1, "s": self.state_id, "x": self.secret, "c": consumed})

    @classmethod
    def decode(cls, data: bytes) -> _Epoch:
        with codec.record(data, "epoch record", keys=frozenset({"v", "s", "x", "c"}), versions=(1,)) as m:
            consumed = {leaf: frozenset(gens) for leaf, gens in m["c"]}
            return cls(m["s"], m["x"], consumed)


@dataclass(frozen=True, slots=True)
class _Pending:
    state_id: bytes
    commit_sha256: bytes


@dataclass(frozen=True, slots=True)
class _GroupView:
    """A group's whole state on one device (immutable: every change makes a new view)."""

    group_id: bytes
    epoch: int
    own_leaf: int
    active: bool
    next_generation: int
    """The generation of this member's next application message in the current epoch."""
    pending: _Pending | None
    epochs: dict[int, _Epoch]
    """The current epoch and up to MAX_PAST_EPOCHS before it."""

    @property
    def current(self) -> _Epoch:
        return self.epochs[self.epoch]

    def encode_record(self) -> bytes:
        pending = None if self.pending is None else [self.pending.state_id, self.pending.commit_sha256]
        return codec.encode({
            "v": 1, "e": self.epoch, "l": self.own_leaf, "a": self.active, "n": self.next_generation, "p": pending,
        })  # fmt: skip


def _epoch_key(prefix: bytes, epoch: int) -> bytes:
    return prefix + _EPOCH_RECORD + epoch.to_bytes(8, "big")


class MemoryEngine:
    """One device's MLS: its identity and every group, in one undoable working set."""

    def __init__(self, network: MemoryNetwork, entries: dict[bytes, bytes]) -> None:
        self.network = network
        self._entries = entries
        with codec.record(entries[_IDENTITY_KEY], "identity", keys=frozenset({"v", "i", "k"}), versions=(1,)) as m:
            self.user: bytes = m["i"]
            self.signature_key: bytes = m["k"]

    @classmethod
    def new(cls, network: MemoryNetwork, user: bytes) -> MemoryEngine:
        """A new device of ``user`` with a fresh signature key."""
        identity = codec.encode({"v": 1, "i": bytes(user), "k": network.fresh("signature key")})
        return cls(network, {_IDENTITY_KEY: identity})

    @classmethod
    def restore(cls, network: MemoryNetwork, entries: Iterable[tuple[bytes, bytes]]) -> MemoryEngine:
        """The device again, from a copy of its working set (after a restart)."""
        return cls(network, dict(entries))

    def entries(self) -> dict[bytes, bytes]:
        """A copy of the whole working set: what a device persists."""
        return dict(self._entries)

    def identity_entries(self) -> list[tuple[bytes, bytes]]:
        """The signing identity alone: what a backup carries besides its groups' snapshots."""
        return [(_IDENTITY_KEY, self._entries[_IDENTITY_KEY])]

    # -- KeyPackages ----------------------------------------------------------------------------

    def key_package(self) -> bytes:
        """A fresh one-time KeyPackage; its private part stays in this working set."""
        package_id = self.network.fresh("key package")
        self._entries[_KEY_PACKAGE_PREFIX + package_id] = codec.encode({"v": 1, "k": self.signature_key})
        return self.network.seal(_KEY_PACKAGE, {"i": self.user, "k": self.signature_key, "p": package_id})

    def inspect_key_package(self, key_package: bytes) -> tuple[bytes, bytes]:
        opened = open_message(key_package)
        return _verified_key_package(self.network, opened)[:2]

    # -- groups ---------------------------------------------------------------------------------

    def create_group(self, group_id: bytes) -> MemoryGroup:
        if type(group_id) is not bytes or len(group_id) != GROUP_ID_LENGTH:
            raise InvalidInput(f"group id must be {GROUP_ID_LENGTH} bytes")
        if self._read_view(group_id) is not None:
            raise InvalidInput("a group with this id already exists")
        state = self.network.new_state(group_id, 0, None, [Member(0, self.user, self.signature_key)])
        view = _GroupView(group_id, 0, 0, True, 0, None, {0: _Epoch(state.state_id, state.secret)})
        self._write_view(view)
        return MemoryGroup(self, view)

    def join_group(self, welcome: bytes) -> MemoryGroup:
        opened = open_message(welcome)
        if opened.kind != _WELCOME:
            raise InvalidInput("expected a Welcome")
        if not self.network.verify_network_tag(_WELCOME, opened.raw, opened.tag):
            raise MlsError("join_failed", "the Welcome does not verify")
        owned = [p for p in opened.body["k"] if _KEY_PACKAGE_PREFIX + p in self._entries]
        if not owned:
            raise MlsError("join_failed", "no KeyPackage of this device matches the Welcome (used or unknown)")
        state = self.network.state(opened.body["s"])
        if state.group_id != opened.body["g"]:
            raise MlsError("join_failed", "the Welcome names another group")
        if self._read_view(state.group_id) is not None:
            raise MlsError("join_failed", "this device is already in the group")
        own = [m for m in state.members if m.signature_key == self.signature_key]
        if len(own) != 1:
            raise MlsError("join_failed", "the Welcome's group has no leaf for this device")
        view = _GroupView(state.group_id, state.epoch, own[0].leaf_index, True, 0, None,
                          {state.epoch: _Epoch(state.state_id, state.secret)})  # fmt: skip
        self._write_view(view)
        for package_id in owned:
            del self._entries[_KEY_PACKAGE_PREFIX + package_id]
        return MemoryGroup(self, view)

    def load_group(self, group_id: bytes) -> MemoryGroup | None:
        view = self._read_view(group_id)
        return None if view is None else MemoryGroup(self, view)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        saved = dict(self._entries)
        try:
            yield
        except BaseException:
            self._entries.clear()
            self._entries.update(saved)
            raise

    def group_prefix(self, group_id: bytes) -> bytes:
        return _GROUP_PREFIX + bytes(group_id) + b"/"

    def group_entries(self, group_id: bytes) -> list[tuple[bytes, bytes]]:
        prefix = self.group_prefix(group_id)
        return sorted((k, v) for k, v in self._entries.items() if k.startswith(prefix))

    def drop_group(self, group_id: bytes) -> None:
        for key, _ in self.group_entries(group_id):
            del self._entries[key]

    def import_entries(self, entries: Iterable[tuple[bytes, bytes | None]]) -> None:
        for key, value in entries:
            if value is None:
                self._entries.pop(key, None)
            else:
                self._entries[bytes(key)] = bytes(value)

    # -- the working set's group records --------------------------------------------------------

    def _read_view(self, group_id: bytes) -> _GroupView | None:
        prefix = self.group_prefix(group_id)
        raw = self._entries.get(prefix + _GROUP_RECORD)
        if raw is None:
            return None
        try:
            with codec.record(raw, "group record", keys=frozenset({"v", "e", "l", "a", "n", "p"}), versions=(1,)) as m:
                epoch = m["e"]
                pending = None if m["p"] is None else _Pending(*m["p"])
                epochs = {
                    e: _Epoch.decode(self._entries[_epoch_key(prefix, e)])
                    for e in range(max(0, epoch - MAX_PAST_EPOCHS), epoch + 1)
                    if _epoch_key(prefix, e) in self._entries
                }
                if epoch not in epochs:
                    raise InvalidInput(f"epoch {epoch} has no record")
                return _GroupView(group_id, epoch, m["l"], m["a"], m["n"], pending, epochs)
        except DecodeError as exc:
            raise StorageCorrupted(f"group {group_id.hex()}: {exc}") from None

    def _write_view(self, new: _GroupView) -> None:
        """Write a group's records: its group record and exactly the epochs it keeps."""
        prefix = self.group_prefix(new.group_id)
        self._entries[prefix + _GROUP_RECORD] = new.encode_record()
        wanted = {_epoch_key(prefix, epoch): record for epoch, record in new.epochs.items()}
        for key in [k for k in self._entries if k.startswith(prefix + _EPOCH_RECORD) and k not in wanted]:
            del self._entries[key]
        for key, record in wanted.items():
            self._entries[key] = record.encode()


def _verified_key_package(network: MemoryNetwork, opened: Opened) -> tuple[bytes, bytes, bytes]:
    if opened.kind != _KEY_PACKAGE:
        raise InvalidInput("expected a KeyPackage")
    if not network.verify_network_tag(_KEY_PACKAGE, opened.raw, opened.tag):
        raise MlsError("key_package", "the KeyPackage does not verify")
    return opened.body["i"], opened.body["k"], opened.body["p"]


class MemoryGroup:
    """One group of one :class:`MemoryEngine`; its state is cached like the wasm object's."""

    def __init__(self, engine: MemoryEngine, view: _GroupView) -> None:
        self._engine = engine
        self._view = view

    @property
    def _network(self) -> MemoryNetwork:
        return self._engine.network

    def _state(self) -> EpochState:
        return self._network.state(self._view.current.state_id)

    def _commit_to(self, new: _GroupView) -> None:
        self._engine._write_view(new)
        self._view = new

    # -- reading --------------------------------------------------------------------------------

    @property
    def group_id(self) -> bytes:
        return self._view.group_id

    @property
    def epoch(self) -> int:
        return self._view.epoch

    @property
    def own_leaf_index(self) -> int:
        return self._view.own_leaf

    @property
    def is_active(self) -> bool:
        return self._view.active

    @property
    def has_pending_commit(self) -> bool:
        return self._view.pending is not None

    @property
    def state_id(self) -> bytes:
        """Which branch of the group this member is on (for fork checks in tests)."""
        return self._view.current.state_id

    def members(self) -> list[Member]:
        return list(self._state().members)

    def export_secret(self, label: str, context: bytes, length: int) -> bytes:
        if type(length) is not int or not 1 <= length <= MAX_EXPORT_LENGTH:
            raise InvalidInput(f"export length must be 1..{MAX_EXPORT_LENGTH}, got {length!r}")
        self._require_active()
        return MemoryNetwork.export(self._view.current.secret, label, bytes(context), length)

    # -- own commits ----------------------------------------------------------------------------

    def _require_active(self) -> None:
        if not self._view.active:
            raise NotAMember("this member was removed from the group")

    def _require_no_pending(self) -> None:
        self._require_active()
        if self._view.pending is not None:
            raise PendingCommit("a commit is pending")

    def _stage(self, members: Iterable[Member], aad: bytes) -> bytes:
        view = self._view
        state = self._network.new_state(view.group_id, view.epoch + 1, view.current.state_id, members)
        body = {"g": view.group_id, "e": view.epoch, "l": view.own_leaf, "s": state.state_id, "a": bytes(aad)}
        commit = self._network.seal(_COMMIT, body, view.current.secret)
        self._commit_to(replace(view, pending=_Pending(state.state_id, hashlib.sha256(commit).digest())))
        return commit

    def add_members(self, key_packages: Sequence[bytes], aad: bytes) -> tuple[bytes, bytes]:
        packages = [_verified_key_package(self._network, open_message(kp)) for kp in key_packages]
        if not packages:
            raise InvalidInput("no KeyPackages given")
        self._require_no_pending()
        members = list(self._state().members)
        keys = [m.signature_key for m in members] + [k for _, k, _ in packages]
        if len(set(keys)) != len(keys):
            raise MlsError("commit_failed", "a signature key would be in the group twice")
        taken = {m.leaf_index for m in members}
        for identity, signature_key, _ in packages:
            leaf = next(i for i in range(len(taken) + 1) if i not in taken)  # leftmost free leaf
            taken.add(leaf)
            members.append(Member(leaf, identity, signature_key))
        commit = self._stage(members, aad)
        assert self._view.pending is not None
        welcome = self._network.seal(
            _WELCOME, {"g": self._view.group_id, "s": self._view.pending.state_id, "k": [p for _, _, p in packages]}
        )
        return commit, welcome

    def remove_members(self, leaf_indexes: Sequence[int], aad: bytes) -> bytes:
        leaves = set(leaf_indexes)
        if not leaves:
            raise InvalidInput("no leaves given")
        members = self._state().members
        missing = leaves - {m.leaf_index for m in members}
        if missing:
            raise InvalidInput(f"no member at leaves {sorted(missing)}")
        self._require_no_pending()
        if self._view.own_leaf in leaves:
            raise MlsError("commit_failed", "a member cannot remove itself with a commit")
        return self._stage([m for m in members if m.leaf_index not in leaves], aad)

    def self_update(self, aad: bytes) -> bytes:
        self._require_no_pending()
        return self._stage(self._state().members, aad)

    def merge_pending_commit(self) -> None:
        pending = self._view.pending
        if pending is None:
            raise NoPendingCommit("no pending commit to merge")
        self._commit_to(self._advanced(self._network.state(pending.state_id)))

    def clear_pending_commit(self) -> None:
        if self._view.pending is None:
            raise NoPendingCommit("no pending commit to discard")
        self._commit_to(replace(self._view, pending=None))

    def _advanced(self, state: EpochState) -> _GroupView:
        """This member's view once ``state`` (the next epoch) is merged; any pending commit goes."""
        view = self._view
        if state.parent != view.current.state_id or state.epoch != view.epoch + 1:
            raise MlsError("merge_failed", "the commit does not follow this member's epoch")
        epochs = {e: r for e, r in view.epochs.items() if e >= state.epoch - MAX_PAST_EPOCHS}
        epochs[state.epoch] = _Epoch(state.state_id, state.secret)
        own = state.member_at(view.own_leaf)
        active = own is not None and own.signature_key == self._engine.signature_key
        return replace(view, epoch=state.epoch, active=active, next_generation=0, pending=None, epochs=epochs)

    # -- application messages -------------------------------------------------------------------

    def create_message(self, plaintext: bytes, aad: bytes) -> bytes:
        self._require_active()
        view = self._view
        generation = view.next_generation
        nonce = codec.encode([view.epoch, view.own_leaf, generation])
        ciphertext = _xor(bytes(plaintext), _keystream(view.current.secret, nonce, len(plaintext)))
        body = {"g": view.group_id, "e": view.epoch, "l": view.own_leaf, "n": generation, "a": bytes(aad),
                "c": ciphertext}  # fmt: skip
        message = self._network.seal(_APPLICATION, body, view.current.secret)
        self._commit_to(replace(view, next_generation=generation + 1))
        return message

    # -- receiving ------------------------------------------------------------------------------

    def process_message(self, message: bytes, expected_aad: bytes, plaintext_sha256: bytes) -> Processed:
        opened = open_message(message)
        if opened.kind not in (_APPLICATION, _COMMIT):
            raise InvalidInput("expected a group message (application or commit)")
        self._require_active()
        body, view = opened.body, self._view
        if body["g"] != view.group_id:
            raise MlsError("process_failed", "the message belongs to another group")
        if opened.kind == _COMMIT:
            return self._process_commit(opened, expected_aad)
        epoch = body["e"]
        if epoch > view.epoch:
            raise WrongEpoch(f"an application message of epoch {epoch}; the group is at {view.epoch}")
        record = view.epochs.get(epoch)
        if record is None:
            raise MlsError("process_failed", f"the secrets of epoch {epoch} are gone")
        if not hmac.compare_digest(_mac(record.secret, _APPLICATION, opened.raw), opened.tag):
            raise MlsError("process_failed", "the message does not decrypt")
        leaf = body["l"]
        if self._network.state(record.state_id).member_at(leaf) is None:
            raise MlsError("process_failed", f"no member at leaf {leaf} in epoch {epoch}")
        if expected_aad and body["a"] != expected_aad:
            raise HeaderMismatch("the envelope's header does not match the data its sender authenticated")
        if leaf == view.own_leaf:
            return Processed(ProcessedKind.OWN_MESSAGE, True, leaf, view.epoch, b"")
        generation = body["n"]
        consumed = record.consumed.get(leaf, frozenset())
        if generation in consumed:
            raise MlsError("process_failed", f"generation {generation} of leaf {leaf} was already used")
        nonce = codec.encode([epoch, leaf, generation])
        plaintext = _xor(body["c"], _keystream(record.secret, nonce, len(body["c"])))
        if plaintext_sha256 and hashlib.sha256(plaintext).digest() != plaintext_sha256:
            raise ContentHashMismatch("the decrypted plaintext does not match the envelope's content hash")
        updated = replace(record, consumed={**record.consumed, leaf: consumed | {generation}})
        self._commit_to(replace(view, epochs={**view.epochs, epoch: updated}))
        return Processed(ProcessedKind.APPLICATION, True, leaf, view.epoch, plaintext)

    def _process_commit(self, opened: Opened, expected_aad: bytes) -> Processed:
        body, view = opened.body, self._view
        if body["e"] != view.epoch:
            raise WrongEpoch(f"a commit of epoch {body['e']}; the group is at {view.epoch}")
        if not hmac.compare_digest(_mac(view.current.secret, _COMMIT, opened.raw), opened.tag):
            raise MlsError("process_failed", "the commit does not verify in this epoch")
        leaf = body["l"]
        if self._state().member_at(leaf) is None:
            raise MlsError("process_failed", f"no member at leaf {leaf}")
        if expected_aad and body["a"] != expected_aad:
            raise HeaderMismatch("the envelope's header does not match the data its sender authenticated")
        if leaf == view.own_leaf:
            return Processed(ProcessedKind.OWN_MESSAGE, True, leaf, view.epoch, b"")
        new = self._advanced(self._network.state(body["s"]))
        self._commit_to(new)
        return Processed(ProcessedKind.COMMIT, new.active, leaf, new.epoch, b"")
