"""The client: :class:`MessagingClient`, one device with many conversations on one storage.

Owns what ties the tiers together: opening a device and its identity, the storage key
layout (:mod:`ping_web.client.keys`, the only module that spells keys), capturing each
operation as one atomic batch, the outbox and the settling of own commits, sync with a
delivery service, linking and revoking devices, backup and restore, exactly-once requests
(:mod:`ping_web.client.requests`), and one device shared by the tabs of a browser
(:mod:`ping_web.client.tabs`). May import every other tier.
"""

from ping_web.client.client import BatchOutcome, MessagingClient
from ping_web.client.tabs import SharedDevice, TabEvent

__all__ = ["BatchOutcome", "MessagingClient", "SharedDevice", "TabEvent"]
