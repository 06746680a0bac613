"""The delivery-service protocol: what a client needs from whatever carries its envelopes.

A delivery service keeps, per conversation, an ordered log that accepts exactly one commit
per epoch; a Welcome mailbox per device; and a directory of one-time KeyPackages. The
client talks to it only through :class:`Delivery`, so the in-memory service, the port to a
service in another worker, and a network relay are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ping_web.core.ids import ConversationId, DeviceId, UserId


@dataclass(frozen=True, slots=True)
class LogPage:
    """Envelopes of one conversation log from a position on, and where to continue."""

    envelopes: list[bytes]
    next_position: int


@runtime_checkable
class Delivery(Protocol):
    """What a client needs from a delivery service. Envelopes cross as encoded bytes."""

    async def post(self, envelope: bytes) -> bool:
        """Append to the conversation's log. A commit is refused (``False``) if the log
        already holds a commit for its epoch or has moved past it."""
        ...

    async def fetch(self, conversation_id: ConversationId, position: int) -> LogPage:
        """The log of ``conversation_id`` from ``position`` on."""
        ...

    async def send_welcome(self, device_ids: list[DeviceId], welcome: bytes) -> None:
        """Leave ``welcome`` in the mailbox of each device."""
        ...

    async def fetch_welcomes(self, device_id: DeviceId) -> list[bytes]:
        """Take every Welcome waiting for ``device_id`` (each is returned once)."""
        ...

    async def publish_key_packages(self, user_id: UserId, device_id: DeviceId, key_packages: list[bytes]) -> None:
        """Offer one-time KeyPackages of a device."""
        ...

    async def claim_key_package(self, device_id: DeviceId) -> bytes | None:
        """Take one KeyPackage of ``device_id`` (never handed out again), or ``None``."""
        ...

    async def devices_of(self, user_id: UserId) -> list[DeviceId]:
        """Devices of ``user_id`` that ever published KeyPackages."""
        ...
