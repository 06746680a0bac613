"""Delivery: the :class:`Delivery` protocol and what implements it.

Owns the protocol a client needs from a delivery service (ordered per-conversation logs,
Welcome mailboxes, KeyPackages), the in-memory :class:`LocalDeliveryService`, and the port
that carries the protocol between a worker and its host. May import :mod:`ping_web.core`,
:mod:`ping_web.errors`, :mod:`ping_web.storage` and :mod:`ping_web._ffi`; never mls or client.
"""

from ping_web.delivery.base import Delivery, LogPage
from ping_web.delivery.local import LocalDeliveryService

__all__ = ["Delivery", "LocalDeliveryService", "LogPage"]
