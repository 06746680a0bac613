"""What every part of the client shares: the device's state, and how an operation is stored.

Every state-changing operation follows the same three steps (``docs/design.md``):

1. run the protocol step synchronously (:class:`~ping_web.core.conversation.Conversation`);
2. capture one :class:`~ping_web.storage.Batch` synchronously (:meth:`ClientBase._capture`):
   the MLS working-set delta, the conversation's records, the decrypted message or the
   outgoing envelope; nothing is awaited between step 1 and here;
3. hand the batch to the FIFO writer and await only its durability; then return.

So nothing is held across an await, batches land in capture order, an envelope is returned
only once the state that produced it is stored (a crash can never reuse a seq or a ratchet
generation that left the device), and a message is reported only once it is stored. If a
write fails, memory is rebuilt from storage before the next operation, so a failed
operation leaves both as they were. A wasm trap is handled the same way, with a fresh
wasm instance.

An operation given a request id (``client.requests``) also records its outcome in that
same batch, so a retry of it is answered from the record and never applied twice.

The other modules of this package each add one job to :class:`ClientBase`; the hooks at
its end are what one job calls in another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from ping_web.client import keys
from ping_web.client.device import DeviceRecord, device_group_id
from ping_web.client.identity import Identities, IdentityEvent
from ping_web.client.requests import Request, RequestLog
from ping_web.client.vetting import MemberVetting
from ping_web.core import codec
from ping_web.core.conversation import Conversation, ConversationRecords
from ping_web.core.cursor import SyncCursor
from ping_web.core.envelope import IncomingMessage, MessageEnvelope
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.records import AddOutcome, ConversationMeta, decode_device_leaves
from ping_web.core.state import ConversationState, decode_held
from ping_web.delivery.base import Delivery
from ping_web.errors import (
    DeliveryUnavailable,
    InvalidInput,
    PingError,
    StateConflict,
    StorageCorrupted,
    UnknownConversation,
    WasmTrap,
)
from ping_web.mls.engine import OpenMlsEngine
from ping_web.mls.openmls import MlsRuntime
from ping_web.storage.base import Batch, Storage
from ping_web.storage.writer import BatchWriter

T = TypeVar("T")

_LOG_POSITION_KEYS: Final = frozenset({"v", "p"})


def encode_log_position(position: int) -> bytes:
    """The ``log-position`` record: ``{"v": 1, "p": position}``."""
    return codec.encode({"v": 1, "p": position})


def decode_log_position(data: bytes) -> int:
    with codec.record(data, "LogPosition", keys=_LOG_POSITION_KEYS, versions=(1,)) as m:
        return codec.uint(m["p"], "position")


@dataclass(frozen=True, slots=True)
class ClientSigner:
    """The device as its delivery service sees it (a :class:`~ping_web.delivery.DeviceSigner`):
    ids, public key, and signatures by its MLS key (``Identity.sign_with_label``), made by
    whatever wasm instance the client has at the time."""

    user_id: UserId
    device_id: DeviceId
    public_key: bytes
    _client: ClientBase = field(repr=False)

    @property
    def genesis(self) -> bytes | None:
        return self._client._own_genesis()

    def sign(self, label: str, content: bytes) -> bytes:
        return self._client._run(lambda: self._client._engine.identity.sign_with_label(label, content))


@dataclass(slots=True)
class BatchOutcome:
    """What :meth:`MessagingClient.receive_batch` did: messages stored, envelopes refused."""

    messages: list[IncomingMessage] = field(default_factory=list)
    rejected: list[tuple[MessageEnvelope | bytes, PingError]] = field(default_factory=list)


class ClientBase:
    """A device's memory: storage, writer, MLS engine, conversations. See the module docstring."""

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
        self._writer = BatchWriter(storage, self._mark_stale)
        self._runtime: MlsRuntime | None = None
        self._engine_or_none: OpenMlsEngine | None = None
        self._metas: dict[ConversationId, ConversationMeta] = {}
        self._loaded: dict[ConversationId, Conversation] = {}
        self._log_positions: dict[ConversationId, int] = {}
        self._outbox_backlog = False
        """Whether the outbox may hold envelopes a post could not hand over: a send then
        posts the whole outbox in order instead of only its own envelope."""
        self._bound = False
        self._stale: BaseException | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self._closed = False
        self._requests = RequestLog()
        self._lost_commits: set[tuple[ConversationId, int]] = set()
        """Own commits (conversation, seq) that another member's commit beat, for ``_settle``."""
        self._identities = Identities(storage, self._writer.submit, delivery, self._verifier, self._identity_event)
        self._vetting = MemberVetting(
            self._identities, lambda: self._engine, self._identity_event, enabled=delivery is not None
        )
        self._log_published = False
        self._joins: list[IdentityEvent] = []
        self._imported: list[IncomingMessage] = []
        """Messages of history chunks taken in the batch being applied (``client.sync``)."""
        """Devices that joined by external commit, told once their batch is stored."""
        self.on_identity_event: Callable[[IdentityEvent], None] | None = None
        """Called when a user's devices or identity change, or a conversation has a member
        that is not a verified device of its user (``client.identity.IdentityEvent``).
        Advisory: the state stays queryable (``contact``, ``unverified_members``)."""
        self.on_messages: Callable[[list[IncomingMessage]], None] | None = None
        """Called with messages once they are stored (received, released by a commit, or
        sent by this device), so every view of the device can show them: the tabs of a
        shared device (``client.tabs``) broadcast them. Runs inside the operation: keep it
        short; what it raises is dropped."""

    # -- reading -----------------------------------------------------------------------------

    @property
    def device_id(self) -> DeviceId:
        return self._record.device_id

    @property
    def user_id(self) -> UserId:
        return self._record.user_id

    @property
    def signer(self) -> ClientSigner:
        """This device for a delivery service (:meth:`~ping_web.delivery.Delivery.bind`):
        ids, public key, and signatures by its MLS key; the key never leaves the wasm module."""
        record = self._record
        return ClientSigner(record.user_id, record.device_id, record.public_key, self)

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
        rows = await self._storage.scan(keys.HISTORY, keys.history_prefix(conversation_id))
        messages = []
        for key, value in rows[-limit:] if limit else rows:
            try:
                messages.append(IncomingMessage.decode(value))
            except PingError as exc:
                raise StorageCorrupted(f"history entry {key.hex()} is unreadable: {exc}") from None
        return messages

    # -- the MLS engine ----------------------------------------------------------------------

    @property
    def _engine(self) -> OpenMlsEngine:
        engine = self._engine_or_none
        if engine is None:
            raise StateConflict("this client is closed")
        return engine

    def _use_runtime(self, runtime: MlsRuntime, engine: OpenMlsEngine) -> None:
        self._runtime, self._engine_or_none = runtime, engine
        if self._delivery is not None and not self._bound:
            self._bound = True
            self._delivery.bind(self.signer)  # once the device can sign

    # -- conversations in memory -------------------------------------------------------------

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

    async def _load_from_storage(self) -> None:
        """(Re)build memory from storage: identity and conversation index now, groups lazily."""
        runtime = MlsRuntime.load()
        provider = runtime.provider()
        provider.restore(await self._storage.scan(keys.MLS, keys.GLOBAL_MLS_PREFIX))
        identity = provider.load_identity(self._record.user_id.raw, self._record.public_key)
        metas: dict[ConversationId, ConversationMeta] = {}
        positions: dict[ConversationId, int] = {}
        for key, value in await self._storage.scan(keys.CONVERSATIONS):
            if keys.is_record_key(key, "meta"):
                try:
                    meta = ConversationMeta.decode(value)
                except PingError as exc:
                    raise StorageCorrupted(f"conversation record {key[:16].hex()} is unreadable: {exc}") from None
                metas[meta.id] = meta
            elif keys.is_record_key(key, keys.LOG_POSITION):
                try:
                    positions[ConversationId(key[:16])] = decode_log_position(value)
                except PingError as exc:
                    raise StorageCorrupted(f"log position of {key[:16].hex()} is unreadable: {exc}") from None
        backlog = bool(await self._storage.scan(keys.OUTBOX))
        await self._requests.load(self._storage)
        self._identities.forget()
        self._vetting.forget()
        await self._identities.stored(self.user_id)
        self._log_published = await self._storage.get(keys.DEVICE, keys.LOG_PUBLISHED) is not None
        self._use_runtime(runtime, OpenMlsEngine(provider, identity))
        self._metas, self._loaded = metas, {}
        self._log_positions = {c: p for c, p in positions.items() if c in metas}
        self._outbox_backlog = backlog
        self._stale = None

    def _verifier(self) -> MlsRuntime:
        """Ed25519 checks of device-log entries, by the wasm instance in use."""
        runtime = self._runtime
        if runtime is None:
            raise StateConflict("this client is closed")
        return runtime

    def _own_genesis(self) -> bytes | None:
        """The genesis entry of this user's log when this device made it."""
        own = self._identities.cached(self.user_id)
        if own is None:
            return None
        first = own.log.devices[0]
        return own.log.entries[0] if first.key == self._record.public_key else None

    async def _publish_genesis(self) -> None:
        """Give the delivery service the genesis entry this device made, once (a relay also
        takes it at registration). Unreachable now is fine: ``sync`` tries again. A refusal
        means the user has devices there already: this device must be linked to them."""
        genesis = self._own_genesis()
        if self._delivery is None or genesis is None or self._log_published:
            return
        try:
            await self._delivery.append_device_log(genesis)
        except StateConflict as exc:
            raise StateConflict(
                f"the user {self.user_id.raw!r} already has devices at the delivery service ({exc}): open this "
                "device with linked=True and link it from one of them"
            ) from None
        except PingError:
            return  # unreachable, or refused for now: the next sync tries again
        batch = Batch()
        batch.put(keys.DEVICE, keys.LOG_PUBLISHED, b"\x01")
        await self._writer.submit(batch)
        self._log_published = True

    def _identity_event(self, event: IdentityEvent) -> None:
        if self.on_identity_event is not None:
            try:
                self.on_identity_event(event)
            except Exception:  # noqa: BLE001 - a listener never fails the operation that found it
                pass

    def _mark_stale(self, error: BaseException) -> None:
        """Memory may differ from storage (a failed write, a trap): rebuild before next use."""
        self._stale = error

    def _run(self, step: Callable[[], T]) -> T:
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
        if conversation_id not in self._metas:
            raise UnknownConversation(f"no conversation {conversation_id.hex} on this device")
        rows = await self._storage.scan(keys.CONVERSATIONS, keys.conversation_prefix(conversation_id))
        entries = await self._storage.scan(keys.MLS, self._engine.group_prefix(conversation_id.raw))
        loaded = self._loaded.get(conversation_id)  # another task may have loaded it meanwhile
        if loaded is not None:
            return loaded
        conversation = self._rehydrate(conversation_id, dict(rows), entries)
        self._loaded[conversation_id] = conversation
        return conversation

    def _rehydrate(
        self, conversation_id: ConversationId, rows: dict[bytes, bytes], entries: list[tuple[bytes, bytes]]
    ) -> Conversation:
        held_prefix = keys.held_prefix(conversation_id)
        try:
            fields = {name: rows[keys.record_key(conversation_id, name)] for name in keys.RECORD_NAMES}
            cursor = SyncCursor.decode(fields["cursor"])
            leaves = decode_device_leaves(fields["leaves"])
            state, legacy_held = ConversationState.decode_with_legacy_held(fields["state"])
            meta = ConversationMeta.decode(fields["meta"])
            held = [decode_held(value) for key, value in sorted(rows.items()) if key.startswith(held_prefix)]
        except (KeyError, PingError) as exc:
            raise StorageCorrupted(f"records of conversation {conversation_id.hex} are unreadable: {exc!r}") from None
        self._engine.provider.restore(entries)
        records = ConversationRecords(meta, cursor, leaves, state, held + legacy_held)
        conversation = Conversation.load(self._engine, self.device_id, records, held_stored=not legacy_held)
        if conversation is None:
            raise StorageCorrupted(f"the MLS state of conversation {conversation_id.hex} is missing")
        return conversation

    def _adopt(self, conversation: Conversation) -> None:
        self._loaded[conversation.id] = conversation
        self._metas[conversation.id] = conversation.meta

    # -- capturing an operation --------------------------------------------------------------

    def _capture(
        self,
        conversations: Iterable[Conversation],
        *,
        history: Iterable[IncomingMessage] = (),
        outbox: Iterable[MessageEnvelope] = (),
        outbox_done: Iterable[bytes] = (),
        positions: Mapping[ConversationId, int] | None = None,
        batch: Batch | None = None,
    ) -> Batch:
        """Everything the last step changed, as one batch. Synchronous by design.

        ``positions``: how far the delivery service's logs were read (stored with what was
        read from them, so a restart resumes there)."""
        batch = batch if batch is not None else Batch()
        for key, value in self._engine.provider.checkpoint():
            if value is None:
                batch.delete(keys.MLS, key)
            else:
                batch.put(keys.MLS, key, value)
        for conversation in conversations:
            self._metas[conversation.id] = conversation.meta
            for name, value in conversation.records(changed_only=True).items():
                batch.put(keys.CONVERSATIONS, keys.record_key(conversation.id, name), value)
            added, released = conversation.held_changes()
            for envelope in released:
                batch.delete(keys.CONVERSATIONS, keys.held_key(envelope))
            for envelope in added:
                batch.put(keys.CONVERSATIONS, keys.held_key(envelope), envelope.encode())
        for message in history:
            batch.put(keys.HISTORY, keys.history_key(message), message.encode())
        for envelope in outbox:
            batch.put(keys.OUTBOX, keys.outbox_key_of(envelope), envelope.encode())
        for key in outbox_done:
            batch.delete(keys.OUTBOX, key)
        for conversation_id, position in (positions or {}).items():
            batch.put(keys.CONVERSATIONS, keys.log_position_key(conversation_id), encode_log_position(position))
        return batch

    def _record_request(
        self, batch: Batch, request: Request | None, result: bytes, *, commit: MessageEnvelope | None = None
    ) -> Batch:
        """Add a request's outcome (and the commit it made) to its operation's batch."""
        if request is not None:
            self._requests.record(batch, request, result, self._clock(), commit=commit)
        return batch

    async def _once(
        self,
        request_id: bytes | None,
        method: str,
        decode: Callable[[bytes], T],
        operation: Callable[[Request | None], Awaitable[T]],
    ) -> T:
        """Run ``operation`` at most once per request id; a retry gets the recorded outcome."""
        await self._ready()
        return await self._requests.run(self._storage, request_id, method, decode, operation)

    def _notify(self, messages: list[IncomingMessage]) -> None:
        """Tell :attr:`on_messages` about messages that are now stored."""
        if messages and self.on_messages is not None:
            try:
                self.on_messages(list(messages))
            except Exception:  # noqa: BLE001 - a listener never fails the operation that stored them
                pass

    def _require_delivery(self) -> Delivery:
        if self._delivery is None:
            raise StateConflict("no delivery service is bound to this client")
        return self._delivery

    async def _register_group(self, conversation_id: ConversationId) -> None:
        """Tell the delivery service about a conversation this device created. Unreachable
        now is fine: the relay registers a conversation it does not know at its first post."""
        if self._delivery is None:
            return
        try:
            await self._delivery.create_group(conversation_id)
        except DeliveryUnavailable:
            pass

    # -- hooks: one job of the client calling another (implemented in the named module) ------

    def _join_now(self, envelope: MessageEnvelope, name: str | None = None) -> Conversation | None:
        """Join from a Welcome synchronously (``client.conversations``)."""
        raise NotImplementedError

    async def add_members(
        self,
        conversation_id: ConversationId,
        entries: Sequence[tuple[DeviceId, bytes]],
        *,
        request_id: bytes | None = None,
    ) -> AddOutcome:  # ``client.conversations``
        raise NotImplementedError

    async def remove_members(
        self, conversation_id: ConversationId, leaf_indexes: Sequence[int], *, request_id: bytes | None = None
    ) -> MessageEnvelope:  # ``client.conversations``
        raise NotImplementedError

    async def self_update(
        self, conversation_id: ConversationId, *, request_id: bytes | None = None
    ) -> MessageEnvelope:  # ``client.conversations``
        raise NotImplementedError

    async def _post(self, envelope: MessageEnvelope) -> None:  # ``client.outbox``
        raise NotImplementedError

    async def _hand_over(self, envelope: MessageEnvelope) -> None:  # ``client.outbox``
        raise NotImplementedError

    async def _settle(self, conversation: Conversation, commit: MessageEnvelope) -> None:  # ``client.outbox``
        raise NotImplementedError

    async def _flush_outbox(self) -> None:  # ``client.outbox``
        raise NotImplementedError

    async def _pull(self) -> BatchOutcome:  # ``client.sync``
        raise NotImplementedError

    async def sync(self) -> BatchOutcome:  # ``client.sync``
        raise NotImplementedError
