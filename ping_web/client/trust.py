"""Who is who: users' verified devices, safety numbers, linking a new device, members checked.

The delivery service serves each user's device log; this device verifies it and pins it
(``client.identity``). Every device this client adds is an active device of its user's
verified log; a Welcome is joined only if every member is; a conversation in which another
member added a device that is not gets no message from this device (``UnverifiedDevice``)
and an ``UNVERIFIED_MEMBER`` event, until that member is removed. Linking: the user's
existing device shows a code (:meth:`Trust.start_link`), the new device types it in
(:meth:`Trust.request_link`), the existing device approves (:meth:`Trust.approve_link`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ping_web.client import keys
from ping_web.client.base import ClientBase
from ping_web.client.device import device_group_id
from ping_web.client.identity import Contact, fetch_log, user_text
from ping_web.core import devlog
from ping_web.core.devlog import DeviceLog, DeviceStatus, LogDevice, LogEntry, LogOp
from ping_web.core.envelope import MessageEnvelope
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.linking import MAX_LINK_KEY_PACKAGES, LinkAnswer, LinkCode, LinkRequest
from ping_web.core.records import AddOutcome, MemberInfo
from ping_web.core.safety import SafetyNumber
from ping_web.errors import (
    DeliveryUnavailable,
    InvalidInput,
    LinkFailed,
    StateConflict,
)
from ping_web.storage.base import Batch

LINK_POLL_S = 0.5
"""How often a device waiting for the other side of a link asks the delivery service."""


class Trust(ClientBase):
    """Device logs, safety numbers, linking, and the checks members pass."""

    # -- users and their devices -------------------------------------------------------------

    async def contact(self, user_id: UserId | bytes, *, refresh: bool = True) -> Contact | None:
        """What this device knows of ``user_id``'s devices (read on from the delivery service
        first when ``refresh``); ``None`` if no log of theirs is known."""
        await self._ready()
        return await self._identities.contact(_user(user_id), refresh=refresh and self._delivery is not None)

    async def devices_of(self, user_id: UserId | bytes) -> list[LogDevice]:
        """The active devices of ``user_id``'s verified device log (empty if none is known)."""
        contact = await self.contact(user_id)
        return [] if contact is None else contact.devices

    async def safety_number(self, user_id: UserId | bytes) -> SafetyNumber:
        """The safety number of this device's user and ``user_id``: the same digits on both
        sides, and a QR payload the other side can scan (:meth:`mark_verified`)."""
        own, theirs = await self.contact(self.user_id), await self.contact(user_id)
        if own is None or theirs is None:
            raise StateConflict("both users need a device log for a safety number")
        return SafetyNumber.of((own.user_id, own.log.root), (theirs.user_id, theirs.log.root))

    async def mark_verified(self, user_id: UserId | bytes, *, scanned: bytes | None = None) -> Contact:
        """Mark ``user_id`` verified: the people compared the safety number (or this device
        scanned the other side's QR payload: ``scanned``, checked here)."""
        user = _user(user_id)
        if scanned is not None and not (await self.safety_number(user)).matches(scanned):
            raise InvalidInput("the scanned code is not this safety number: the identities differ; not verified")
        await self._ready()
        return await self._identities.mark_verified(user)

    async def unmark_verified(self, user_id: UserId | bytes) -> Contact:
        await self._ready()
        return await self._identities.mark_verified(_user(user_id), verified=False)

    async def accept_identity(self, user_id: UserId | bytes) -> Contact:
        """Pin the device log the delivery service serves for ``user_id`` now, after an
        ``IDENTITY_CHANGED`` the people checked (compare the new safety number)."""
        await self._ready()
        return await self._identities.accept(_user(user_id))

    async def device_log(self) -> Contact:
        """This device's own user: its verified device log."""
        own = await self.contact(self.user_id)
        if own is None:
            raise StateConflict("this device is not linked to its user's devices yet")
        return own

    async def add_user(self, conversation_id: ConversationId, user_id: UserId | bytes) -> AddOutcome:
        """Add every active device of ``user_id``'s verified device log that is not in the
        conversation yet, in one commit, each with a KeyPackage it published. Devices without
        a KeyPackage left are skipped (they publish more when they next sync)."""
        user = _user(user_id)
        delivery = self._require_delivery()
        conversation = await self._prepare(conversation_id)
        present = {member.signature_key for member in conversation.members()}
        devices = [d for d in await self.devices_of(user) if d.key not in present]
        if not devices:
            known = "is already in this conversation" if await self.contact(user, refresh=False) else "is not known"
            raise InvalidInput(f"{user_text(user)!r} {known}: no device of theirs to add")
        entries: list[tuple[DeviceId, bytes]] = []
        for device in devices:
            key_package = await delivery.claim_key_package(device.device_id)
            if key_package is not None:
                entries.append((device.device_id, key_package))
        if not entries:
            raise StateConflict(f"no device of {user_text(user)!r} has a KeyPackage left; retry once they synced")
        return await self.add_members(conversation_id, entries)

    async def unverified_members(self, conversation_id: ConversationId) -> list[tuple[MemberInfo, str]]:
        """Members of the conversation that are not active devices of their users' verified
        logs, with why (reading unknown users' logs first)."""
        conversation = await self._prepare(conversation_id)
        return await self._vetting.problems(conversation)

    # -- linking ------------------------------------------------------------------------------

    async def start_link(self) -> LinkCode:
        """A code for a new device of this user (show it; the new device types it in), and
        its slot at the delivery service. Then :meth:`wait_link_request`."""
        await self._require_own_log()
        code = LinkCode.new()
        await self._require_delivery().open_link(code.link_id)
        return code

    async def wait_link_request(self, code: LinkCode, *, timeout_s: float = 300.0) -> LinkRequest:
        """The new device's request, once it typed ``code`` in: checked to be made with the
        code, for this user, by the key it names. Show its label, then :meth:`approve_link`."""
        delivery = self._require_delivery()
        sealed = await _poll(lambda: delivery.link_request(code.link_id), timeout_s, "the new device's request")
        request = LinkRequest.open(sealed, code)
        if request.user_id != self.user_id:
            raise LinkFailed("the request is for another user")
        content = devlog.consent_content(request.user_id, request.device_id, request.device_key)
        if not self._verifier().verify(request.device_key, devlog.LABEL_CONSENT, content, request.consent):
            raise LinkFailed("the new device's consent signature does not verify")
        return request

    async def approve_link(self, code: LinkCode, request: LinkRequest) -> LogDevice:
        """Add the requesting device to this user's device log (signed by this device), tell
        it the log's root through the slot, and add it to the device group and to as many
        conversations as its KeyPackages reach."""
        delivery = self._require_delivery()
        own = await self._require_own_log()
        entry = self._sign_entry(own.log, LogOp.ADD, request.device_id, request.device_key, request.label,
                                 request.consent)  # fmt: skip
        own = await self._append_own(entry)
        device = own.log.device_by_key(request.device_key)
        assert device is not None
        await delivery.send_link_answer(code.link_id, LinkAnswer(own.log.root, own.log.seq, own.log.head).seal(code))
        await self._add_linked(device, list(request.key_packages))
        return device

    async def request_link(self, code: LinkCode | str, *, label: str = "", timeout_s: float = 300.0) -> Contact:
        """Link this (new, ``linked=True``) device to its user with the code another of the
        user's devices shows; returns once that device approved and the log verified.
        ``label`` names this device to people ("Laptop")."""
        code = code if isinstance(code, LinkCode) else LinkCode.parse(code)
        delivery = self._require_delivery()
        await self._ready()
        record = self._record
        consent = self._engine.identity.sign_with_label(
            devlog.LABEL_CONSENT, devlog.consent_content(record.user_id, record.device_id, record.public_key)
        )
        key_packages = tuple(self._engine.identity.key_package() for _ in range(MAX_LINK_KEY_PACKAGES))
        await self._writer.submit(self._capture([]))  # their private keys, before they leave
        request = LinkRequest(record.user_id, record.device_id, record.public_key, label, consent, key_packages)
        await delivery.send_link_request(code.link_id, request.seal(code))
        answer = LinkAnswer.open(
            await _poll(lambda: delivery.link_answer(code.link_id), timeout_s, "the other device's approval"), code
        )
        entries, _ = await fetch_log(delivery, record.user_id, -1)
        log = DeviceLog.replay(entries[: answer.seq + 1], self._verifier())
        added = log.device_by_key(record.public_key)
        if log.root != answer.root or log.seq != answer.seq or log.head != answer.entry_hash or added is None:
            raise LinkFailed("the device log the delivery service serves is not the one the other device approved")
        own = Contact(log.extend(entries[answer.seq + 1 :], self._verifier())[0])
        batch = Batch()
        batch.put(keys.DEVICE, keys.device_log_key(record.user_id), own.encode())
        batch.delete(keys.DEVICE, keys.LINK_PENDING)
        await self._writer.submit(batch)
        self._identities.remember(own)
        reconnect = getattr(delivery, "reconnect_now", None)
        if callable(reconnect):
            reconnect()  # a relay refused this device until now
        return own

    # -- revoking and linking by hand ------------------------------------------------------------

    async def revoke_device(self, device_id: DeviceId) -> list[MessageEnvelope]:
        """Revoke ``device_id``: out of this user's device log if it is one of this user's
        devices (the relay then drops its logins and KeyPackages), and its leaf removed from
        every conversation where this device knows it. Returns one commit per conversation."""
        await self._ready()
        if device_id == self.device_id:
            raise InvalidInput("a device cannot revoke itself; revoke it from another device")
        key = await self._revoke_in_log(device_id)
        commits = []
        for conversation_id in list(self._metas):
            conversation = await self._get(conversation_id)
            leaf = conversation.leaf_index_of(device_id)
            if leaf is None and key is not None:  # its leaf, by the key the log names
                leaf = next((m.leaf_index for m in conversation.members() if m.signature_key == key), None)
            if leaf is not None and not conversation.state.removed:
                commits.append(await self.remove_members(conversation_id, [leaf]))
        return commits

    async def link_device(self, device_id: DeviceId) -> list[AddOutcome]:
        """Add a device of this user's verified device log to the device group and to each
        conversation it is not in yet, each with a KeyPackage it published."""
        delivery = self._require_delivery()
        own = await self._require_own_log()
        device = own.log.device_by_id(device_id)
        if device is None or not device.active:
            raise InvalidInput("that device is not in this user's device list: link it with a code first")
        outcomes = []
        group = device_group_id(self.user_id)
        for meta in sorted(self._metas.values(), key=lambda meta: meta.id != group):
            conversation = await self._get(meta.id)
            if conversation.state.removed or device.key in {m.signature_key for m in conversation.members()}:
                continue
            key_package = await delivery.claim_key_package(device_id)
            if key_package is None:
                raise StateConflict("the new device ran out of KeyPackages; publish more and retry")
            outcomes.append(await self.add_members(meta.id, [(device_id, key_package)]))
        return outcomes

    async def _revoke_in_log(self, device_id: DeviceId) -> bytes | None:
        """Revoke ``device_id`` in this user's device log if it is there; its key, if it is."""
        own = await self._identities.contact(self.user_id, refresh=self._delivery is not None)
        device = None if own is None else own.log.device_by_id(device_id)
        if own is None or device is None:
            return None
        if device.active:
            entry = self._sign_entry(own.log, LogOp.REVOKE, device.device_id, device.key, device.label, None)
            await self._append_own(entry)
        return device.key

    # -- own log --------------------------------------------------------------------------------

    async def _require_own_log(self) -> Contact:
        await self._ready()
        own = await self._identities.contact(self.user_id, refresh=self._delivery is not None)
        if own is None:
            raise StateConflict("this device is not in its user's device log: link it first")
        if own.log.status(self._record.public_key) is not DeviceStatus.ACTIVE:
            raise StateConflict("this device was revoked from its user's device log")
        return own

    def _sign_entry(
        self, log: DeviceLog, op: LogOp, device_id: DeviceId, key: bytes, label: str, consent: bytes | None
    ) -> bytes:
        unsigned = devlog.unsigned_entry(
            op, self.user_id, log.seq + 1, log.head, self._clock(), device_id, key, self._record.public_key, label
        )
        signature = self._engine.identity.sign_with_label(devlog.LABEL_ENTRY, unsigned.tbs())
        entry = devlog.signed(unsigned, signature, consent).encode()
        log.extend([entry], self._verifier())  # the rules, before anyone else sees it
        return entry

    async def _append_own(self, entry: bytes) -> Contact:
        """Append an entry this device signed to its user's log, there and here."""
        delivery = self._require_delivery()
        await delivery.append_device_log(entry)
        own = await self._identities.refresh(self.user_id)
        if own is None or LogEntry.decode(entry).hash not in {LogEntry.decode(e).hash for e in own.log.entries}:
            raise StateConflict("the delivery service did not keep the device log entry")
        return own

    async def _add_linked(self, device: LogDevice, key_packages: list[bytes]) -> None:
        """Add a device just linked to the device group, then to each conversation, while
        its KeyPackages last (device group first)."""
        group = device_group_id(self.user_id)
        ordered = sorted(self._metas.values(), key=lambda meta: meta.id != group)
        for meta in ordered:
            if not key_packages:
                return
            conversation = await self._get(meta.id)
            if conversation.state.removed or device.key in {m.signature_key for m in conversation.members()}:
                continue
            try:
                await self.add_members(meta.id, [(device.device_id, key_packages.pop(0))])
            except StateConflict:
                continue  # the epoch moved on: the new device rejoins it later


def _user(user_id: UserId | bytes) -> UserId:
    return user_id if isinstance(user_id, UserId) else UserId.from_bytes(user_id)


async def _poll(get: Callable[[], Awaitable[bytes | None]], timeout_s: float, what: str) -> bytes:
    """Ask ``get()`` until it returns bytes, every :data:`LINK_POLL_S`, for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = await get()
        except DeliveryUnavailable:
            value = None
        if value is not None:
            return bytes(value)
        if time.monotonic() >= deadline:
            raise LinkFailed(f"no answer from {what} within {timeout_s:g} s: make a new code and try again")
        await asyncio.sleep(LINK_POLL_S)
