"""Delivery: the :class:`Delivery` protocol and what implements it.

Owns the protocol a client needs from a delivery service (ordered per-conversation logs
that take one commit per epoch, a commit's Welcome and roster change in the same call,
Welcome mailboxes, KeyPackages), the in-memory :class:`LocalDeliveryService`, the port that
carries the protocol between a worker and its host (:mod:`ping_web.delivery.port`), and
:class:`~ping_web.delivery.relay.RelayDelivery`, the client of the network relay. May
import :mod:`ping_web.core`, :mod:`ping_web.errors` and :mod:`ping_web._ffi`; never
storage, mls or client.
"""

from ping_web.delivery.base import Delivery, DeviceLogPage, DeviceSigner, LogPage, Notice, RosterChange
from ping_web.delivery.local import LocalDeliveryService
from ping_web.errors import CommitRefused, DeliveryUnavailable

__all__ = [
    "CommitRefused",
    "Delivery",
    "DeliveryUnavailable",
    "DeviceSigner",
    "LocalDeliveryService",
    "DeviceLogPage",
    "LogPage",
    "Notice",
    "RosterChange",
]
