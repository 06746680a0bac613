"""MessagingClient: what an application uses. One device, many conversations, one storage.

Every state-changing operation follows the same three steps (DESIGN.md §7):

1. run the protocol step synchronously (:class:`~ping_web.core.conversation.Conversation`);
2. capture one :class:`~ping_web.storage.Batch` synchronously: the provider's checkpoint
   (MLS working-set delta), the conversation's records, the decrypted message or the
   outgoing envelope; nothing is awaited between step 1 and here;
3. hand the batch to the FIFO writer and await only its durability; then return.

So nothing is held across an await, batches land in capture order, an envelope is returned
only once the state that produced it is stored (a crash can never reuse a seq or a ratchet
generation that left the device), and a message is reported only once it is stored. If a
write fails, memory is rebuilt from storage before the next operation, so a failed
operation leaves both as they were. A wasm trap is handled the same way, with a fresh
wasm instance.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

from ping_web.core import codec
from ping_web.core.conversation import Conversation
from ping_web.core.state import ConversationState
from ping_web.core.cursor import SyncCursor
from ping_web.delivery.base import Delivery
from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind
from ping_web.errors import (
    InvalidInput,
    PingError,
    StateConflict,
    StorageCorrupted,
    UnknownConversation,
    WasmTrap,
)
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.storage.memory import MemoryStorage
from ping_web.mls.engine import OpenMlsEngine
from ping_web.mls.openmls import MlsRuntime, Provider
from ping_web.core.records import AddOutcome, ConversationMeta, decode_device_leaves
from ping_web.storage.base import Batch, Storage
from ping_web.storage.writer import BatchWriter

DEVICE_KEY: Final = b"identity"
RECORD_NAMES: Final = ("meta", "cursor", "leaves", "state")
_GLOBAL_MLS_PREFIX: Final = b"\x02"
_SIGNATURE_KEY_PREFIX: Final = b"\x02SignatureKeyPair\x00"
_HISTORY_KEY: Final = struct.Struct(">16sQI16sQ")
_OUTBOX_KEY: Final = struct.Struct(">16sQB")
DEVICE_GROUP_NAME: Final = "devices"
BACKUP_VERSION: Final = 1


def device_group_id(user_id: UserId) -> ConversationId:
    """The id of a user's device group: derived from the user, so every device finds it."""
    return ConversationId(hashlib.sha256(b"ping/device-group/" + user_id.raw).digest()[:16])


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """This device's identity, stored once under ``device/identity``."""

    VERSION: ClassVar[int] = 1
    _KEYS: ClassVar[frozenset[str]] = frozenset({"v", "u", "d", "k", "t"})

    user_id: UserId
    device_id: DeviceId
    public_key: bytes
    created_at_ms: int

    def encode(self) -> bytes:
        return codec.encode(
            {"v": self.VERSION, "u": self.user_id.raw, "d": self.device_id.raw, "k": self.public_key,
             "t": self.created_at_ms}
        )  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Self:
        with codec.record(data, "DeviceRecord", keys=cls._KEYS, versions=(cls.VERSION,)) as m:
            return cls(UserId(m["u"]), DeviceId(m["d"]), codec.byte_string(m["k"], "public_key", lo=1, hi=256),
                       codec.uint(m["t"], "created_at_ms"))  # fmt: skip


@dataclass(slots=True)
class BatchOutcome:
    """What :meth:`MessagingClient.receive_batch` did: messages stored, envelopes refused."""

    messages: list[IncomingMessage] = field(default_factory=list)
    rejected: list[tuple[MessageEnvelope | bytes, PingError]] = field(default_factory=list)


def history_key(message: IncomingMessage) -> bytes:
    """History is ordered by HLC, then sender and seq: the order a reader expects."""
    return _HISTORY_KEY.pack(
        message.conversation_id.raw, message.hlc.wall_ms, message.hlc.counter, message.sender_device.raw, message.seq
    )


def outbox_key(envelope: MessageEnvelope) -> bytes:
    return _OUTBOX_KEY.pack(envelope.conversation_id.raw, envelope.seq, int(envelope.kind))


def _record_key(conversation_id: ConversationId, name: str) -> bytes:
    return conversation_id.raw + b"/" + name.encode()


class MessagingClient:
    """An end-to-end encrypted messaging device: open it, then create, join, send, receive."""

    def __init__(
        self,
        storage: Storage,
        record: DeviceRecord,
        *,
        clock: Callable[[], int],
        delivery: Delivery | None,
    ) -> None:
        self._storage = storage
        self._record = record
        self._clock = clock
        self._delivery = delivery
        self._writer = BatchWriter(storage, self._on_write_failure)
        self._runtime: MlsRuntime | None = None
        self._provider: Provider | None = None
        self._identity: Any = None
        self._engine: Any = None
        self._metas: dict[ConversationId, ConversationMeta] = {}
        self._loaded: dict[ConversationId, Conversation] = {}
        self._log_positions: dict[ConversationId, int] = {}
        self._stale: BaseException | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self._closed = False

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        storage: Storage | None = None,
        user_id: UserId | bytes | None = None,
        *,
        delivery: Delivery | None = None,
        clock: Callable[[], int] = _wall_clock_ms,
        create_device_group: bool = True,
    ) -> MessagingClient:
        """Open the device stored in ``storage``, or create it for ``user_id`` the first time.

        A new device gets a signing identity, a DeviceId and (unless it is being linked to
        an existing user's devices) the user's device group.
        """
        storage = storage if storage is not None else MemoryStorage()
        user = None if user_id is None else (user_id if isinstance(user_id, UserId) else UserId.from_bytes(user_id))
        raw = await storage.get("device", DEVICE_KEY)
        if raw is None:
            if user is None:
                raise InvalidInput("this storage holds no device yet: pass user_id to create one")
            return await cls._create(storage, user, delivery=delivery, clock=clock, device_group=create_device_group)
        try:
            record = DeviceRecord.decode(raw)
        except PingError as exc:
            raise StorageCorrupted(f"the stored device record is unreadable ({exc}); nothing was changed") from None
        if user is not None and user != record.user_id:
            raise InvalidInput("this storage holds a device of another user")
        client = cls(storage, record, clock=clock, delivery=delivery)
        await client._load_from_storage()
        return client

    @classmethod
    async def _create(
        cls, storage: Storage, user: UserId, *, delivery: Delivery | None, clock: Callable[[], int], device_group: bool
    ) -> MessagingClient:
        runtime = MlsRuntime.load()
        provider = runtime.provider()
        identity = provider.create_identity(user.raw)
        record = DeviceRecord(user, DeviceId.new(), identity.public_key, clock())
        client = cls(storage, record, clock=clock, delivery=delivery)
        client._runtime, client._provider, client._identity = runtime, provider, identity
        client._engine = OpenMlsEngine(provider, identity)
        batch = client._capture([])
        batch.put("device", DEVICE_KEY, record.encode())
        if device_group:
            conversation = Conversation.create(
                client._engine, record.device_id, clock(), name=DEVICE_GROUP_NAME,
                conversation_id=device_group_id(user), is_device_group=True,
            )  # fmt: skip
            client._adopt(conversation)
            batch = client._capture([conversation], batch=batch)
        await client._writer.submit(batch)
        return client

    async def _load_from_storage(self) -> None:
        """(Re)build memory from storage: identity and conversation index now, groups lazily."""
        runtime = MlsRuntime.load()
        provider = runtime.provider()
        provider.restore(await self._storage.scan("mls", _GLOBAL_MLS_PREFIX))
        identity = provider.load_identity(self._record.user_id.raw, self._record.public_key)
        metas: dict[ConversationId, ConversationMeta] = {}
        for key, value in await self._storage.scan("conversations"):
            if key.endswith(b"/meta"):
                try:
                    meta = ConversationMeta.decode(value)
                except PingError as exc:
                    raise StorageCorrupted(f"conversation record {key[:16].hex()} is unreadable: {exc}") from None
                metas[meta.id] = meta
        self._runtime, self._provider, self._identity = runtime, provider, identity
        self._engine = OpenMlsEngine(provider, identity)
        self._metas, self._loaded = metas, {}
        self._stale = None

    # -- reading -----------------------------------------------------------------------------

    @property
    def device_id(self) -> DeviceId:
        return self._record.device_id

    @property
    def user_id(self) -> UserId:
        return self._record.user_id

    @property
    def device_group_id(self) -> ConversationId | None:
        """The user's device group, once this device is in it."""
        group = device_group_id(self.user_id)
        return group if group in self._metas else None

    @property
    def pending_writes(self) -> int:
        """Batches captured and not yet durable (for tests and progress displays)."""
        return self._writer.pending

    def conversations(self) -> list[ConversationMeta]:
        """Every conversation of this device, oldest first (device group included)."""
        return sorted(self._metas.values(), key=lambda meta: (meta.created_at_ms, meta.id))

    async def conversation(self, conversation_id: ConversationId) -> Conversation:
        """The conversation, loaded from storage on first use."""
        await self._ready()
        return await self._get(conversation_id)

    async def history(self, conversation_id: ConversationId, *, limit: int | None = None) -> list[IncomingMessage]:
        """Stored messages of a conversation (received and sent), in HLC order."""
        if conversation_id not in self._metas:
            raise UnknownConversation(f"no conversation {conversation_id.hex} on this device")
        rows = await self._storage.scan("history", conversation_id.raw)
        messages = []
        for key, value in rows[-limit:] if limit else rows:
            try:
                messages.append(IncomingMessage.decode(value))
            except PingError as exc:
                raise StorageCorrupted(f"history entry {key.hex()} is unreadable: {exc}") from None
        return messages

    async def outbox(self) -> list[MessageEnvelope]:
        """Envelopes stored but not yet handed to the delivery service."""
        return [_outbox_envelope(key, value) for key, value in await self._storage.scan("outbox")]

    # -- key packages, conversations ---------------------------------------------------------

    async def new_key_package(self) -> bytes:
        """A one-time KeyPackage; its private keys are stored before it is returned."""
        await self._ready()
        key_package = self._identity.key_package()
        await self._writer.submit(self._capture([]))
        return key_package

    async def publish_key_packages(self, count: int = 5) -> None:
        """Make ``count`` KeyPackages and offer them through the delivery service."""
        delivery = self._require_delivery()
        packages = [await self.new_key_package() for _ in range(count)]
        await delivery.publish_key_packages(self.user_id, self.device_id, packages)

    async def create_conversation(self, name: str | None = None) -> ConversationMeta:
        await self._ready()
        conversation = Conversation.create(self._engine, self.device_id, self._clock(), name=name)
        self._adopt(conversation)
        await self._writer.submit(self._capture([conversation]))
        return conversation.meta

    async def join(self, welcome: MessageEnvelope | bytes, *, name: str | None = None) -> ConversationMeta:
        """Join from a Welcome envelope made for one of this device's KeyPackages."""
        await self._ready()
        envelope = _as_envelope(welcome)
        if envelope.conversation_id in self._metas:
            await self._get(envelope.conversation_id)
        conversation = self._run(lambda: self._join_now(envelope, name))
        if conversation is None:
            raise StateConflict("this device is already in that conversation")
        await self._writer.submit(self._capture([conversation]))
        return conversation.meta

    def _join_now(self, envelope: MessageEnvelope, name: str | None = None) -> Conversation | None:
        """Join from a Welcome, synchronously; ``None`` if already a member. A conversation
        this device was removed from is joined afresh (its history stays)."""
        if envelope.kind is not MessageKind.WELCOME:
            raise InvalidInput("join needs a WELCOME envelope")
        conversation_id = envelope.conversation_id
        is_device_group = conversation_id == device_group_id(self.user_id)
        if is_device_group:
            name = DEVICE_GROUP_NAME
        existing = self._loaded.get(conversation_id)
        if conversation_id in self._metas and (existing is None or not existing.state.removed):
            return None
        with self._provider.savepoint():
            if existing is not None:
                self._provider.drop_group(conversation_id.raw)
                name = name or existing.meta.name
            conversation = Conversation.join(
                self._engine, self.device_id, envelope, self._clock(),
                name=name, is_device_group=is_device_group,
            )  # fmt: skip
        if existing is not None:  # same device, same conversation: never reuse a seq
            conversation.state.seq = max(existing.state.seq, existing.cursor.highest_seq(self.device_id))
        self._adopt(conversation)
        return conversation

    # -- sending -----------------------------------------------------------------------------

    async def send(self, conversation_id: ConversationId, plaintext: bytes) -> MessageEnvelope:
        """Encrypt and store ``plaintext``; returns the envelope once it is durable.

        With a delivery service bound, the envelope is also posted (and leaves the outbox).
        A conversation restored from backup first commits a self-update (DESIGN.md §6).
        """
        await self._ready()
        conversation = await self._get(conversation_id)
        if self._delivery is not None and conversation.state.pending is not None:
            await self.sync()  # a commit left unsettled by a crash is settled first
        if conversation.state.needs_self_update and self._delivery is not None:
            await self.self_update(conversation_id)
        now = self._clock()
        envelope = self._run(lambda: conversation.send_application(plaintext, now))
        own = IncomingMessage.from_envelope(envelope, bytes(plaintext), self.user_id)
        await self._writer.submit(self._capture([conversation], history=[own], outbox=self._to_post(envelope)))
        if self._delivery is not None:
            await self._post(envelope)
        return envelope

    async def add_members(
        self, conversation_id: ConversationId, entries: Sequence[tuple[DeviceId, bytes]]
    ) -> AddOutcome:
        """Stage a commit adding ``(device id, KeyPackage)`` pairs.

        Without a delivery service the commit stays pending until :meth:`confirm_commit` /
        :meth:`discard_commit`. With one, it is posted: accepted -> merged and the Welcome
        sent to the new devices; refused -> discarded, the winner applied, and
        :class:`~ping_web.errors.StateConflict` raised so the caller can retry.
        """
        conversation = await self._prepare(conversation_id)
        outcome = self._run(lambda: conversation.add_members(list(entries), self._clock()))
        batch = self._capture([conversation], outbox=self._to_post(outcome.commit))
        if self._delivery is not None:  # without one, the caller delivers the Welcome itself
            welcome = _WelcomeToSend(outcome.welcome, [device for device, _ in entries])
            batch.put("outbox", outbox_key(outcome.welcome), welcome.encode())
        await self._writer.submit(batch)
        if self._delivery is not None:
            await self._settle(conversation, outcome.commit)
        return outcome

    async def remove_members(self, conversation_id: ConversationId, leaf_indexes: Sequence[int]) -> MessageEnvelope:
        conversation = await self._prepare(conversation_id)
        commit = self._run(lambda: conversation.remove_members(list(leaf_indexes), self._clock()))
        await self._writer.submit(self._capture([conversation], outbox=self._to_post(commit)))
        if self._delivery is not None:
            await self._settle(conversation, commit)
        return commit

    async def self_update(self, conversation_id: ConversationId) -> MessageEnvelope:
        conversation = await self._prepare(conversation_id)
        commit = self._run(lambda: conversation.self_update(self._clock()))
        await self._writer.submit(self._capture([conversation], outbox=self._to_post(commit)))
        if self._delivery is not None:
            await self._settle(conversation, commit)
        return commit

    async def confirm_commit(self, conversation_id: ConversationId) -> list[IncomingMessage]:
        """Our pending commit was accepted: apply it. Returns messages it released."""
        await self._ready()
        conversation = await self._get(conversation_id)
        self._run(conversation.confirm_commit)
        released = conversation.take_released()
        await self._writer.submit(self._capture([conversation], history=released, outbox_done=_pending_outbox(conversation)))
        return released

    async def discard_commit(self, conversation_id: ConversationId) -> None:
        """Our pending commit was refused: drop it (then receive the winner)."""
        await self._ready()
        conversation = await self._get(conversation_id)
        outbox_done = _pending_outbox(conversation, with_welcome=True)
        self._run(conversation.discard_commit)
        await self._writer.submit(self._capture([conversation], outbox_done=outbox_done))

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self, envelope: MessageEnvelope | bytes) -> list[IncomingMessage]:
        """Apply one envelope; returns the messages it made readable (stored first)."""
        outcome = await self.receive_batch([envelope])
        if outcome.rejected:
            raise outcome.rejected[0][1]
        return outcome.messages

    async def receive_batch(self, envelopes: Iterable[MessageEnvelope | bytes]) -> BatchOutcome:
        """Apply many envelopes with one storage write (catch-up). Bad ones are reported in
        ``rejected`` and change nothing; the rest are applied and stored."""
        await self._ready()
        outcome = BatchOutcome()
        decoded: list[MessageEnvelope] = []
        for item in envelopes:
            try:
                decoded.append(_as_envelope(item))
            except PingError as exc:
                outcome.rejected.append((item, exc))
        for conversation_id in {e.conversation_id for e in decoded}:
            if conversation_id in self._metas:
                await self._get(conversation_id)
        # From here to the capture, nothing is awaited.
        touched: dict[ConversationId, Conversation] = {}
        for envelope in decoded:
            try:
                if envelope.kind is MessageKind.WELCOME:
                    joined = self._join_now(envelope)
                    if joined is not None:
                        touched[joined.id] = joined
                    continue
                conversation = self._loaded.get(envelope.conversation_id)  # type: ignore[assignment]
                if conversation is None:
                    raise UnknownConversation(f"no conversation {envelope.conversation_id.hex} on this device")
                message = conversation.process(envelope, self._clock())
                touched[conversation.id] = conversation
                if message is not None:
                    outcome.messages.append(message)
                outcome.messages.extend(conversation.take_released())
                outcome.rejected.extend(conversation.take_rejected())
            except WasmTrap as exc:
                self._mark_stale(exc)
                raise
            except PingError as exc:
                outcome.rejected.append((envelope, exc))
        if touched or self._provider.has_changes:
            await self._writer.submit(self._capture(touched.values(), history=outcome.messages))
        return outcome

    async def sync(self) -> BatchOutcome:
        """Pull Welcomes and every conversation's new envelopes from the delivery service,
        apply them in one batch, then hand over anything still in the outbox (after a
        crash or a failed post)."""
        self._require_delivery()
        await self._ready()
        outcome = await self._pull()
        await self._flush_outbox()
        return outcome

    async def _pull(self) -> BatchOutcome:
        """Receive new Welcomes, then every conversation's new log entries."""
        assert self._delivery is not None
        welcomes = await self._delivery.fetch_welcomes(self.device_id)
        outcome = await self.receive_batch(welcomes) if welcomes else BatchOutcome()
        pages = []
        for conversation_id in list(self._metas):
            page = await self._delivery.fetch(conversation_id, self._log_positions.get(conversation_id, 0))
            pages.append((conversation_id, page))
        envelopes = [raw for _, page in pages for raw in page.envelopes]
        if envelopes:
            more = await self.receive_batch(envelopes)
            outcome.messages.extend(more.messages)
            outcome.rejected.extend(more.rejected)
        for conversation_id, page in pages:
            self._log_positions[conversation_id] = page.next_position
        return outcome

    # -- devices -----------------------------------------------------------------------------

    async def revoke_device(self, device_id: DeviceId) -> list[MessageEnvelope]:
        """Remove ``device_id``'s leaf from every conversation where this device knows it.

        Returns one commit per conversation (settled through the delivery service if bound).
        """
        await self._ready()
        if device_id == self.device_id:
            raise InvalidInput("a device cannot revoke itself; revoke it from another device")
        commits = []
        for conversation_id in list(self._metas):
            conversation = await self._get(conversation_id)
            leaf = conversation.leaf_index_of(device_id)
            if leaf is not None and not conversation.state.removed:
                commits.append(await self.remove_members(conversation_id, [leaf]))
        return commits

    async def link_device(self, device_id: DeviceId) -> list[AddOutcome]:
        """Add a new device of this user to the device group and to each conversation.

        The new device opened with ``create_device_group=False`` and published KeyPackages
        (:meth:`publish_key_packages`); one is claimed per conversation. It joins as a new
        member everywhere: no MLS state is ever copied between devices.
        """
        delivery = self._require_delivery()
        await self._ready()
        if device_id not in await delivery.devices_of(self.user_id):
            raise InvalidInput("that device has not published KeyPackages for this user")
        outcomes = []
        ordered = sorted(self._metas.values(), key=lambda meta: not meta.is_device_group)
        for meta in ordered:
            conversation = await self._get(meta.id)
            if conversation.state.removed or conversation.leaf_index_of(device_id) is not None:
                continue
            key_package = await delivery.claim_key_package(device_id)
            if key_package is None:
                raise StateConflict("the new device ran out of KeyPackages; publish more and retry")
            outcomes.append(await self.add_members(meta.id, [(device_id, key_package)]))
        return outcomes

    # -- backup ------------------------------------------------------------------------------

    async def backup(self) -> bytes:
        """A backup of this device (identity, every conversation's snapshot and records).

        It holds secrets: encrypt it before it leaves the device. Restore with
        :meth:`restore`; restored conversations self-update before they send.
        """
        await self._ready()
        await self._writer.flush()
        signing = await self._storage.scan("mls", _SIGNATURE_KEY_PREFIX)
        conversations = []
        now = self._clock()
        for conversation_id in list(self._metas):
            conversation = await self._get(conversation_id)
            records = conversation.records()
            conversations.append({
                "x": conversation.export_state_snapshot(now), "m": records["meta"], "c": records["cursor"],
                "l": records["leaves"], "t": records["state"],
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
        clock: Callable[[], int] = _wall_clock_ms,
    ) -> MessagingClient:
        """Rebuild a device from :meth:`backup` into an empty ``storage``."""
        if await storage.get("device", DEVICE_KEY) is not None:
            raise StateConflict("this storage already holds a device; restore into an empty one")
        with codec.record(backup, "Backup", keys=frozenset({"v", "d", "k", "c"}), versions=(BACKUP_VERSION,),
                          max_size=1 << 30) as m:  # fmt: skip
            record = DeviceRecord.decode(m["d"])
            signing = [(codec.byte_string(k, "key"), codec.byte_string(v, "value")) for k, v in m["k"]]
            items = list(m["c"])
        client = cls(storage, record, clock=clock, delivery=delivery)
        runtime = MlsRuntime.load()
        provider = runtime.provider()
        provider.import_entries(signing)
        identity = provider.load_identity(record.user_id.raw, record.public_key)
        client._runtime, client._provider, client._identity = runtime, provider, identity
        client._engine = OpenMlsEngine(provider, identity)
        restored = []
        for item in items:
            if not isinstance(item, dict) or item.keys() != {"x", "m", "c", "l", "t"}:
                raise InvalidInput("Backup: malformed conversation entry")
            conversation = Conversation.restore_snapshot(
                client._engine, record.device_id, item["x"], meta=ConversationMeta.decode(item["m"]),
                cursor=SyncCursor.decode(item["c"]), device_leaves=decode_device_leaves(item["l"]),
                state=ConversationState.decode(item["t"]),
            )  # fmt: skip
            client._adopt(conversation)
            restored.append(conversation)
        batch = client._capture(restored)
        batch.put("device", DEVICE_KEY, record.encode())
        await client._writer.submit(batch)
        return client

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Wait for pending writes, then release the storage. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._writer.flush()
        await self._storage.close()
        # Let the wasm instance (and its memory) be collected even if the client lingers.
        self._runtime = self._provider = self._identity = self._engine = None
        self._loaded = {}

    # -- internals ---------------------------------------------------------------------------

    def _to_post(self, envelope: MessageEnvelope) -> list[MessageEnvelope]:
        """Outbox entries for an envelope: only a bound delivery service ever drains the
        outbox; without one the caller delivers what it is returned."""
        return [envelope] if self._delivery is not None else []

    def _require_delivery(self) -> Delivery:
        if self._delivery is None:
            raise StateConflict("no delivery service is bound to this client")
        return self._delivery

    async def _ready(self) -> None:
        """Refuse after close; rebuild memory from storage after a failed write or trap."""
        if self._closed:
            raise StateConflict("this client is closed")
        while self._stale is not None:
            if self._refreshing is None:
                self._refreshing = asyncio.ensure_future(self._refresh())
            refreshing = self._refreshing
            await refreshing

    async def _refresh(self) -> None:
        try:
            await self._writer.flush()
            await self._load_from_storage()
        finally:
            self._refreshing = None

    def _on_write_failure(self, error: BaseException) -> None:
        self._mark_stale(error)

    def _mark_stale(self, error: BaseException) -> None:
        self._stale = error

    def _run(self, step: Callable[[], Any]) -> Any:
        """Run a protocol step; a wasm trap marks memory stale (rebuilt on next use)."""
        try:
            return step()
        except WasmTrap as exc:
            self._mark_stale(exc)
            raise

    async def _prepare(self, conversation_id: ConversationId) -> Conversation:
        await self._ready()
        return await self._get(conversation_id)

    async def _get(self, conversation_id: ConversationId) -> Conversation:
        if not isinstance(conversation_id, ConversationId):
            raise InvalidInput(f"expected a ConversationId, got {type(conversation_id).__name__}")
        loaded = self._loaded.get(conversation_id)
        if loaded is not None:
            return loaded
        meta = self._metas.get(conversation_id)
        if meta is None:
            raise UnknownConversation(f"no conversation {conversation_id.hex} on this device")
        records = dict(await self._storage.scan("conversations", conversation_id.raw + b"/"))
        entries = await self._storage.scan("mls", self._provider.group_prefix(conversation_id.raw))
        loaded = self._loaded.get(conversation_id)  # another task may have loaded it meanwhile
        if loaded is not None:
            return loaded
        try:
            fields = {name: records[_record_key(conversation_id, name)] for name in RECORD_NAMES}
            cursor = SyncCursor.decode(fields["cursor"])
            leaves = decode_device_leaves(fields["leaves"])
            state = ConversationState.decode(fields["state"])
            meta = ConversationMeta.decode(fields["meta"])
        except (KeyError, PingError) as exc:
            raise StorageCorrupted(f"records of conversation {conversation_id.hex} are unreadable: {exc!r}") from None
        self._provider.restore(entries)
        conversation = Conversation.load(
            self._engine, self.device_id, meta=meta, cursor=cursor, device_leaves=leaves, state=state
        )
        if conversation is None:
            raise StorageCorrupted(f"the MLS state of conversation {conversation_id.hex} is missing")
        self._loaded[conversation_id] = conversation
        return conversation

    def _adopt(self, conversation: Conversation) -> None:
        self._loaded[conversation.id] = conversation
        self._metas[conversation.id] = conversation.meta

    def _capture(
        self,
        conversations: Iterable[Conversation],
        *,
        history: Iterable[IncomingMessage] = (),
        outbox: Iterable[MessageEnvelope] = (),
        outbox_done: Iterable[bytes] = (),
        batch: Batch | None = None,
    ) -> Batch:
        """Everything the last step changed, as one batch. Synchronous by design."""
        batch = batch if batch is not None else Batch()
        for key, value in self._provider.checkpoint():
            if value is None:
                batch.delete("mls", key)
            else:
                batch.put("mls", key, value)
        for conversation in conversations:
            self._metas[conversation.id] = conversation.meta
            for name, value in conversation.records(changed_only=True).items():
                batch.put("conversations", _record_key(conversation.id, name), value)
        for message in history:
            batch.put("history", history_key(message), message.encode())
        for envelope in outbox:
            batch.put("outbox", outbox_key(envelope), envelope.encode())
        for key in outbox_done:
            batch.delete("outbox", key)
        return batch

    async def _post(self, envelope: MessageEnvelope) -> bool:
        """Post an envelope that is already durable; take it out of the outbox once posted."""
        assert self._delivery is not None
        accepted = await self._delivery.post(envelope.encode())
        batch = Batch()
        batch.delete("outbox", outbox_key(envelope))
        await self._writer.submit(batch)
        return accepted

    async def _settle(self, conversation: Conversation, commit: MessageEnvelope) -> None:
        """Post our commit; merge it if the log took it, else discard it and catch up."""
        assert self._delivery is not None
        if await self._delivery.post(commit.encode()):
            if conversation.state.pending is not None and conversation.state.pending.seq == commit.seq:
                await self.confirm_commit(conversation.id)
            await self._send_welcome(commit)
            return
        # Refused: either the log already holds this very commit (posted before a crash,
        # its echo then confirms it), or another member's commit won the epoch.
        await self._pull()
        pending = conversation.state.pending
        if pending is None or pending.seq != commit.seq:
            await self._send_welcome(commit)
            return
        await self.discard_commit(conversation.id)
        await self._pull()
        raise StateConflict("another member's commit took this epoch; ours was discarded, retry")

    async def _send_welcome(self, commit: MessageEnvelope) -> None:
        """Deliver the Welcome of an accepted add commit, then drop it from the outbox."""
        assert self._delivery is not None
        key = _OUTBOX_KEY.pack(commit.conversation_id.raw, commit.seq, int(MessageKind.WELCOME))
        raw = await self._storage.get("outbox", key)
        if raw is None:
            return
        welcome = _WelcomeToSend.decode(raw)
        await self._delivery.send_welcome(welcome.devices, welcome.envelope.encode())
        batch = Batch()
        batch.delete("outbox", key)
        await self._writer.submit(batch)

    async def _flush_outbox(self) -> None:
        """Hand over what a crash or a failed post left behind, in seq order."""
        for key, value in await self._storage.scan("outbox"):
            envelope = _outbox_envelope(key, value)
            if envelope.kind is MessageKind.APPLICATION:
                await self._post(envelope)
            elif envelope.kind is MessageKind.COMMIT:
                conversation = await self._get(envelope.conversation_id)
                pending = conversation.state.pending
                if pending is not None and pending.seq == envelope.seq:
                    try:
                        await self._settle(conversation, envelope)
                    except StateConflict:
                        pass  # discarded and caught up; the app retries the membership change
                else:  # settled before the crash: nothing left to do but its Welcome
                    await self._send_welcome(envelope)
                    batch = Batch()
                    batch.delete("outbox", key)
                    await self._writer.submit(batch)


def _as_envelope(item: MessageEnvelope | bytes) -> MessageEnvelope:
    if isinstance(item, MessageEnvelope):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return MessageEnvelope.decode(bytes(item))
    raise InvalidInput(f"expected a MessageEnvelope or its bytes, got {type(item).__name__}")


def _pending_outbox(conversation: Conversation, *, with_welcome: bool = False) -> list[bytes]:
    """Outbox keys of the pending commit, which is being settled. An accepted commit's
    Welcome stays until it is sent; a discarded one's goes with it."""
    pending = conversation.state.pending
    if pending is None:
        return []
    kinds = (MessageKind.COMMIT, MessageKind.WELCOME) if with_welcome else (MessageKind.COMMIT,)
    return [_OUTBOX_KEY.pack(conversation.id.raw, pending.seq, int(kind)) for kind in kinds]


@dataclass(frozen=True, slots=True)
class _WelcomeToSend:
    """A Welcome in the outbox, with the devices it is for (sent once its commit is accepted)."""

    envelope: MessageEnvelope
    devices: list[DeviceId]

    def encode(self) -> bytes:
        return codec.encode({"v": 1, "e": self.envelope.encode(), "r": [d.raw for d in self.devices]})

    @classmethod
    def decode(cls, data: bytes) -> _WelcomeToSend:
        with codec.record(data, "OutboxWelcome", keys=frozenset({"v", "e", "r"}), versions=(1,),
                          max_size=2 << 20) as m:  # fmt: skip
            return cls(MessageEnvelope.decode(m["e"]), [DeviceId(raw) for raw in m["r"]])


def _outbox_envelope(key: bytes, value: bytes) -> MessageEnvelope:
    if _OUTBOX_KEY.unpack(key)[2] == MessageKind.WELCOME:
        return _WelcomeToSend.decode(value).envelope
    return MessageEnvelope.decode(value)
