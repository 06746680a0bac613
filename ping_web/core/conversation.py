"""Conversation: one MLS group plus the wire-level state around it. No I/O.

Each operation turns input into envelopes and state changes: it calls MLS through the
:class:`~ping_web.core.engine.MlsEngine` protocol, then updates meta, cursor, device leaves
and sending state in memory. Persisting them is the caller's job
(:class:`~ping_web.client.MessagingClient` writes the engine's changes and
:meth:`Conversation.records` in one atomic batch).

A failed operation changes nothing: every engine call is atomic by itself, and where a
step after an MLS call fails, this class undoes the call through an engine savepoint and
reloads the group.

Semantics (``docs/design.md``): own commits stay pending until confirmed or discarded;
late application messages of a past epoch are delivered; envelopes from a future epoch
are held until their commit; a commit from another device for the epoch of our pending
commit wins, ours is dropped; an envelope naming this device as its sender is accepted
only as the echo of what this device sent.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from ping_web.core.cursor import SyncCursor
from ping_web.core.engine import Member, MlsEngine, MlsGroup, Processed, ProcessedKind
from ping_web.core.envelope import MAX_PLAINTEXT, IncomingMessage, MessageEnvelope, MessageKind, validate
from ping_web.core.hlc import Hlc
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.records import (
    AddOutcome,
    ConversationMeta,
    GroupStateSnapshot,
    MemberInfo,
    encode_device_leaves,
)
from ping_web.core.state import MAX_HELD, ConversationState, PendingCommitInfo
from ping_web.errors import (
    ExternalCommitRefused,
    InvalidInput,
    NoPendingCommit,
    NotAMember,
    PendingCommit,
    PingError,
    RejoinRequired,
    StateConflict,
    UnknownOwnEnvelope,
    WrongEpoch,
)

_HEADER = struct.Struct(">B16sQQQI")


def authenticated_header(kind: MessageKind, device: DeviceId, epoch: int, seq: int, hlc: Hlc) -> bytes:
    """The envelope header fields a sender binds into its MLS message as authenticated data.

    ``kind u8 || sender_device 16 || epoch u64 || seq u64 || hlc.wall_ms u64 || hlc.counter u32``
    (45 bytes). A receiver rejects an envelope whose header differs, so a relay cannot
    rewrite seq, sender or epoch to make a later genuine message look like a replay.
    """
    return _HEADER.pack(int(kind), device.raw, epoch, seq, hlc.wall_ms, hlc.counter)


OPENMLS_STORAGE_VERSION: Final = 1
MAX_HOLD_AHEAD: Final = 16
"""How many epochs ahead an envelope may be and still be held (further is refused)."""
RESTORE_SEQ_SKIP: Final = 1 << 32
"""Seqs a conversation restored from backup skips: it cannot know how many it used after the
backup was taken, and a reused seq would make receivers drop a new message as a replay."""
EXPORT_LABEL_PREFIX: Final = "ping/"
MAX_EXPORT_LENGTH: Final = 1024
_PLAINTEXT_LIMIT: Final = MAX_PLAINTEXT - 4096
"""Largest plaintext sent: its ciphertext and framing must still fit an envelope."""


@dataclass(slots=True)
class ConversationRecords:
    """What a conversation persists besides its MLS entries, as read back from storage."""

    meta: ConversationMeta
    cursor: SyncCursor
    device_leaves: dict[DeviceId, int]
    state: ConversationState
    held: Sequence[MessageEnvelope] = ()
    """Envelopes waiting for a future epoch (each stored as a record of its own)."""


class Conversation:
    """One conversation of this device: an MLS group, its cursor, meta and sending state."""

    def __init__(self, engine: MlsEngine, device_id: DeviceId, group: MlsGroup, records: ConversationRecords) -> None:
        self._engine = engine
        self._device = device_id
        self._group = group
        self._meta = records.meta
        self._cursor = cursor = records.cursor
        self._leaves = dict(records.device_leaves)
        self._state = records.state
        self._held: dict[tuple[DeviceId, int], MessageEnvelope] = {_held_key(e): e for e in records.held}
        self._held_written: set[tuple[DeviceId, int]] = set(self._held)  # as held_changes() last reported
        self._held_gone: dict[tuple[DeviceId, int], MessageEnvelope] = {}  # released since then
        self._members: list[Member] | None = None  # cache, valid for the current epoch
        self._users_by_leaf: dict[int, UserId] | None = None
        # The epoch since which no member joined or left, as far as this instance saw (one
        # loaded from storage cannot tell, so it assumes the roster just changed).
        self._roster_epoch = group.epoch
        self._persisted_meta: ConversationMeta | None = None  # what records() last encoded
        self._persisted_leaves: dict[DeviceId, int] | None = None
        self._released: list[IncomingMessage] = []
        self._rejected: list[tuple[MessageEnvelope, PingError]] = []
        self._external_joins: list[Member] = []
        self._state.seq = max(self._state.seq, cursor.highest_seq(device_id))

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        engine: MlsEngine,
        device_id: DeviceId,
        now_ms: int,
        *,
        name: str | None = None,
        conversation_id: ConversationId | None = None,
        is_device_group: bool = False,
    ) -> Conversation:
        """A new conversation with this device as its only member (leaf 0, epoch 0)."""
        conversation_id = conversation_id or ConversationId.new()
        meta = ConversationMeta(conversation_id, name, 0, 1, is_device_group, now_ms)  # validates first
        group = engine.create_group(conversation_id.raw)
        state = ConversationState(hlc=_tick(Hlc.ZERO, now_ms))
        return cls(
            engine, device_id, group, ConversationRecords(meta, SyncCursor(0), {device_id: group.own_leaf_index}, state)
        )

    @classmethod
    def join(
        cls,
        engine: MlsEngine,
        device_id: DeviceId,
        welcome: MessageEnvelope,
        now_ms: int,
        *,
        name: str | None = None,
        is_device_group: bool = False,
    ) -> Conversation:
        """Join from a Welcome envelope made for one of this device's KeyPackages.

        The cursor starts at the join epoch, so the commit that added us is skipped.
        """
        if not isinstance(welcome, MessageEnvelope) or welcome.kind is not MessageKind.WELCOME:
            raise InvalidInput("join needs a WELCOME envelope")
        validate(welcome)
        with engine.savepoint():
            group = engine.join_group(welcome.payload)
            if group.group_id != welcome.conversation_id.raw or group.epoch != welcome.epoch:
                raise InvalidInput("the Welcome's group id or epoch does not match its envelope")
        members = group.members()
        meta = ConversationMeta(welcome.conversation_id, name, group.epoch, len(members), is_device_group, now_ms)
        state = ConversationState(hlc=_tick(Hlc.ZERO, now_ms).merge(welcome.hlc, now_ms))
        leaves = {device_id: group.own_leaf_index}
        return cls(engine, device_id, group, ConversationRecords(meta, SyncCursor(group.epoch), leaves, state))

    @classmethod
    def join_external(
        cls, engine: MlsEngine, device_id: DeviceId, group_info: bytes, now_ms: int, *, name: str | None = None
    ) -> tuple[Conversation, MessageEnvelope]:
        """Join by external commit from ``group_info`` (a new device of a member's user):
        the conversation and its commit, pending like any own commit (``rejoin``)."""
        if not isinstance(group_info, (bytes, bytearray)):
            raise InvalidInput("a GroupInfo must be bytes")
        group_id, epoch = engine.inspect_group_info(bytes(group_info))
        conversation_id = ConversationId(group_id)
        hlc = _tick(Hlc.ZERO, now_ms)
        aad = authenticated_header(MessageKind.COMMIT, device_id, epoch, 1, hlc)
        with engine.savepoint():
            group, commit = engine.join_external(bytes(group_info), aad)
            if group.group_id != group_id or group.epoch != epoch + 1:
                raise InvalidInput("the external commit did not join the GroupInfo's group at its epoch")
        members = group.members()
        meta = ConversationMeta(conversation_id, name, group.epoch, len(members), False, now_ms)
        state = ConversationState(hlc=hlc)
        records = ConversationRecords(meta, SyncCursor(epoch), {device_id: group.own_leaf_index}, state)
        conversation = cls(engine, device_id, group, records)
        envelope = MessageEnvelope.handshake(MessageKind.COMMIT, conversation_id, epoch, device_id, 1, hlc, commit)
        conversation._stage(PendingCommitInfo("rejoin", 1, epoch, (), (), envelope.content_hash), hlc)
        return conversation, envelope

    @classmethod
    def load(
        cls, engine: MlsEngine, device_id: DeviceId, records: ConversationRecords, *, held_stored: bool = True
    ) -> Conversation | None:
        """Rehydrate from persisted records; ``None`` if the engine has no such group.

        ``held_stored`` is false when the held envelopes came from a version-1 state record
        rather than from records of their own: the next :meth:`held_changes` reports them all.
        """
        group = engine.load_group(records.meta.id.raw)
        if group is None:
            return None
        conversation = cls(engine, device_id, group, records)
        if not held_stored:
            conversation._held_written.clear()
        return conversation

    @classmethod
    def restore_snapshot(
        cls, engine: MlsEngine, device_id: DeviceId, snapshot: bytes, records: ConversationRecords
    ) -> Conversation:
        """Restore this device's conversation from its own backup.

        The restored copy may have sent more in the snapshot's epoch than the snapshot
        knows, so it must not send there again: it is flagged to commit a self-update
        first, and its seq skips ahead by RESTORE_SEQ_SKIP. If that self-update is
        refused, the conversation needs a rejoin (:class:`~ping_web.errors.RejoinRequired`):
        it never falls back to sending in an epoch another copy may have used. (Linking a
        new device never uses this: a new device is a new member.)
        """
        decoded = GroupStateSnapshot.decode(snapshot)
        meta, state = records.meta, records.state
        if decoded.group_id != meta.id:
            raise InvalidInput("the snapshot is of another conversation")
        if decoded.openmls_storage_version != OPENMLS_STORAGE_VERSION:
            raise InvalidInput(f"snapshot storage version {decoded.openmls_storage_version} is not supported")
        prefix = engine.group_prefix(meta.id.raw)
        if any(not key.startswith(prefix) for key, _ in decoded.entries):
            raise InvalidInput("the snapshot holds entries of another group")
        with engine.savepoint():
            engine.drop_group(meta.id.raw)
            engine.import_entries(decoded.entries)
            group = engine.load_group(meta.id.raw)
            if group is None:
                raise InvalidInput("the snapshot does not hold a complete group")
            try:
                group.clear_pending_commit()  # staged before the backup: its fate is unknown here
            except NoPendingCommit:
                pass
        seq = max(state.seq, records.cursor.highest_seq(device_id)) + RESTORE_SEQ_SKIP
        restored = dataclasses.replace(
            records,
            meta=dataclasses.replace(meta, epoch=group.epoch),
            state=dataclasses.replace(state, seq=seq, pending=None, needs_self_update=True),
        )
        conversation = cls(engine, device_id, group, restored)
        conversation._held_written.clear()  # none of them is stored on this device yet
        return conversation

    # -- reading ---------------------------------------------------------------------------

    @property
    def id(self) -> ConversationId:
        return self._meta.id

    @property
    def meta(self) -> ConversationMeta:
        """Name, epoch and member count: a new value after every membership change."""
        return self._meta

    @property
    def cursor(self) -> SyncCursor:
        """What was applied (dedupe); mutated in place by every envelope."""
        return self._cursor

    @property
    def state(self) -> ConversationState:
        """The sending side: last seq, clock, pending commit, restore and removal flags."""
        return self._state

    @property
    def device_leaves(self) -> dict[DeviceId, int]:
        """Known device -> leaf index map: own leaf, devices we added, senders seen."""
        return dict(self._leaves)

    @property
    def has_pending_commit(self) -> bool:
        return self._state.pending is not None

    @property
    def staged_group_info(self) -> bytes | None:
        """The GroupInfo of the epoch our pending commit makes (for the delivery service to
        keep with it); ``None`` if none is known (e.g. staged before a restart)."""
        return self._group.staged_group_info if self._state.pending is not None else None

    def group_info(self) -> bytes:
        """A signed GroupInfo of the current epoch (for a member's device to rejoin)."""
        return self._group.export_group_info()

    @property
    def own_leaf_index(self) -> int:
        return self._group.own_leaf_index

    def epoch(self) -> int:
        return self._group.epoch

    def members(self) -> list[MemberInfo]:
        """One entry per leaf; a user with several devices appears once per device."""
        return [MemberInfo(UserId(m.identity), m.leaf_index, m.signature_key) for m in self._member_list()]

    def leaf_index_of(self, device_id: DeviceId) -> int | None:
        return self._leaves.get(device_id)

    def records(self, *, changed_only: bool = False) -> dict[str, bytes]:
        """Everything this conversation persists besides the MLS entries, encoded.

        With ``changed_only``, meta and leaves are left out when they are unchanged since
        the last call (they change with membership, not with every message).
        """
        records = {"cursor": self._cursor.encode(), "state": self._state.encode()}
        if not changed_only or self._meta is not self._persisted_meta:
            records["meta"] = self._meta.encode()
            self._persisted_meta = self._meta
        if not changed_only or self._leaves != self._persisted_leaves:
            records["leaves"] = encode_device_leaves(self._leaves)
            self._persisted_leaves = dict(self._leaves)
        return records

    def take_released(self) -> list[IncomingMessage]:
        """Held future-epoch messages that were decrypted since the last call."""
        released, self._released = self._released, []
        return released

    def take_external_joins(self) -> list[MemberInfo]:
        """Devices that joined (or rejoined with a new leaf) by external commit since the
        last call: for an event the application shows ("ann added a device")."""
        joins, self._external_joins = self._external_joins, []
        return [MemberInfo(UserId(m.identity), m.leaf_index, m.signature_key) for m in joins]

    def take_rejected(self) -> list[tuple[MessageEnvelope, PingError]]:
        """Held envelopes that failed once their epoch arrived, with why."""
        rejected, self._rejected = self._rejected, []
        return rejected

    @property
    def held(self) -> list[MessageEnvelope]:
        """Envelopes of a future epoch waiting for their commit, in arrival order."""
        return list(self._held.values())

    def held_changes(self) -> tuple[list[MessageEnvelope], list[MessageEnvelope]]:
        """Held envelopes added and removed since the last call: what to write and delete.

        Each held envelope is a record of its own, so a batch writes only these.
        """
        current = set(self._held)
        added = [self._held[key] for key in current - self._held_written]
        removed_keys = self._held_written - current
        removed = [self._held_gone.pop(key) for key in removed_keys if key in self._held_gone]
        self._held_written = current
        self._held_gone.clear()
        return added, removed

    # -- sending ---------------------------------------------------------------------------

    def send_application(self, plaintext: bytes, now_ms: int) -> MessageEnvelope:
        """Encrypt ``plaintext`` for the group; returns the envelope to deliver."""
        self._require_sender()
        if not isinstance(plaintext, (bytes, bytearray)):
            raise InvalidInput(f"plaintext must be bytes, got {type(plaintext).__name__}")
        if len(plaintext) > _PLAINTEXT_LIMIT:
            raise InvalidInput(f"plaintext of {len(plaintext)} bytes is over the {_PLAINTEXT_LIMIT}-byte limit")
        if self._state.needs_self_update:
            raise StateConflict("restored from a snapshot: commit a self_update() before sending")
        hlc = _tick(self._state.hlc, now_ms)
        seq, epoch = self._state.seq + 1, self.epoch()
        aad = authenticated_header(MessageKind.APPLICATION, self._device, epoch, seq, hlc)
        # One MLS call, atomic by itself; what follows cannot fail (inputs checked above,
        # and the plaintext limit leaves room for the ciphertext's framing).
        payload = self._group.create_message(bytes(plaintext), aad)
        envelope = MessageEnvelope.application(self.id, epoch, self._device, seq, hlc, payload, bytes(plaintext))
        self._state.seq, self._state.hlc = seq, hlc
        self._cursor.advance(MessageKind.APPLICATION, envelope.epoch, self._device, seq, hlc)
        return envelope

    def add_members(self, entries: Sequence[tuple[DeviceId, bytes]], now_ms: int) -> AddOutcome:
        """Stage a commit adding each ``(device id, KeyPackage)``; returns commit + welcome.

        The commit is pending until :meth:`confirm_commit` (the delivery service accepted
        it) or :meth:`discard_commit`; deliver the welcome only after confirming.
        """
        self._require_no_pending()
        if not entries:
            raise InvalidInput("add_members needs at least one (device id, KeyPackage)")
        added: list[tuple[DeviceId, bytes]] = []
        key_packages: list[bytes] = []
        for entry in entries:
            if not isinstance(entry, tuple) or len(entry) != 2 or not isinstance(entry[0], DeviceId):
                raise InvalidInput("add_members entries are (DeviceId, KeyPackage bytes) pairs")
            device, key_package = entry
            if device in self._leaves or any(device == d for d, _ in added):
                raise InvalidInput(f"device {device.hex} is already a member or listed twice")
            if not isinstance(key_package, (bytes, bytearray)):
                raise InvalidInput("a KeyPackage must be bytes")
            _, signature_key = self._engine.inspect_key_package(bytes(key_package))
            added.append((device, signature_key))
            key_packages.append(bytes(key_package))
        source_epoch = self.epoch()
        hlc = _tick(self._state.hlc, now_ms)
        seq = self._state.seq + 1
        aad = authenticated_header(MessageKind.COMMIT, self._device, source_epoch, seq, hlc)
        with self._undo_on_error():
            commit, welcome = self._group.add_members(key_packages, aad)
            outcome = AddOutcome(
                MessageEnvelope.handshake(MessageKind.COMMIT, self.id, source_epoch, self._device, seq, hlc, commit),
                MessageEnvelope.handshake(
                    MessageKind.WELCOME, self.id, source_epoch + 1, self._device, seq, hlc, welcome
                ),
            )
        self._stage(PendingCommitInfo("add", seq, source_epoch, tuple(added), (), outcome.commit.content_hash), hlc)
        return outcome

    def remove_members(self, leaf_indexes: Sequence[int], now_ms: int) -> MessageEnvelope:
        """Stage a commit removing the members at ``leaf_indexes``; pending like any commit."""
        self._require_no_pending()
        leaves = tuple(leaf_indexes)
        if not leaves or any(type(i) is not int for i in leaves) or len(set(leaves)) != len(leaves):
            raise InvalidInput("remove_members needs distinct integer leaf indexes")
        if self._group.own_leaf_index in leaves:
            raise InvalidInput("a device cannot remove its own leaf; another member must")
        return self._commit("remove", now_ms, lambda aad: self._group.remove_members(leaves, aad), leaves)

    def self_update(self, now_ms: int) -> MessageEnvelope:
        """Stage a commit refreshing this device's leaf keys (post-compromise security)."""
        self._require_no_pending()
        return self._commit("update", now_ms, lambda aad: self._group.self_update(aad), ())

    def rejoin(self, group_info: bytes, now_ms: int) -> MessageEnvelope:
        """Rejoin by external commit from ``group_info`` (a stale copy of this device, e.g.
        restored from a backup that is no longer current). The new leaf replaces this
        device's old one in the same commit; its seqs start a new incarnation. Pending like
        any own commit: kept if the delivery service takes it, else the conversation still
        needs a rejoin (:meth:`discard_commit`)."""
        if self._state.removed or (not self._group.is_active and not self._state.rejoin_required):
            raise NotAMember("this device was removed from the conversation; a member adds it again")
        if self._state.pending is not None:
            raise PendingCommit("an own commit is pending: confirm_commit() or discard_commit() first")
        if not isinstance(group_info, (bytes, bytearray)):
            raise InvalidInput("a GroupInfo must be bytes")
        group_id, epoch = self._engine.inspect_group_info(bytes(group_info))
        if group_id != self.id.raw:
            raise InvalidInput("the GroupInfo is of another conversation")
        if epoch < self._cursor.epoch:
            raise InvalidInput(f"the GroupInfo is of epoch {epoch}, before epoch {self._cursor.epoch} this device saw")
        hlc = _tick(self._state.hlc, now_ms)
        seq = ((max(self._state.seq, self._cursor.highest_seq(self._device)) >> 32) + 1 << 32) + 1
        aad = authenticated_header(MessageKind.COMMIT, self._device, epoch, seq, hlc)
        with self._undo_on_error():
            self._engine.drop_group(self.id.raw)
            group, commit = self._engine.join_external(bytes(group_info), aad)
            if group.group_id != self.id.raw or group.epoch != epoch + 1:
                raise InvalidInput("the external commit did not join this conversation at the GroupInfo's epoch")
        envelope = MessageEnvelope.handshake(MessageKind.COMMIT, self.id, epoch, self._device, seq, hlc, commit)
        self._group = group
        self._members = None
        self._users_by_leaf = None
        self._stage(PendingCommitInfo("rejoin", seq, epoch, (), (), envelope.content_hash), hlc)
        return envelope

    def confirm_commit(self) -> None:
        """The delivery service accepted our pending commit: apply it."""
        pending = self._state.pending
        if pending is None:
            raise NoPendingCommit("no own commit is pending")
        if pending.kind == "rejoin":
            self._confirm_rejoin(pending)
            return
        roster = self._roster()
        self._group.merge_pending_commit()
        self._after_epoch_change(roster)
        if pending.added:
            by_key = {m.signature_key: m.leaf_index for m in self._member_list()}
            for device, key in pending.added:
                if key in by_key:
                    self._leaves[device] = by_key[key]
        self._cursor.advance(MessageKind.COMMIT, pending.epoch, self._device, pending.seq, self._state.hlc)
        self._state.pending = None
        self._state.needs_self_update = False  # every own commit carries a fresh leaf
        self._release_held()

    def discard_commit(self) -> None:
        """The delivery service took another commit for this epoch: drop ours."""
        pending = self._state.pending
        if pending is None:
            raise NoPendingCommit("no own commit is pending")
        if pending.kind != "rejoin":  # an external commit was merged already: nothing to clear
            self._group.clear_pending_commit()
        self._drop_pending(pending)

    def _confirm_rejoin(self, pending: PendingCommitInfo) -> None:
        """Our external commit is in the log: this device is a member again, from its epoch."""
        self._after_epoch_change(frozenset())
        self._leaves = {self._device: self._group.own_leaf_index}
        self._cursor.mark_seen(self._device, pending.seq, self._state.hlc)
        self._cursor.rejoined(self._group.epoch)
        self._state.pending = None
        self._state.rejoin_required = self._state.needs_self_update = self._state.removed = False
        self._held.clear()  # envelopes of epochs this leaf cannot read
        self._release_held()

    # -- receiving -------------------------------------------------------------------------

    def process(self, envelope: MessageEnvelope, now_ms: int) -> IncomingMessage | None:
        """Apply one envelope of this conversation.

        Returns the decrypted message for an application envelope, ``None`` for anything
        else (a commit, a proposal, a duplicate, an own echo, or an envelope held until its
        epoch arrives). Messages released from the hold come out of :meth:`take_released`.
        """
        if not isinstance(envelope, MessageEnvelope):
            raise InvalidInput(f"expected a MessageEnvelope, got {type(envelope).__name__}")
        if envelope.conversation_id != self.id:
            raise InvalidInput("the envelope belongs to another conversation")
        if envelope.kind is MessageKind.WELCOME:
            raise InvalidInput("a Welcome starts a conversation: use Conversation.join")
        validate(envelope)
        if not self._cursor.is_new(envelope.kind, envelope.epoch, envelope.sender_device, envelope.seq):
            return None
        if envelope.sender_device == self._device:
            self._own_echo(envelope)
            return None
        epoch = self.epoch()
        if envelope.epoch > epoch:
            self._hold(envelope, epoch)
            return None
        if envelope.kind is not MessageKind.APPLICATION and envelope.epoch < epoch:
            return None
        if self._state.removed:
            raise NotAMember("this device was removed from the conversation")
        return self._apply(envelope, now_ms)

    def export_secret(self, label: str, context: bytes, length: int) -> bytes:
        """RFC 9420 exporter secret of the current epoch. Never log the result."""
        if not isinstance(label, str) or not label.startswith(EXPORT_LABEL_PREFIX):
            raise InvalidInput(f"export labels live under {EXPORT_LABEL_PREFIX!r}")
        if type(length) is not int or not 1 <= length <= MAX_EXPORT_LENGTH:
            raise InvalidInput(f"export_secret length must be 1..{MAX_EXPORT_LENGTH}, got {length!r}")
        if not isinstance(context, (bytes, bytearray)):
            raise InvalidInput("context must be bytes")
        return self._group.export_secret(label, bytes(context), length)

    def export_state_snapshot(self, now_ms: int) -> bytes:
        """Versioned CBOR of every MLS entry of this group, for backup (hard-capped)."""
        return GroupStateSnapshot(
            self.id,
            OPENMLS_STORAGE_VERSION,
            now_ms,
            tuple(self._engine.group_entries(self.id.raw)),
        ).encode()

    # -- internals -------------------------------------------------------------------------

    def _require_sender(self) -> None:
        if self._state.removed or not self._group.is_active:
            raise NotAMember("this device was removed from the conversation")
        if self._state.rejoin_required:
            raise RejoinRequired(
                "this copy of the conversation was restored from a backup that is no longer current: "
                "another copy of this device moved its epoch on, so it no longer sends; rejoin() joins it "
                "again by external commit"
            )

    def _require_no_pending(self) -> None:
        self._require_sender()
        if self._state.pending is not None:
            raise PendingCommit("an own commit is pending: confirm_commit() or discard_commit() first")

    def _commit(
        self, kind: str, now_ms: int, make: Callable[[bytes], bytes], removed: tuple[int, ...]
    ) -> MessageEnvelope:
        source_epoch = self.epoch()
        hlc = _tick(self._state.hlc, now_ms)
        seq = self._state.seq + 1
        with self._undo_on_error():
            payload = make(authenticated_header(MessageKind.COMMIT, self._device, source_epoch, seq, hlc))
            envelope = MessageEnvelope.handshake(
                MessageKind.COMMIT, self.id, source_epoch, self._device, seq, hlc, payload
            )
        self._stage(PendingCommitInfo(kind, seq, source_epoch, (), removed, envelope.content_hash), hlc)
        return envelope

    def _drop_pending(self, pending: PendingCommitInfo) -> None:
        """Our pending commit lost its epoch. If it was the self-update a restored copy
        must make before it sends, this copy cannot prove it owns its epoch: never send;
        a rejoin that lost still needs a rejoin."""
        self._state.pending = None
        self._cursor.mark_seen(self._device, pending.seq, self._state.hlc)
        if self._state.needs_self_update or pending.kind == "rejoin":
            self._state.rejoin_required = True

    def _stage(self, pending: PendingCommitInfo, hlc: Hlc) -> None:
        self._state.pending = pending
        self._state.seq = pending.seq
        self._state.hlc = hlc

    @contextmanager
    def _undo_on_error(self) -> Iterator[None]:
        """MLS calls in the block are undone, and the group reloaded, if the block raises."""
        try:
            with self._engine.savepoint():
                yield
        except BaseException:
            group = self._engine.load_group(self.id.raw)
            if group is not None:
                self._group = group
            self._members = None
            raise

    def _member_list(self) -> list[Member]:
        if self._members is None:
            self._members = self._group.members()
            self._users_by_leaf = None
        return self._members

    def _user_at(self, leaf: int) -> UserId | None:
        if self._users_by_leaf is None or self._members is None:
            self._users_by_leaf = {m.leaf_index: UserId(m.identity) for m in self._member_list()}
        return self._users_by_leaf.get(leaf)

    def _roster(self) -> frozenset[tuple[int, bytes]]:
        return frozenset((m.leaf_index, m.signature_key) for m in self._member_list())

    def _after_epoch_change(self, roster_before: frozenset[tuple[int, bytes]]) -> None:
        self._members = None
        self._users_by_leaf = None
        members = self._member_list()
        if self._roster() != roster_before:
            self._roster_epoch = self._group.epoch
        self._meta = dataclasses.replace(self._meta, epoch=self._group.epoch, member_count=max(1, len(members)))
        live = {m.leaf_index for m in members}
        self._leaves = {device: leaf for device, leaf in self._leaves.items() if leaf in live}

    def _own_echo(self, envelope: MessageEnvelope) -> None:
        """An envelope naming this device as its sender, not yet marked seen.

        What this device sent is marked seen when it is sent (applications) or merged
        (commits), so the only own envelope still new is the echo of the pending commit:
        the ordered log holds it, so it was accepted. It must be that very commit (same
        seq, same payload hash). Anything else was not sent by this copy of the device; it
        is refused and nothing in its header is trusted.
        """
        pending = self._state.pending
        if (
            envelope.kind is MessageKind.COMMIT
            and pending is not None
            and envelope.seq == pending.seq
            and envelope.epoch == pending.epoch
            and (pending.content_hash is None or envelope.content_hash == pending.content_hash)
        ):
            self.confirm_commit()
            return None
        raise UnknownOwnEnvelope(
            f"a {envelope.kind.name} envelope (seq {envelope.seq}, epoch {envelope.epoch}) names this device "
            "as its sender, but this device did not send it; refused"
        )

    def _hold(self, envelope: MessageEnvelope, epoch: int) -> None:
        if envelope.epoch > epoch + MAX_HOLD_AHEAD:
            raise WrongEpoch(f"envelope of epoch {envelope.epoch} is too far ahead of epoch {epoch}")
        key = _held_key(envelope)
        if key in self._held:
            return
        if len(self._held) >= MAX_HELD:
            raise WrongEpoch(f"{MAX_HELD} envelopes already wait for a future epoch; sync the missing commits")
        self._held[key] = envelope

    def _apply(self, envelope: MessageEnvelope, now_ms: int) -> IncomingMessage | None:
        pending = self._state.pending
        lost = envelope.kind is MessageKind.COMMIT and pending is not None and envelope.epoch == pending.epoch
        header = authenticated_header(envelope.kind, envelope.sender_device, envelope.epoch, envelope.seq, envelope.hlc)
        expected = envelope.content_hash if envelope.kind is MessageKind.APPLICATION else b""
        roster = self._roster() if envelope.kind is MessageKind.COMMIT else frozenset()
        if pending is not None and pending.kind == "rejoin":
            # Our external commit is not in the log yet: what comes before it is of epochs
            # the new leaf cannot read; a commit of its epoch took the slot (we rejoin again).
            if lost:
                self._drop_pending(pending)
            return None
        if lost:
            # The ordered log put another device's commit first: ours lost this epoch.
            with self._undo_on_error():
                self._group.clear_pending_commit()
                processed = self._group.process_message(envelope.payload, header, expected)
        elif envelope.kind is MessageKind.COMMIT:
            before = self._member_list()
            with self._undo_on_error():
                processed = self._group.process_message(envelope.payload, header, expected)
                if processed.external:
                    joiner = _admit_external(before, self._group.members())
                    if joiner is not None:
                        self._external_joins.append(joiner)
        else:
            processed = self._group.process_message(envelope.payload, header, expected)
        if lost:
            assert pending is not None
            self._drop_pending(pending)
        self._state.hlc = self._state.hlc.merge(envelope.hlc, now_ms)
        message: IncomingMessage | None = None
        if processed.kind is ProcessedKind.APPLICATION:
            message = self._incoming(envelope, processed)
        elif processed.kind is ProcessedKind.COMMIT:
            self._after_epoch_change(roster)
            if not processed.still_member:
                self._state.removed = True
        self._cursor.advance(envelope.kind, envelope.epoch, envelope.sender_device, envelope.seq, envelope.hlc)
        if processed.kind is ProcessedKind.COMMIT and not self._state.removed:
            self._release_held()
        return message

    def _incoming(self, envelope: MessageEnvelope, processed: Processed) -> IncomingMessage:
        """The message, with its sender's user taken from the current roster only if the
        member at its leaf now is the one that sent it.

        MLS gives a removed member's leaf to the next member added, so a late message of a
        past epoch may come from a leaf that another member holds now: it is attributed only
        if no member joined or left since its epoch, or if its device is known at that leaf.
        A device is learned at a leaf only then, and only if no other device is known there.
        """
        sender_user = None
        leaf, device = processed.sender_leaf, envelope.sender_device
        if leaf is not None and (envelope.epoch >= self._roster_epoch or self._leaves.get(device) == leaf):
            sender_user = self._user_at(leaf)
            if device not in self._leaves and leaf not in self._leaves.values():
                self._leaves[device] = leaf
        return IncomingMessage.from_envelope(envelope, processed.plaintext, sender_user)

    def _release_held(self) -> None:
        """Apply held envelopes whose epoch has arrived, in epoch order; an epoch's commit
        after its other envelopes, since it ends the epoch (and may remove this device)."""
        while True:
            epoch = self.epoch()
            ready = [h for h in self._held.values() if h.epoch <= epoch]
            if not ready:
                return
            ready.sort(key=lambda h: (h.epoch, h.kind is MessageKind.COMMIT, h.hlc, h.seq))
            envelope = ready[0]
            key = _held_key(envelope)
            del self._held[key]
            self._held_gone[key] = envelope
            try:
                message = self.process(envelope, envelope.hlc.wall_ms)
            except PingError as error:
                self._rejected.append((envelope, error))
                continue
            if message is not None:
                self._released.append(message)


def _admit_external(before: list[Member], after: list[Member]) -> Member | None:
    """Members' rule for an external commit: its one new leaf is a device of a user who was
    in the group already (a stale copy rejoining with its own key, or a new device of a
    member's user), and the only leaf it removes is one with its own key (resync). Whether
    the new device is one of its user's verified devices is checked like any added device
    (``client.vetting``)."""
    old = {(m.leaf_index, m.signature_key) for m in before}
    new = [m for m in after if (m.leaf_index, m.signature_key) not in old]
    current = {(m.leaf_index, m.signature_key) for m in after}
    removed = [m for m in before if (m.leaf_index, m.signature_key) not in current]
    if not new and not removed:
        return None  # a device rejoined in its own place (same key at the same leaf: its stale leaf replaced)
    if len(new) != 1:
        raise ExternalCommitRefused(f"an external commit adds one leaf, this one {len(new)}; refused")
    joiner = new[0]
    if not any(m.identity == joiner.identity for m in before):
        raise ExternalCommitRefused("an external commit by a user who is not in the conversation; refused")
    if any(m.signature_key != joiner.signature_key for m in removed):
        raise ExternalCommitRefused("an external commit that removes another device; refused")
    return None if removed else joiner  # a new device of a member's user, not a stale copy


def _held_key(envelope: MessageEnvelope) -> tuple[DeviceId, int]:
    """A held envelope's identity: one per (sender, seq), whatever epoch it claims."""
    return envelope.sender_device, envelope.seq


def _tick(hlc: Hlc, now_ms: int) -> Hlc:
    if type(now_ms) is not int or now_ms < 0:
        raise InvalidInput(f"now_ms must be a non-negative int, got {now_ms!r}")
    return hlc.tick(now_ms)
