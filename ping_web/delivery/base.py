"""The delivery-service protocol: what a client needs from whatever carries its envelopes.

A delivery service keeps, per conversation, an ordered log that accepts exactly one commit
per epoch; a Welcome mailbox per device; and a directory of one-time KeyPackages. The
client talks to it only through :class:`Delivery`, so the in-memory service, the port to a
service in another worker, and the network relay (:mod:`ping_web.delivery.relay`) are
interchangeable.

A commit travels with everything that depends on it: its Welcome (for the devices it
adds) and its roster change (devices added and removed) go in the same
:meth:`Delivery.commit` call, accepted or refused as a whole. So a Welcome is never left
for a commit the log refused, and a commit the log took never lacks its Welcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from ping_web.core.ids import ConversationId, DeviceId, UserId

EPOCH_WINDOW: Final = 2
"""Application and proposal envelopes are taken for the log's epoch and the two before it
(members keep the past epochs' secrets); older ones are refused."""


@dataclass(frozen=True, slots=True)
class LogPage:
    """Envelopes of one conversation log from a position on, and where to continue.

    A position counts the log entries a client has consumed: ``fetch(id, 0)`` starts at the
    first entry, and ``next_position`` is what to pass next time (for the relay, the
    relay's sequence number of the last entry returned)."""

    envelopes: list[bytes]
    next_position: int


@dataclass(frozen=True, slots=True)
class DeviceLogPage:
    """Entries of a user's device log after a position, as a service serves them (unverified:
    the client checks them, ``ping_web.core.devlog``). ``head_seq`` is the seq of the log's
    last entry at the service, -1 if it has no log for the user; a page may stop before it."""

    entries: list[bytes]
    head_seq: int


@dataclass(frozen=True, slots=True)
class RosterChange:
    """Who a commit adds and removes, by device: what a relay keeps to route the log.

    ``removed_keys`` lists the MLS signature keys of removed members whose device id the
    committer does not know (it knows the devices it added and those it heard from); a
    delivery service that keeps a roster resolves them to its devices. Services without a
    roster ignore the whole change."""

    added: tuple[DeviceId, ...] = ()
    removed: tuple[DeviceId, ...] = ()
    removed_keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Notice:
    """What a delivery service announced: ``kind`` is ``"log"`` (a log has new entries: that of
    ``conversation_id``, or any, when it is ``None``, e.g. after a reconnection) or
    ``"welcome"`` (``device_ids`` set: Welcomes wait for them). A notice only says
    "something is new": clients then pull with ``sync()`` as usual."""

    kind: str
    conversation_id: ConversationId | None = None
    device_ids: tuple[DeviceId, ...] = ()


class DeviceSigner(Protocol):
    """A device's identity as a delivery service sees it, and proof of its signing key.

    :meth:`sign` is the MLS signature key's ``SignWithLabel`` outside MLS (Ed25519 over
    ``b"ping-web/" + label + b"\\x00" + content``); the key never leaves the wasm module.
    The client hands one to its delivery service (:meth:`Delivery.bind`)."""

    @property
    def user_id(self) -> UserId: ...

    @property
    def device_id(self) -> DeviceId: ...

    @property
    def public_key(self) -> bytes: ...

    @property
    def genesis(self) -> bytes | None:
        """The genesis entry of the user's device log when this device made it (the user's
        first device): a relay registers a new user with it. ``None`` for a linked device,
        which the entry that added it registers."""
        ...

    def sign(self, label: str, content: bytes) -> bytes: ...


@runtime_checkable
class Delivery(Protocol):
    """What a client needs from a delivery service. Envelopes cross as encoded bytes."""

    def bind(self, device: DeviceSigner) -> None:
        """The device this service acts for, called by the client when it opens (before
        any other call). Services that authenticate devices (the relay) sign with it;
        others ignore it. Does no I/O."""
        ...

    async def create_group(self, conversation_id: ConversationId) -> None:
        """Register a new conversation, this device its creator and first member. Called
        once the conversation is stored; calling it again is harmless."""
        ...

    async def post(self, envelope: bytes) -> bool:
        """Append an application or proposal envelope to its conversation's log; ``False``
        if the log refused it: its epoch is more than :data:`EPOCH_WINDOW` behind the log's
        (the client then sends the message again in the current epoch). Posting the same
        envelope again is harmless: receivers drop the copy, and the relay keeps it once."""
        ...

    async def commit(
        self, commit: bytes, welcome: bytes | None, roster: RosterChange, *, group_info: bytes | None = None,
        external: bool = False,
    ) -> bool:  # fmt: skip
        """Append a commit, and leave its Welcome in the mailbox of every device in
        ``roster.added``, as one step: ``True`` if the log took it (also when it already
        held this very commit), ``False`` if it holds another commit for that epoch or has
        moved past it (nothing is stored then, the Welcome neither). Raises
        :class:`CommitRefused` for a refusal that no retry fixes. ``group_info`` (the
        GroupInfo of the epoch the commit makes) is kept with the commit, for devices that
        rejoin or join by external commit; ``external``: this is such a commit."""
        ...

    async def user_groups(self) -> list[ConversationId]:
        """Conversations a device of this device's user is a member of, as far as the service
        keeps rosters (a service without them answers none): what a new device of the user
        joins by external commit."""
        ...

    async def group_info(self, conversation_id: ConversationId) -> bytes | None:
        """The GroupInfo kept with the conversation's newest commit that carried one
        (``None``: none yet). Unverified: joining by external commit verifies it."""
        ...

    async def fetch(self, conversation_id: ConversationId, position: int) -> LogPage:
        """The log of ``conversation_id`` from ``position`` on."""
        ...

    async def fetch_welcomes(self, device_id: DeviceId) -> list[bytes]:
        """Welcomes waiting for ``device_id``. A service may return one again until it is
        acknowledged (:meth:`ack_welcomes`); joining twice is harmless."""
        ...

    async def ack_welcomes(self, device_id: DeviceId, welcomes: list[bytes]) -> None:
        """These Welcomes (as :meth:`fetch_welcomes` returned them) are dealt with: joined,
        durably, or refused. They are not returned again."""
        ...

    async def publish_key_packages(self, user_id: UserId, device_id: DeviceId, key_packages: list[bytes]) -> None:
        """Offer one-time KeyPackages of a device."""
        ...

    async def claim_key_package(self, device_id: DeviceId) -> bytes | None:
        """Take one KeyPackage of ``device_id`` (never handed out again), or ``None``."""
        ...

    async def devices_of(self, user_id: UserId) -> list[DeviceId]:
        """Devices of ``user_id`` the service says it has. Never trusted for membership: the
        client adds only the devices of the user's verified device log."""
        ...

    async def device_log(self, user_id: UserId, after: int) -> DeviceLogPage:
        """The entries of ``user_id``'s device log with a seq above ``after`` (-1: from the
        genesis entry on), unverified."""
        ...

    async def append_device_log(self, entry: bytes) -> None:
        """Append an entry this device signed to its user's device log (a genesis starts it).
        The same entry again is harmless. :class:`~ping_web.errors.StateConflict` if another
        entry took that seq first (read the log again and retry);
        :class:`~ping_web.errors.DeviceLogInvalid` if the service refuses it as invalid."""
        ...

    async def open_link(self, link_id: bytes) -> None:
        """Open a link slot for a new device of this device's user (``ping_web.core.linking``)."""
        ...

    async def send_link_request(self, link_id: bytes, request: bytes) -> None:
        """A new device (not registered anywhere yet) leaves its sealed request in a slot."""
        ...

    async def link_request(self, link_id: bytes) -> bytes | None:
        """The request waiting in a slot this device's user opened, or ``None`` yet."""
        ...

    async def send_link_answer(self, link_id: bytes, answer: bytes) -> None:
        """Answer the request in a slot this device's user opened."""
        ...

    async def link_answer(self, link_id: bytes) -> bytes | None:
        """The answer to the request this (new) device left, or ``None`` yet."""
        ...
