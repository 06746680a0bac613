"""The outbox, and settling own commits with the delivery service.

An envelope is stored in the outbox in the same batch as the state that made it, posted
once that batch is durable, and taken out of the outbox in a batch of its own once posted;
so a crash in between leaves it there and :meth:`Outbox._flush_outbox` (run by ``sync``)
posts it again (receivers drop the duplicate by sender and seq).

A sent message the delivery service could not take (unreachable) stays in the outbox and
the send still returns; until the outbox is empty again, each send posts the whole outbox
in seq order, so a sender's messages reach the log in order. A message the log refuses
because its epoch is too old (it waited offline while the group moved on) is never
dropped: the client catches up and sends its plaintext again in the current epoch, and the
new message replaces the old one in history and outbox in one batch.

An own commit stays pending until the delivery service decides. It is handed over with its
Welcome (for the devices it adds) and its roster change in one call, taken or refused as a
whole: accepted -> merged; refused because another member's commit took the epoch ->
discarded, the winner applied, and :class:`~ping_web.errors.StateConflict` raised so the
application retries the change on the new epoch (the client does not retry it itself);
refused for good (:class:`~ping_web.delivery.CommitRefused`) -> discarded and raised. A
refused self-update that a restored conversation had to make first means another copy of
this device holds the epoch: the conversation then needs a rejoin and never sends there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ping_web.client import keys
from ping_web.client.base import ClientBase
from ping_web.core import codec
from ping_web.core.conversation import Conversation
from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, DeviceId
from ping_web.delivery.base import RosterChange
from ping_web.errors import (
    CommitRefused,
    DeliveryUnavailable,
    PingError,
    RejoinRequired,
    StateConflict,
    StorageCorrupted,
)
from ping_web.storage.base import Batch

MAX_RESENDS: Final = 4
"""How often one message is sent again in a newer epoch within one post (the group would
have to move on by three epochs between each catch-up and post to use them all)."""


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
        done = pending_outbox_keys(conversation, with_welcome=True)  # the Welcome went with it
        self._run(conversation.confirm_commit)
        released = conversation.take_released()
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
        if pending is not None:  # a settle of it still running learns its fate (``_settle``)
            self._lost_commits.add((conversation.id, pending.seq))

    async def _post(self, envelope: MessageEnvelope) -> None:
        """Post an envelope that is already durable; take it out of the outbox once posted.

        An application message the log refuses (its epoch is too old) is sent again in the
        current epoch (:meth:`_send_again`), never dropped.
        """
        delivery = self._require_delivery()
        for _ in range(MAX_RESENDS):
            if await delivery.post(envelope.encode()) or envelope.kind is not MessageKind.APPLICATION:
                await self._outbox_done(keys.outbox_key_of(envelope))
                return
            envelope = await self._send_again(envelope)
        raise StateConflict(
            f"the delivery service refused a message {MAX_RESENDS} times as being of an old epoch; "
            "it stays in the outbox and is sent again by the next sync()"
        )

    async def _send_again(self, refused: MessageEnvelope) -> MessageEnvelope:
        """Catch up, then encrypt a refused message's plaintext again in the current epoch;
        the new envelope replaces the old one in history and outbox in one batch."""
        await self._pull()
        conversation = await self._get(refused.conversation_id)
        old_history = keys.history_key(refused)
        stored = await self._storage.get(keys.HISTORY, old_history)
        if stored is None:
            raise StorageCorrupted(f"the sent message {refused.seq} of {refused.conversation_id.hex} is not in history")
        try:
            plaintext = IncomingMessage.decode(stored).plaintext
        except PingError as exc:
            raise StorageCorrupted(f"history entry {old_history.hex()} is unreadable: {exc}") from None
        now = self._clock()
        envelope = self._run(lambda: conversation.send_application(plaintext, now))
        own = IncomingMessage.from_envelope(envelope, plaintext, self.user_id)
        batch = self._capture([conversation], history=[own], outbox=[envelope])
        batch.delete(keys.HISTORY, old_history)
        batch.delete(keys.OUTBOX, keys.outbox_key_of(refused))
        await self._writer.submit(batch)
        return envelope

    async def _hand_over(self, envelope: MessageEnvelope) -> None:
        """Post a message just sent. If earlier ones still wait in the outbox, post them all,
        oldest first, so the log gets a sender's messages in order. If the delivery service
        cannot be reached, the outbox keeps them for the next ``sync()``."""
        try:
            if self._outbox_backlog:
                await self._flush_outbox()
            else:
                await self._post(envelope)
        except DeliveryUnavailable:
            self._outbox_backlog = True

    async def _outbox_done(self, key: bytes) -> None:
        batch = Batch()
        batch.delete(keys.OUTBOX, key)
        await self._writer.submit(batch)

    async def _settle(self, conversation: Conversation, commit: MessageEnvelope) -> None:
        """Hand our commit, its Welcome and its roster change to the delivery service in one
        call; merge the commit if the log took it, else discard it and catch up.

        A refused commit is not retried here: :class:`~ping_web.errors.StateConflict` tells
        the caller, who may make the change again on the new epoch."""
        delivery = self._require_delivery()
        welcome, roster = await self._commit_parts(conversation, commit)
        pending = conversation.state.pending
        lost = (conversation.id, commit.seq)
        if pending is None or pending.seq != commit.seq:
            # Settled meanwhile by a concurrent sync (``_flush_outbox``): merged, or lost.
            if lost not in self._lost_commits:
                return
            self._lost_commits.discard(lost)
            raise StateConflict("another member's commit took this epoch; ours was discarded, retry")
        try:
            accepted = await delivery.commit(
                commit.encode(), welcome, roster, group_info=conversation.staged_group_info,
                external=pending.kind == "rejoin",
            )  # fmt: skip
        except CommitRefused as refused:
            pending = conversation.state.pending
            if pending is not None and pending.seq == commit.seq:
                await self.discard_commit(conversation.id)
                self._lost_commits.discard(lost)
            if conversation.state.rejoin_required:  # e.g. another copy of this device used that seq
                raise RejoinRequired(f"{refused}; this copy needs a rejoin: call rejoin()") from None
            raise
        if accepted:
            pending = conversation.state.pending
            if pending is not None and pending.seq == commit.seq:
                await self.confirm_commit(conversation.id)
            return
        # Refused: another member's commit won the epoch (pulling it drops ours,
        # ``client.sync``), or the log already holds this very commit (a service that does
        # not recognise a repeated commit: its echo then confirms it).
        await self._pull()
        pending = conversation.state.pending
        if pending is not None and pending.seq == commit.seq:
            await self.discard_commit(conversation.id)
            await self._pull()
        elif lost not in self._lost_commits:
            return
        self._lost_commits.discard(lost)
        if conversation.state.rejoin_required:
            raise RejoinRequired(
                "this conversation was restored from a backup that is no longer current: its first "
                "self-update was refused because the epoch had moved on; it will not send there. "
                "Call rejoin() to join it again by external commit."
            )
        raise StateConflict("another member's commit took this epoch; ours was discarded, retry")

    async def _commit_parts(
        self, conversation: Conversation, commit: MessageEnvelope
    ) -> tuple[bytes | None, RosterChange]:
        """The Welcome (from the outbox) and roster change that go with our pending commit.

        Removed leaves are named by device where this device knows it, else by the
        member's signature key (the delivery service resolves those)."""
        welcome = await self._outbox_welcome(commit)
        pending = conversation.state.pending
        if pending is None or pending.seq != commit.seq:
            return None, RosterChange()  # settled meanwhile: nothing to hand over
        devices_at = {leaf: device for device, leaf in conversation.device_leaves.items()}
        keys_at = {member.leaf_index: member.signature_key for member in conversation.members()}
        removed = tuple(devices_at[leaf] for leaf in pending.removed_leaves if leaf in devices_at)
        removed_keys = tuple(
            keys_at[leaf] for leaf in pending.removed_leaves if leaf not in devices_at and leaf in keys_at
        )
        added = tuple(device for device, _ in pending.added)
        welcome_bytes = None if welcome is None or not added else welcome.envelope.encode()
        return welcome_bytes, RosterChange(added, removed, removed_keys)

    async def _outbox_welcome(self, commit: MessageEnvelope) -> OutboxWelcome | None:
        key = keys.outbox_key(commit.conversation_id, commit.seq, MessageKind.WELCOME)
        raw = await self._storage.get(keys.OUTBOX, key)
        if raw is None:
            return None
        try:
            return OutboxWelcome.decode(raw)
        except PingError as exc:
            raise StorageCorrupted(f"outbox Welcome {key.hex()} is unreadable: {exc}") from None

    async def _send_welcome(self, commit: MessageEnvelope) -> None:
        """A Welcome left in the outbox after its commit was merged: written by a version that
        sent Welcomes apart from their commits. Deliver it where the service still takes a
        Welcome alone, then drop it."""
        welcome = await self._outbox_welcome(commit)
        if welcome is None:
            return
        send_welcome = getattr(self._require_delivery(), "send_welcome", None)
        if send_welcome is not None:
            await send_welcome(welcome.devices, welcome.envelope.encode())
        await self._outbox_done(keys.outbox_key(commit.conversation_id, commit.seq, MessageKind.WELCOME))

    async def _flush_outbox(self) -> None:
        """Hand over what a crash or a failed post left behind, in seq order."""
        self._outbox_backlog = True  # until every entry is handed over
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
        self._outbox_backlog = False
