"""The outbox, and settling own commits with the delivery service.

An envelope is stored in the outbox in the same batch as the state that made it, posted
once that batch is durable, and taken out of the outbox in a batch of its own once posted;
so a crash in between leaves it there and :meth:`Outbox._flush_outbox` (run by ``sync``)
posts it again (receivers drop the duplicate by sender and seq).

An own commit stays pending until the delivery service decides: accepted -> merged, and
the Welcome of an add sent to the new devices; refused -> discarded and the winner applied.
A refused self-update that a restored conversation had to make first means another copy of
this device holds the epoch: the conversation then needs a rejoin and never sends there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ping_web.client import keys
from ping_web.client.base import ClientBase
from ping_web.core import codec
from ping_web.core.conversation import Conversation
from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, DeviceId
from ping_web.errors import PingError, RejoinRequired, StateConflict, StorageCorrupted
from ping_web.storage.base import Batch


@dataclass(frozen=True, slots=True)
class OutboxWelcome:
    """A Welcome in the outbox, with the devices it is for (sent once its commit is accepted)."""

    envelope: MessageEnvelope
    devices: list[DeviceId]

    def encode(self) -> bytes:
        return codec.encode({"v": 1, "e": self.envelope.encode(), "r": [d.raw for d in self.devices]})

    @classmethod
    def decode(cls, data: bytes) -> OutboxWelcome:
        with codec.record(data, "OutboxWelcome", keys=frozenset({"v", "e", "r"}), versions=(1,),
                          max_size=2 << 20) as m:  # fmt: skip
            return cls(MessageEnvelope.decode(m["e"]), [DeviceId(raw) for raw in m["r"]])


def outbox_envelope(key: bytes, value: bytes) -> MessageEnvelope:
    """The envelope an outbox entry holds (a Welcome entry holds it inside its record)."""
    try:
        if keys.outbox_kind(key) is MessageKind.WELCOME:
            return OutboxWelcome.decode(value).envelope
        return MessageEnvelope.decode(value)
    except (ValueError, PingError) as exc:
        raise StorageCorrupted(f"outbox entry {key.hex()} is unreadable: {exc}") from None


def pending_outbox_keys(conversation: Conversation, *, with_welcome: bool = False) -> list[bytes]:
    """Outbox keys of the pending commit, which is being settled. An accepted commit's
    Welcome stays until it is sent; a discarded one's goes with it."""
    pending = conversation.state.pending
    if pending is None:
        return []
    kinds = (MessageKind.COMMIT, MessageKind.WELCOME) if with_welcome else (MessageKind.COMMIT,)
    return [keys.outbox_key(conversation.id, pending.seq, kind) for kind in kinds]


class Outbox(ClientBase):
    """What is waiting to be posted, and the fate of own commits."""

    async def outbox(self) -> list[MessageEnvelope]:
        """Envelopes stored but not yet handed to the delivery service."""
        return [outbox_envelope(key, value) for key, value in await self._storage.scan(keys.OUTBOX)]

    async def confirm_commit(self, conversation_id: ConversationId) -> list[IncomingMessage]:
        """Our pending commit was accepted: apply it. Returns messages it released."""
        conversation = await self._prepare(conversation_id)
        self._run(conversation.confirm_commit)
        released = conversation.take_released()
        done = pending_outbox_keys(conversation)
        await self._writer.submit(self._capture([conversation], history=released, outbox_done=done))
        self._notify(released)
        return released

    async def discard_commit(self, conversation_id: ConversationId) -> None:
        """Our pending commit was refused: drop it (then receive the winner)."""
        conversation = await self._prepare(conversation_id)
        done = pending_outbox_keys(conversation, with_welcome=True)
        pending = conversation.state.pending
        self._run(conversation.discard_commit)
        batch = self._capture([conversation], outbox_done=done)
        if pending is not None:  # the request that made it failed, in this same batch
            self._requests.commit_discarded(batch, conversation.id, pending.seq, self._clock())
        await self._writer.submit(batch)

    async def _post(self, envelope: MessageEnvelope) -> bool:
        """Post an envelope that is already durable; take it out of the outbox once posted."""
        delivery = self._require_delivery()
        accepted = await delivery.post(envelope.encode())
        await self._outbox_done(keys.outbox_key_of(envelope))
        return accepted

    async def _outbox_done(self, key: bytes) -> None:
        batch = Batch()
        batch.delete(keys.OUTBOX, key)
        await self._writer.submit(batch)

    async def _settle(self, conversation: Conversation, commit: MessageEnvelope) -> None:
        """Post our commit; merge it if the log took it, else discard it and catch up."""
        delivery = self._require_delivery()
        if await delivery.post(commit.encode()):
            pending = conversation.state.pending
            if pending is not None and pending.seq == commit.seq:
                await self.confirm_commit(conversation.id)
            await self._send_welcome(commit)
            return
        # Refused: either the log already holds this very commit (posted before a crash,
        # its echo then confirms it), or another member's commit won the epoch (pulling it
        # drops ours, ``client.sync``).
        await self._pull()
        pending = conversation.state.pending
        lost = (conversation.id, commit.seq)
        if pending is not None and pending.seq == commit.seq:
            await self.discard_commit(conversation.id)
            await self._pull()
        elif lost not in self._lost_commits:
            await self._send_welcome(commit)
            return
        self._lost_commits.discard(lost)
        if conversation.state.rejoin_required:
            raise RejoinRequired(
                "this conversation was restored from a backup that is no longer current: its first "
                "self-update was refused because the epoch had moved on; it will not send there. "
                "Ask a member to add this device again."
            )
        raise StateConflict("another member's commit took this epoch; ours was discarded, retry")

    async def _send_welcome(self, commit: MessageEnvelope) -> None:
        """Deliver the Welcome of an accepted add commit, then drop it from the outbox."""
        delivery = self._require_delivery()
        key = keys.outbox_key(commit.conversation_id, commit.seq, MessageKind.WELCOME)
        raw = await self._storage.get(keys.OUTBOX, key)
        if raw is None:
            return
        try:
            welcome = OutboxWelcome.decode(raw)
        except PingError as exc:
            raise StorageCorrupted(f"outbox Welcome {key.hex()} is unreadable: {exc}") from None
        await delivery.send_welcome(welcome.devices, welcome.envelope.encode())
        await self._outbox_done(key)

    async def _flush_outbox(self) -> None:
        """Hand over what a crash or a failed post left behind, in seq order."""
        for key, value in await self._storage.scan(keys.OUTBOX):
            envelope = outbox_envelope(key, value)
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
                    await self._outbox_done(key)
