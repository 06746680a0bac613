"""Conversation operations: create, join, send, and membership changes (add, remove, update).

Each is one protocol step on a :class:`~ping_web.core.conversation.Conversation`, captured
as one batch. With a delivery service bound, an envelope is posted once it is durable, and
an own commit is settled (``client.outbox``): merged if the delivery service accepted it,
discarded if another member's commit took the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ping_web.client import keys
from ping_web.client.base import ClientBase
from ping_web.client.device import DEVICE_GROUP_NAME, device_group_id
from ping_web.client.outbox import OutboxWelcome
from ping_web.client.requests import Request
from ping_web.client.vetting import LogsNeeded
from ping_web.core.conversation import Conversation
from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind
from ping_web.core.history import MAX_BUNDLE_MESSAGES
from ping_web.core.history import chunks as history_chunks
from ping_web.core.ids import ConversationId, DeviceId
from ping_web.core.records import AddOutcome, ConversationMeta
from ping_web.errors import InvalidInput, StateConflict, UnverifiedDevice


def as_envelope(item: MessageEnvelope | bytes) -> MessageEnvelope:
    """An envelope, decoded and validated if it arrives as bytes."""
    if isinstance(item, MessageEnvelope):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return MessageEnvelope.decode(bytes(item))
    raise InvalidInput(f"expected a MessageEnvelope or its bytes, got {type(item).__name__}")


class Conversations(ClientBase):
    """Creating, joining, sending to and changing the members of conversations."""

    async def create_conversation(
        self, name: str | None = None, *, request_id: bytes | None = None
    ) -> ConversationMeta:
        """Create a conversation with this device alone in it (``request_id``: see ``client.requests``)."""

        async def run(request: Request | None) -> ConversationMeta:
            await self._ready()
            conversation = Conversation.create(self._engine, self.device_id, self._clock(), name=name)
            self._adopt(conversation)
            meta = conversation.meta
            await self._writer.submit(self._record_request(self._capture([conversation]), request, meta.encode()))
            await self._register_group(conversation.id)
            return meta

        return await self._once(request_id, "create_conversation", ConversationMeta.decode, run)

    async def join(self, welcome: MessageEnvelope | bytes, *, name: str | None = None) -> ConversationMeta:
        """Join from a Welcome envelope made for one of this device's KeyPackages."""
        await self._ready()
        envelope = as_envelope(welcome)
        if envelope.conversation_id in self._metas:
            await self._get(envelope.conversation_id)
        try:
            conversation = self._run(lambda: self._join_now(envelope, name))
        except LogsNeeded as needed:  # read the members' device logs, then join for real
            try:
                await self._vetting.fetch_logs(needed.users)
                conversation = self._run(lambda: self._join_now(envelope, name))
            except LogsNeeded as still:
                raise UnverifiedDevice(f"{still}; no device list is known for them, not joined", next(iter(
                    still.users)), b"", "no device list is known") from None  # fmt: skip
            finally:
                self._vetting.end_round()
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
        engine = self._engine
        with engine.savepoint():
            if existing is not None:
                engine.drop_group(conversation_id.raw)
                name = name or existing.meta.name
            conversation = Conversation.join(
                engine, self.device_id, envelope, self._clock(), name=name, is_device_group=is_device_group
            )
            self._vetting.joined(conversation)  # every member a verified device, or nothing joined
        if existing is not None:  # same device, same conversation: never reuse a seq
            conversation.state.seq = max(existing.state.seq, existing.cursor.highest_seq(self.device_id))
        self._adopt(conversation)
        return conversation

    async def send(
        self, conversation_id: ConversationId, plaintext: bytes, *, request_id: bytes | None = None
    ) -> MessageEnvelope:
        """Encrypt and store ``plaintext``; returns the envelope once it is durable.

        With a delivery service bound, the envelope is also posted (and leaves the outbox).
        If the service cannot be reached, it stays in the outbox and the call still returns
        (the message is stored and shown): ``sync()`` posts what waits there, oldest first.
        A conversation restored from backup first commits a self-update; if that is
        refused, it raises :class:`~ping_web.errors.RejoinRequired` and sends nothing.
        With a ``request_id`` (``client.requests``), a retry returns the stored envelope.
        """
        return await self._once(
            request_id, "send", MessageEnvelope.decode, lambda request: self._send(conversation_id, plaintext, request)
        )

    async def _send(
        self, conversation_id: ConversationId, plaintext: bytes, request: Request | None, *, kept: bool = True
    ) -> MessageEnvelope:
        """:meth:`send`; ``kept=False``: not in this device's own history (a history chunk
        for another device of the user)."""
        conversation = await self._prepare(conversation_id)
        if self._delivery is not None and conversation.state.pending is not None:
            await self.sync()  # a commit left unsettled by a crash is settled first
        await self._vetting.before_send(conversation)
        if conversation.state.needs_self_update and self._delivery is not None:
            await self.self_update(conversation_id)
        now = self._clock()
        envelope = self._run(lambda: conversation.send_application(plaintext, now))
        own = [IncomingMessage.from_envelope(envelope, bytes(plaintext), self.user_id)] if kept else []
        batch = self._capture([conversation], history=own, outbox=self._to_post(envelope))
        await self._writer.submit(self._record_request(batch, request, envelope.encode()))
        self._notify(own)
        if self._delivery is not None:
            await self._hand_over(envelope)
        return envelope

    async def add_members(
        self, conversation_id: ConversationId, entries: Sequence[tuple[DeviceId, bytes]], *,
        request_id: bytes | None = None,
    ) -> AddOutcome:  # fmt: skip
        """Stage a commit adding ``(device id, KeyPackage)`` pairs.

        With a delivery service, each KeyPackage must belong to an active device of its
        user's verified device log (with that device id), else
        :class:`~ping_web.errors.UnverifiedDevice` and nothing changes (see ``add_user``).

        Without a delivery service the commit stays pending until :meth:`confirm_commit` /
        :meth:`discard_commit`. With one, it is posted: accepted -> merged and the Welcome
        sent to the new devices; refused -> discarded, the winner applied, and
        :class:`~ping_web.errors.StateConflict` raised so the caller can retry (with a new
        ``request_id``, if it uses them).
        """
        entries = list(entries)

        async def run(request: Request | None) -> AddOutcome:
            conversation = await self._prepare(conversation_id)
            await self._vetting.key_packages(entries)  # only verified devices of their users
            await self._publish_genesis()  # the joiners verify this device by its user's log
            outcome = self._run(lambda: conversation.add_members(entries, self._clock()))
            batch = self._capture([conversation], outbox=self._to_post(outcome.commit))
            if self._delivery is not None:  # without one, the caller delivers the Welcome itself
                welcome = OutboxWelcome(outcome.welcome, [device for device, _ in entries])
                batch.put(keys.OUTBOX, keys.outbox_key_of(outcome.welcome), welcome.encode())
            await self._writer.submit(self._record_request(batch, request, outcome.encode(), commit=outcome.commit))
            if self._delivery is not None:
                await self._settle(conversation, outcome.commit)
            return outcome

        return await self._once(request_id, "add_members", AddOutcome.decode, run)

    async def remove_members(
        self, conversation_id: ConversationId, leaf_indexes: Sequence[int], *, request_id: bytes | None = None
    ) -> MessageEnvelope:
        leaves = list(leaf_indexes)
        return await self._once(
            request_id, "remove_members", MessageEnvelope.decode,
            lambda request: self._commit(conversation_id, request, lambda c: c.remove_members(leaves, self._clock())),
        )  # fmt: skip

    async def self_update(self, conversation_id: ConversationId, *, request_id: bytes | None = None) -> MessageEnvelope:
        return await self._once(
            request_id, "self_update", MessageEnvelope.decode,
            lambda request: self._commit(conversation_id, request, lambda c: c.self_update(self._clock())),
        )  # fmt: skip

    async def _commit(
        self, conversation_id: ConversationId, request: Request | None, step: Callable[[Conversation], MessageEnvelope]
    ) -> MessageEnvelope:
        """One own commit: stage it, store it (and its request), then settle it."""
        conversation = await self._prepare(conversation_id)
        commit = self._run(lambda: step(conversation))
        batch = self._capture([conversation], outbox=self._to_post(commit))
        await self._writer.submit(self._record_request(batch, request, commit.encode(), commit=commit))
        if self._delivery is not None:
            await self._settle(conversation, commit)
        return commit

    async def rejoin(self, conversation_id: ConversationId, *, attempts: int = 3) -> MessageEnvelope:
        """Join a conversation again by external commit, from the GroupInfo its delivery
        service keeps: what a copy that needs a rejoin (``RejoinRequired``: restored from a
        backup that is no longer current) does to send there again. The new leaf replaces
        this device's stale one in the same commit (the other members' clients check that
        it is one of its user's verified devices). If another member's commit takes the
        epoch first, it reads on and tries again, ``attempts`` times in all."""
        delivery = self._require_delivery()
        for _ in range(attempts):
            await self._pull()  # the newest epoch this device can see, and the winner of any race
            conversation = await self._prepare(conversation_id)
            group_info = await delivery.group_info(conversation_id)
            if group_info is None:
                raise StateConflict(
                    "the delivery service has no GroupInfo of this conversation yet (members' commits bring "
                    "one): retry after a member's next change"
                )
            try:
                return await self._rejoin_once(conversation, group_info)
            except StateConflict:
                continue  # lost the epoch to another commit: read on and rejoin from a newer GroupInfo
        raise StateConflict(f"the conversation's epoch moved on during {attempts} rejoins; retry")

    async def join_user_conversations(self) -> list[ConversationId]:
        """Join, by external commit, each conversation a device of this user is in and this
        device is not: what a newly linked device does, without waiting for another device
        of its user to be online. Members check that it is one of its user's verified
        devices. Returns the conversations joined."""
        delivery = self._require_delivery()
        await self._ready()
        joined = []
        for conversation_id in await delivery.user_groups():
            if conversation_id in self._metas:
                continue
            group_info = await delivery.group_info(conversation_id)
            if group_info is None:
                continue  # no commit carried one yet: a member's next change brings it
            try:
                await self._join_external_once(group_info)
            except StateConflict:
                await self.rejoin(conversation_id)  # lost the epoch: from the newer GroupInfo
            joined.append(conversation_id)
        return joined

    async def _join_external_once(self, group_info: bytes) -> None:
        conversation, commit = self._run(
            lambda: Conversation.join_external(self._engine, self.device_id, group_info, self._clock())
        )
        self._adopt(conversation)
        await self._writer.submit(self._capture([conversation], outbox=self._to_post(commit)))
        await self._settle(conversation, commit)

    async def _rejoin_once(self, conversation: Conversation, group_info: bytes) -> MessageEnvelope:
        commit = self._run(lambda: conversation.rejoin(group_info, self._clock()))
        await self._writer.submit(self._capture([conversation], outbox=self._to_post(commit)))
        await self._settle(conversation, commit)
        return commit

    async def share_history(self, device_id: DeviceId, *, max_messages: int = 10_000) -> int:
        """Send another device of this user the stored history of each conversation it is a
        member of (the newest ``max_messages`` in all), through the user's device group, in
        chunks the relay cannot read (``core/history.py``). Opt-in: the application calls it
        once the user agreed (e.g. when approving a link). Sending it again resumes an
        interrupted transfer: what arrived twice is stored once. Returns the messages sent."""
        await self._ready()
        own = await self._identities.contact(self.user_id, refresh=self._delivery is not None)
        device = None if own is None else own.log.device_by_id(device_id)
        if device is None or not device.active or device_id == self.device_id:
            raise InvalidInput("history goes only to another active device of this user's device list")
        group = device_group_id(self.user_id)
        if group not in self._metas:
            raise StateConflict("this device is not in its user's device group")
        budget = min(max_messages, MAX_BUNDLE_MESSAGES)
        parts: list[tuple[ConversationId, list[bytes]]] = []
        for meta in sorted(self._metas.values(), key=lambda m: m.created_at_ms):
            conversation = await self._get(meta.id)
            if meta.is_device_group or budget <= 0:
                continue
            if device.key not in {m.signature_key for m in conversation.members()}:
                continue
            messages = await self.history(meta.id, limit=budget)
            parts.append((meta.id, [m.encode() for m in messages]))
            budget -= len(messages)
        for chunk in history_chunks(device_id, parts):
            await self._send(group, chunk.encode(), None, kept=False)
        return sum(len(messages) for _, messages in parts)

    def _to_post(self, envelope: MessageEnvelope) -> list[MessageEnvelope]:
        """Outbox entries for an envelope: only a bound delivery service ever drains the
        outbox; without one the caller delivers what it is returned."""
        return [envelope] if self._delivery is not None else []
