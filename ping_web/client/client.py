"""MessagingClient: what an application uses. One device, many conversations, one storage.

The class is assembled from one part per job, each in its own module:

* ``client.opening``: open or create the device, KeyPackages, close;
* ``client.conversations``: create, join, send, add and remove members, self-update;
* ``client.outbox``: the outbox, and settling own commits with the delivery service;
* ``client.sync``: receiving envelopes, and pulling them from the delivery service;
* ``client.trust``: users' verified device logs, safety numbers, linking and revoking
  this user's devices;
* ``client.backup``: backup and restore.

``client.base`` holds what they share: the device's memory, and how every operation is
captured as one atomic batch (its docstring states the rules).
"""

from __future__ import annotations

from ping_web.client.backup import Backup
from ping_web.client.base import BatchOutcome
from ping_web.client.conversations import Conversations
from ping_web.client.opening import Opening
from ping_web.client.outbox import Outbox
from ping_web.client.sync import Sync
from ping_web.client.trust import Trust

__all__ = ["BatchOutcome", "MessagingClient"]


class MessagingClient(Opening, Conversations, Outbox, Sync, Trust, Backup):
    """An end-to-end encrypted messaging device: open it, then create, join, send, receive."""
