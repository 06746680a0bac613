"""Receiving: envelopes in, decrypted messages stored and reported; sync with a delivery service.

:meth:`Sync.receive_batch` applies many envelopes with one storage write (a catch-up):
nothing is awaited between the first protocol step and the capture, so the batch is one
consistent state. Bad envelopes are reported and change nothing; the rest are applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ping_web.client import keys
from ping_web.client.base import BatchOutcome, ClientBase
from ping_web.client.conversations import as_envelope
from ping_web.client.identity import IdentityEvent, IdentityEventKind
from ping_web.client.vetting import LogsNeeded
from ping_web.core.conversation import Conversation
from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind
from ping_web.core.history import HistoryChunk
from ping_web.core.ids import ConversationId
from ping_web.errors import DeliveryUnavailable, PingError, StateConflict, UnknownConversation, WasmTrap


class Sync(ClientBase):
    """Applying received envelopes, and pulling them from the delivery service."""

    async def receive(self, envelope: MessageEnvelope | bytes) -> list[IncomingMessage]:
        """Apply one envelope; returns the messages it made readable (stored first)."""
        outcome = await self.receive_batch([envelope])
        if outcome.rejected:
            raise outcome.rejected[0][1]
        return outcome.messages

    async def receive_batch(self, envelopes: Iterable[MessageEnvelope | bytes]) -> BatchOutcome:
        """Apply many envelopes with one storage write (catch-up). Bad ones are reported in
        ``rejected`` and change nothing; the rest are applied and stored."""
        return await self._receive_batch(envelopes)

    async def _receive_batch(
        self, envelopes: Iterable[MessageEnvelope | bytes], positions: Mapping[ConversationId, int] | None = None
    ) -> BatchOutcome:
        """:meth:`receive_batch`; ``positions`` (log positions reached by reading these
        envelopes) are stored in the same batch, and kept in memory once it is durable."""
        await self._ready()
        outcome = BatchOutcome()
        decoded: list[MessageEnvelope] = []
        for item in envelopes:
            try:
                decoded.append(as_envelope(item))
            except PingError as exc:
                outcome.rejected.append((item, exc))
        for conversation_id in {e.conversation_id for e in decoded}:
            if conversation_id in self._metas:
                await self._get(conversation_id)
        # From here to the capture, nothing is awaited.
        touched: dict[ConversationId, Conversation] = {}
        lost: list[tuple[ConversationId, int]] = []
        for envelope in decoded:
            try:
                self._apply(envelope, outcome, touched, lost)
            except WasmTrap as exc:
                self._mark_stale(exc)
                raise
            except PingError as exc:
                outcome.rejected.append((envelope, exc))
        if touched or self._engine.provider.has_changes or positions or self._imported:
            # An own commit that lost its epoch leaves the outbox (its Welcome is never sent),
            # and the request that made it is recorded as failed, in this same batch.
            done = [
                keys.outbox_key(c, seq, kind) for c, seq in lost for kind in (MessageKind.COMMIT, MessageKind.WELCOME)
            ]
            imported, self._imported = self._imported, []  # history chunks from another device of this user
            batch = self._capture(
                touched.values(), history=[*imported, *outcome.messages], outbox_done=done, positions=positions
            )
            for conversation_id, seq in lost:
                self._requests.commit_discarded(batch, conversation_id, seq, self._clock())
            await self._writer.submit(batch)
            self._lost_commits.update(lost)
            self._log_positions.update(positions or {})
            self._notify(outcome.messages)
        joins, self._joins = self._joins, []
        for event in joins:  # told once the commit that made them is stored
            self._identity_event(event)
        return outcome

    def _apply(
        self,
        envelope: MessageEnvelope,
        outcome: BatchOutcome,
        touched: dict[ConversationId, Conversation],
        lost: list[tuple[ConversationId, int]],
    ) -> None:
        if envelope.kind is MessageKind.WELCOME:
            joined = self._join_now(envelope)
            if joined is not None:
                touched[joined.id] = joined
            return
        conversation = self._loaded.get(envelope.conversation_id)
        if conversation is None:
            raise UnknownConversation(f"no conversation {envelope.conversation_id.hex} on this device")
        pending = conversation.state.pending
        message = conversation.process(envelope, self._clock())
        if pending is not None and conversation.state.pending is None and envelope.sender_device != self.device_id:
            lost.append((conversation.id, pending.seq))  # another member's commit took our epoch
        touched[conversation.id] = conversation
        if message is not None and not (
            conversation.meta.is_device_group and self._take_history(message, self._imported)
        ):
            outcome.messages.append(message)
        outcome.messages.extend(conversation.take_released())
        outcome.rejected.extend(conversation.take_rejected())
        for member in conversation.take_external_joins():
            self._joins.append(IdentityEvent(IdentityEventKind.DEVICE_JOINED, member.user_id,
                                             conversation_id=conversation.id, key=member.signature_key))  # fmt: skip

    async def _join_welcomes(self, welcomes: list[bytes]) -> BatchOutcome:
        """Join from Welcomes; acknowledge those joined or refused. A Welcome whose members'
        device logs must be read first is joined again once they are; one that must wait (a
        member's user has no log at the service yet, or the service is away) stays unacknowledged."""
        outcome = await self.receive_batch(welcomes)
        needed: list[tuple[MessageEnvelope | bytes, PingError]] = [
            (w, e) for w, e in outcome.rejected if isinstance(e, LogsNeeded)
        ]
        outcome.rejected = [(w, e) for w, e in outcome.rejected if not isinstance(e, LogsNeeded)]
        waiting: set[bytes] = set()
        if needed:
            try:
                await self._vetting.fetch_logs({u for _, e in needed if isinstance(e, LogsNeeded) for u in e.users})
                again = await self.receive_batch([w for w, _ in needed])
            except DeliveryUnavailable:
                again = BatchOutcome(rejected=needed)
            finally:
                self._vetting.end_round()
            outcome.messages.extend(again.messages)
            for item, error in again.rejected:
                if isinstance(error, (LogsNeeded, DeliveryUnavailable)):
                    waiting.add(_raw(item))
                else:
                    outcome.rejected.append((item, error))
        done = [w for w in welcomes if bytes(w) not in waiting]
        if done:
            await self._require_delivery().ack_welcomes(self.device_id, done)  # joined or refused: done with
        return outcome

    def _take_history(self, message: IncomingMessage, imported: list[IncomingMessage]) -> bool:
        """A device-group message that is a history chunk: keep its messages (if it is for
        this device, from an active device of this user, of a conversation this device has);
        ``True`` if it was one (it is not shown as a message either way)."""
        try:
            chunk = HistoryChunk.parse(message.plaintext)
        except PingError:
            return True  # a malformed chunk: dropped, it never shows as a message
        if chunk is None:
            return False
        own = self._identities.cached(self.user_id)
        sender = None if own is None else own.log.device_by_id(message.sender_device)
        if chunk.to != self.device_id or sender is None or not sender.active or message.sender_user != self.user_id:
            return True
        if chunk.conversation_id not in self._metas:
            return True
        for raw in chunk.messages:
            try:
                item = IncomingMessage.decode(raw)
            except PingError:
                continue
            if item.conversation_id == chunk.conversation_id:
                imported.append(item)
        return True

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
        """Receive new Welcomes (acknowledged once joined, durably), then every
        conversation's new log entries, applied and stored in one batch with the log
        positions they reach, so a restart goes on from there."""
        delivery = self._require_delivery()
        await self._publish_genesis()  # if a crash or an outage kept it from the service so far
        welcomes = await delivery.fetch_welcomes(self.device_id)
        outcome = await self._join_welcomes(welcomes) if welcomes else BatchOutcome()
        envelopes: list[bytes] = []
        positions: dict[ConversationId, int] = {}
        for conversation_id in list(self._metas):
            position = self._log_positions.get(conversation_id, 0)
            try:
                page = await delivery.fetch(conversation_id, position)
            except StateConflict as exc:  # this log is unreadable here (not a member, another relay)
                outcome.rejected.append((conversation_id.raw, exc))  # the others go on
                continue
            envelopes += page.envelopes
            if page.next_position != position:
                positions[conversation_id] = page.next_position
        if envelopes or positions:
            more = await self._receive_batch(envelopes, positions)
            outcome.messages.extend(more.messages)
            outcome.rejected.extend(more.rejected)
        await self._vetting.report(self._loaded.values())
        return outcome


def _raw(item: MessageEnvelope | bytes) -> bytes:
    return item.encode() if isinstance(item, MessageEnvelope) else bytes(item)
