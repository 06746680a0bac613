"""Backup and restore of a device: identity, every conversation's MLS state, records and history.

A backup is what a person makes to get their conversations back, so it carries the
history as well as the keys. It holds secrets: the application encrypts it before it
leaves the device. A restored conversation must not send in the epoch it was backed up
in (another copy may have used its keys): it commits a self-update first, and if that is
refused it needs a rejoin (``client.outbox``).

Format (``docs/wire-format.md``): ``{"v": 2, "d": DeviceRecord, "k": [[key, value], ...]
(the signing key pair), "c": [conversation, ...]}``, each conversation ``{"x": snapshot,
"m": meta, "c": cursor, "l": device leaves, "t": state, "h": [held envelope, ...],
"y": [history message, ...]}``. Version 1 had no ``h`` and ``y`` (held envelopes were in
the state record; history was not carried); it is still read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Self

from ping_web.client import keys
from ping_web.client.base import ClientBase
from ping_web.client.device import DeviceRecord
from ping_web.client.opening import wall_clock_ms
from ping_web.core import codec
from ping_web.core.conversation import Conversation, ConversationRecords
from ping_web.core.cursor import SyncCursor
from ping_web.core.envelope import IncomingMessage
from ping_web.core.records import ConversationMeta, decode_device_leaves
from ping_web.core.state import ConversationState, decode_held
from ping_web.delivery.base import Delivery
from ping_web.errors import InvalidInput, StateConflict
from ping_web.mls.engine import OpenMlsEngine
from ping_web.mls.openmls import MlsRuntime
from ping_web.storage.base import Storage

BACKUP_VERSION: Final = 2
MAX_BACKUP_SIZE: Final = 1 << 30
_KEYS: Final = frozenset({"v", "d", "k", "c"})
_CONVERSATION_KEYS: Final = {1: frozenset({"x", "m", "c", "l", "t"}), 2: frozenset({"x", "m", "c", "l", "t", "h", "y"})}


@dataclass(frozen=True, slots=True)
class ConversationBackup:
    """One conversation as a backup carries it, decoded and checked."""

    snapshot: bytes
    records: ConversationRecords
    history: list[IncomingMessage]


@dataclass(frozen=True, slots=True)
class DeviceBackup:
    """A whole backup, decoded and checked before anything is restored from it."""

    record: DeviceRecord
    signing_entries: list[tuple[bytes, bytes]]
    conversations: list[ConversationBackup]

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse untrusted backup bytes; :class:`~ping_web.errors.DecodeError` on any problem."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"a backup is bytes, got {type(data).__name__}")
        with codec.record(bytes(data), "Backup", keys=_KEYS, versions=(1, BACKUP_VERSION),
                          max_size=MAX_BACKUP_SIZE) as m:  # fmt: skip
            version = m["v"]
            record = DeviceRecord.decode(codec.byte_string(m["d"], "device record"))
            signing = [_entry(item) for item in _array(m["k"], "signing keys")]
            conversations = [_conversation(item, version) for item in _array(m["c"], "conversations")]
        ids = [c.records.meta.id for c in conversations]
        if len(set(ids)) != len(ids):
            raise InvalidInput("Backup: a conversation appears twice")
        return cls(record, signing, conversations)


def _array(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{what}: expected an array, got {type(value).__name__}")
    return value


def _entry(value: Any) -> tuple[bytes, bytes]:
    key, stored = codec.array(value, "signing key entry", size=2)
    return codec.byte_string(key, "key", lo=1), codec.byte_string(stored, "value")


def _conversation(value: Any, version: int) -> ConversationBackup:
    expected = _CONVERSATION_KEYS[version]
    if not isinstance(value, dict) or value.keys() != expected:
        raise InvalidInput(f"a conversation entry has the keys {sorted(expected)}")
    meta = ConversationMeta.decode(codec.byte_string(value["m"], "meta"))
    state, legacy_held = ConversationState.decode_with_legacy_held(codec.byte_string(value["t"], "state"))
    held = (
        legacy_held
        if version == 1
        else [decode_held(codec.byte_string(raw, "held")) for raw in _array(value["h"], "held")]
    )
    history = [] if version == 1 else [IncomingMessage.decode(codec.byte_string(raw, "message"))
                                       for raw in _array(value["y"], "history")]  # fmt: skip
    if any(e.conversation_id != meta.id for e in held) or any(m.conversation_id != meta.id for m in history):
        raise InvalidInput("a held envelope or a history message belongs to another conversation")
    cursor = SyncCursor.decode(codec.byte_string(value["c"], "cursor"))
    leaves = decode_device_leaves(codec.byte_string(value["l"], "leaves"))
    records = ConversationRecords(meta, cursor, leaves, state, held)
    return ConversationBackup(codec.byte_string(value["x"], "snapshot"), records, history)


class Backup(ClientBase):
    """Making a backup of this device, and restoring a device from one."""

    async def backup(self) -> bytes:
        """A backup of this device: identity, each conversation's MLS state, records and history.

        It holds secrets: encrypt it before it leaves the device. Restore with
        :meth:`restore`; restored conversations self-update before they send.
        """
        await self._ready()
        await self._writer.flush()
        signing = await self._storage.scan(keys.MLS, keys.SIGNATURE_KEY_PREFIX)
        conversations = []
        now = self._clock()
        for conversation_id in list(self._metas):
            conversation = await self._get(conversation_id)
            history = await self._storage.scan(keys.HISTORY, keys.history_prefix(conversation_id))
            records = conversation.records()
            conversations.append({
                "x": conversation.export_state_snapshot(now), "m": records["meta"], "c": records["cursor"],
                "l": records["leaves"], "t": records["state"], "h": [e.encode() for e in conversation.held],
                "y": [value for _, value in history],
            })  # fmt: skip
        return codec.encode({"v": BACKUP_VERSION, "d": self._record.encode(), "k": [list(e) for e in signing],
                             "c": conversations})  # fmt: skip

    @classmethod
    async def restore(
        cls,
        storage: Storage,
        backup: bytes,
        *,
        delivery: Delivery | None = None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> Self:
        """Rebuild a device from :meth:`backup` into an empty ``storage``.

        The backup is read and checked in full first; a malformed or truncated one raises
        a :class:`~ping_web.errors.PingError` and writes nothing. Everything restored is
        written in one batch.
        """
        if await storage.get(keys.DEVICE, keys.DEVICE_RECORD) is not None:
            raise StateConflict("this storage already holds a device; restore into an empty one")
        decoded = DeviceBackup.decode(backup)
        record = decoded.record
        client = cls(storage, record, clock=clock, delivery=delivery)
        runtime = MlsRuntime.load()
        provider = runtime.provider()
        provider.import_entries(decoded.signing_entries)
        identity = provider.load_identity(record.user_id.raw, record.public_key)
        client._use_runtime(runtime, OpenMlsEngine(provider, identity))
        restored: list[Conversation] = []
        history: list[IncomingMessage] = []
        for item in decoded.conversations:
            conversation = Conversation.restore_snapshot(client._engine, record.device_id, item.snapshot, item.records)
            client._adopt(conversation)
            restored.append(conversation)
            history.extend(item.history)
        batch = client._capture(restored, history=history)
        batch.put(keys.DEVICE, keys.DEVICE_RECORD, record.encode())
        await client._writer.submit(batch)
        return client
