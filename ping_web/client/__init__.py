"""The client: :class:`MessagingClient`, one device with many conversations on one storage.

Owns what ties the tiers together: opening a device and its identity, the storage key
layout (:mod:`ping_web.client.keys`, the only module that spells keys), capturing each
operation as one atomic batch, the outbox and the settling of own commits, sync with a
delivery service, linking and revoking devices, and backup and restore. May import every
other tier.
"""

from ping_web.client.client import BatchOutcome, MessagingClient

__all__ = ["BatchOutcome", "MessagingClient"]
