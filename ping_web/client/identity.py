"""Which keys are a user's devices: device logs fetched, verified, pinned and cached.

:class:`Identities` is this device's directory of users (its own user included). For each
user it keeps the device log it verified (:mod:`ping_web.core.devlog`), pinned: a later log
from the delivery service must extend it, or it is refused and kept as a *conflict* the
application sees (``IDENTITY_CHANGED``) until it accepts the new identity. Verified logs are
stored (``client.keys.device_log_key``), so a log is verified once, and read again only
from where it stopped. It does no MLS work: the client asks it about members and KeyPackages.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Final, Self

from ping_web.client import keys
from ping_web.core import codec
from ping_web.core.devlog import (
    MAX_ENTRY_SIZE,
    MAX_LOG_ENTRIES,
    DeviceLog,
    DeviceStatus,
    LogChange,
    LogDevice,
    SignatureVerifier,
)
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.delivery.base import Delivery
from ping_web.errors import (
    DeviceLogInvalid,
    IdentityChanged,
    IdentityChangeKind,
    PingError,
    StateConflict,
    StorageCorrupted,
    UnverifiedDevice,
)
from ping_web.storage.base import Batch, Storage

_CONTACT_KEYS: Final = frozenset({"v", "e", "k", "c"})
_CONTACT_MAX_SIZE: Final = MAX_LOG_ENTRIES * (MAX_ENTRY_SIZE + 4) + 64


@dataclass(frozen=True, slots=True)
class Contact:
    """What this device knows of a user's devices: the verified, pinned log and its marks."""

    VERSION: ClassVar[int] = 1

    log: DeviceLog
    verified_seq: int | None = None
    """The log's seq when the people compared safety numbers (``None``: not compared)."""
    conflict: IdentityChangeKind | None = None
    """Set while the delivery service serves a log that does not extend this one."""

    @property
    def user_id(self) -> UserId:
        return self.log.user_id

    @property
    def verified(self) -> bool:
        """Safety numbers were compared, and the identity has not changed since."""
        return self.verified_seq is not None and self.conflict is None

    @property
    def devices(self) -> list[LogDevice]:
        """The user's active devices."""
        return self.log.active()

    def encode(self) -> bytes:
        return codec.encode({
            "v": self.VERSION, "e": list(self.log.entries), "k": self.verified_seq,
            "c": None if self.conflict is None else self.conflict.value,
        })  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Read a stored contact; its entries were verified when stored, so signatures are
        not checked again (the chain and the rules are)."""
        with codec.record(data, "Contact", keys=_CONTACT_KEYS, versions=(1,), max_size=_CONTACT_MAX_SIZE) as m:
            entries = [codec.byte_string(e, "entry", hi=MAX_ENTRY_SIZE) for e in codec.items(m["e"], "entries")]
            verified = None if m["k"] is None else codec.uint(m["k"], "verified_seq")
            conflict = None if m["c"] is None else IdentityChangeKind(codec.text(m["c"], "conflict", hi=16))
            return cls(DeviceLog.replay(entries, None), verified, conflict)


class IdentityEventKind(Enum):
    """What an :class:`IdentityEvent` reports."""

    DEVICES_CHANGED = "devices_changed"
    """A user linked or revoked a device (``changes``); ``verified`` if people had compared
    safety numbers with that user: worth a warning line."""
    IDENTITY_CHANGED = "identity_changed"
    """The delivery service serves a log of the user that does not extend the pinned one
    (``conflict``): refused; ``accept_identity`` once people compared safety numbers."""
    DEVICE_JOINED = "device_joined"
    """A new device of a member's user joined a conversation by itself (external commit):
    ``conversation_id`` and ``key`` name it ("ann added a device")."""
    UNVERIFIED_MEMBER = "unverified_member"
    """A conversation has a member (``key``) that is not an active device of its user's
    verified log (``reason``): this device does not send there until it is removed."""


@dataclass(frozen=True, slots=True)
class IdentityEvent:
    """Something about who is who changed; the state itself stays queryable on the client."""

    kind: IdentityEventKind
    user_id: UserId
    changes: tuple[LogChange, ...] = ()
    verified: bool = False
    conflict: IdentityChangeKind | None = None
    conversation_id: ConversationId | None = None
    key: bytes | None = None
    reason: str = ""


def describe_key(key: bytes) -> str:
    """A short, stable way to name a device key to people."""
    return key[:4].hex()


def user_text(user_id: UserId) -> str:
    try:
        return user_id.raw.decode("utf-8")
    except UnicodeDecodeError:
        return user_id.hex


class Identities:
    """Users' verified device logs, fetched from the delivery service and pinned in storage."""

    def __init__(
        self,
        storage: Storage,
        submit: Callable[[Batch], Awaitable[None]],
        delivery: Delivery | None,
        verifier: Callable[[], SignatureVerifier],
        emit: Callable[[IdentityEvent], None],
    ) -> None:
        self._storage = storage
        self._submit = submit
        self._delivery = delivery
        self._verifier = verifier
        self._emit = emit
        self._contacts: dict[UserId, Contact | None] = {}
        self._locks: dict[UserId, asyncio.Lock] = {}
        self.revision = 0
        """Grows whenever a stored contact changes (callers cache checks against it)."""

    def forget(self) -> None:
        """Drop the memory (after a failed write): contacts are read from storage again."""
        self._contacts.clear()
        self.revision += 1

    # -- reading ---------------------------------------------------------------------------

    def cached(self, user_id: UserId) -> Contact | None:
        """The contact if it is in memory (no I/O)."""
        return self._contacts.get(user_id)

    async def stored(self, user_id: UserId) -> Contact | None:
        """The pinned contact, from memory or storage; never from the network."""
        if user_id in self._contacts:
            return self._contacts[user_id]
        raw = await self._storage.get(keys.DEVICE, keys.device_log_key(user_id))
        contact = None
        if raw is not None:
            try:
                contact = Contact.decode(raw)
            except PingError as exc:
                raise StorageCorrupted(
                    f"the stored device log of {user_text(user_id)!r} is unreadable: {exc}"
                ) from None
        self._contacts[user_id] = contact
        return contact

    async def contact(self, user_id: UserId, *, refresh: bool = True) -> Contact | None:
        """The contact, read on from the delivery service first when ``refresh`` and one is
        bound. ``None`` if no log of the user is known anywhere."""
        if refresh and self._delivery is not None:
            return await self.refresh(user_id)
        return await self.stored(user_id)

    # -- changing --------------------------------------------------------------------------

    def remember(self, contact: Contact) -> None:
        """Keep a contact the caller stored itself (in a batch of its own)."""
        self._contacts[contact.user_id] = contact
        self.revision += 1

    async def pin(self, contact: Contact) -> None:
        """Store ``contact`` as this device's pin of its user."""
        batch = Batch()
        batch.put(keys.DEVICE, keys.device_log_key(contact.user_id), contact.encode())
        await self._submit(batch)
        self._contacts[contact.user_id] = contact
        self.revision += 1

    async def refresh(self, user_id: UserId) -> Contact | None:
        """Read the user's log on from the pinned head (all of it the first time), verify it,
        pin what extends the pin. :class:`IdentityChanged` if the service's log does not
        extend it (recorded, and reported once as an event); :class:`DeviceLogInvalid` if an
        entry does not verify (nothing changes)."""
        delivery = self._require_delivery()
        async with self._lock(user_id):
            current = await self.stored(user_id)
            after = -1 if current is None else current.log.seq
            entries, head = await self._fetch(delivery, user_id, after)
            if current is None:
                if head < 0:
                    return None
                contact = Contact(DeviceLog.replay(entries, self._verifier()))
                if contact.user_id != user_id:
                    raise DeviceLogInvalid(f"the delivery service sent another user's log for {user_text(user_id)!r}")
                await self.pin(contact)
                return contact
            try:
                log, changes = current.log.accept(entries, head, self._verifier())
            except IdentityChanged as exc:
                if current.conflict is not exc.kind:
                    await self.pin(dataclasses.replace(current, conflict=exc.kind))
                    self._emit(IdentityEvent(IdentityEventKind.IDENTITY_CHANGED, user_id, conflict=exc.kind,
                                             verified=current.verified_seq is not None))  # fmt: skip
                raise
            if not changes and current.conflict is None:
                return current
            contact = dataclasses.replace(current, log=log, conflict=None)
            await self.pin(contact)
            if changes:
                self._emit(IdentityEvent(IdentityEventKind.DEVICES_CHANGED, user_id, tuple(changes),
                                         verified=current.verified))  # fmt: skip
            return contact

    async def accept(self, user_id: UserId) -> Contact:
        """Pin the log the delivery service serves now, whatever was pinned (a new identity
        the people checked); the verified mark is cleared."""
        delivery = self._require_delivery()
        async with self._lock(user_id):
            entries, head = await self._fetch(delivery, user_id, -1)
            if head < 0:
                raise StateConflict(f"the delivery service has no device log of {user_text(user_id)!r}")
            contact = Contact(DeviceLog.replay(entries, self._verifier()))
            if contact.user_id != user_id:
                raise DeviceLogInvalid(f"the delivery service sent another user's log for {user_text(user_id)!r}")
            await self.pin(contact)
            return contact

    async def mark_verified(self, user_id: UserId, verified: bool = True) -> Contact:
        contact = await self.stored(user_id)
        if contact is None:
            raise StateConflict(f"no device log of {user_text(user_id)!r} is known yet")
        if contact.conflict is not None and verified:
            raise IdentityChanged(
                f"{user_text(user_id)!r}'s identity changed ({contact.conflict.value}): accept it first",
                user_id, contact.conflict,
            )  # fmt: skip
        marked = dataclasses.replace(contact, verified_seq=contact.log.seq if verified else None)
        await self.pin(marked)
        return marked

    # -- checks ----------------------------------------------------------------------------

    def status(self, user_id: UserId, key: bytes) -> tuple[DeviceStatus, str]:
        """Where ``key`` stands in the cached log of ``user_id``, and why, in words."""
        contact = self._contacts.get(user_id)
        if contact is None:
            return DeviceStatus.UNKNOWN, f"no device list of {user_text(user_id)!r} is known"
        status = contact.log.status(key)
        if status is DeviceStatus.ACTIVE:
            return status, ""
        if status is DeviceStatus.REVOKED:
            return status, f"it was revoked from {user_text(user_id)!r}'s device list"
        return status, f"it is not in {user_text(user_id)!r}'s device list"

    async def require(self, user_id: UserId, key: bytes, device_id: DeviceId | None = None) -> LogDevice:
        """The active device of ``user_id`` with ``key`` (and ``device_id``, if given), reading
        the user's log on first when the key is not known yet; else :class:`UnverifiedDevice`."""
        contact = await self.stored(user_id)
        if (contact is None or contact.log.status(key) is DeviceStatus.UNKNOWN) and self._delivery is not None:
            contact = await self.refresh(user_id)
        if contact is not None and contact.conflict is not None:
            raise IdentityChanged(
                f"{user_text(user_id)!r}'s identity changed ({contact.conflict.value}); compare safety numbers, "
                "then accept it, before adding their devices",
                user_id, contact.conflict,
            )  # fmt: skip
        status, reason = self.status(user_id, key)
        device = None if contact is None else contact.log.device_by_key(key)
        if status is not DeviceStatus.ACTIVE or device is None:
            raise UnverifiedDevice(f"device {describe_key(key)} of {user_text(user_id)!r}: {reason}; refused",
                                   user_id, key, reason)  # fmt: skip
        if device_id is not None and device.device_id != device_id:
            reason = f"its key belongs to device {device.device_id.hex[:8]}, not {device_id.hex[:8]}"
            raise UnverifiedDevice(f"device {describe_key(key)} of {user_text(user_id)!r}: {reason}; refused",
                                   user_id, key, reason)  # fmt: skip
        return device

    # -- internals -------------------------------------------------------------------------

    def _require_delivery(self) -> Delivery:
        if self._delivery is None:
            raise StateConflict("no delivery service is bound: device logs come from one")
        return self._delivery

    def _lock(self, user_id: UserId) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    @staticmethod
    async def _fetch(delivery: Delivery, user_id: UserId, after: int) -> tuple[list[bytes], int]:
        return await fetch_log(delivery, user_id, after)


async def fetch_log(delivery: Delivery, user_id: UserId, after: int) -> tuple[list[bytes], int]:
    """Every entry of ``user_id``'s log after ``after`` the service has, page by page, and
    the seq of its head (unverified)."""
    entries: list[bytes] = []
    head = -1
    position = after
    while True:
        page = await delivery.device_log(user_id, position)
        head = page.head_seq
        entries.extend(page.entries)
        if len(entries) > MAX_LOG_ENTRIES:
            raise DeviceLogInvalid(f"the device log of {user_text(user_id)!r} is longer than {MAX_LOG_ENTRIES}")
        position = after + len(entries)
        if not page.entries or position >= head:
            return entries, head


def contact_summary(contact: Contact) -> dict[str, Any]:
    """A contact as plain data (for UIs and workers)."""
    return {
        "user_id": contact.user_id.raw,
        "root": contact.log.root,
        "seq": contact.log.seq,
        "verified": contact.verified,
        "conflict": None if contact.conflict is None else contact.conflict.value,
        "devices": [
            {"device_id": d.device_id.raw, "key": d.key, "label": d.label, "added_ms": d.added_ms}
            for d in contact.devices
        ],
    }
