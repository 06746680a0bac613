"""ping_web: an end-to-end encrypted messaging core for the browser, in Python on Pyodide.

Group cryptography is MLS (RFC 9420) by OpenMLS compiled to WebAssembly; this package owns
everything above it. Start with :class:`MessagingClient`; see ``docs/guide.md``.
"""

from .client import BatchOutcome, MessagingClient
from .core.conversation import Conversation
from .delivery import Delivery, LocalDeliveryService
from .core.envelope import IncomingMessage, MessageEnvelope, MessageKind
from .errors import PingError
from .core.ids import ConversationId, DeviceId, UserId
from .memory_storage import MemoryStorage
from .storage import Batch, Storage

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BatchOutcome",
    "Conversation",
    "ConversationId",
    "Delivery",
    "DeviceId",
    "IncomingMessage",
    "LocalDeliveryService",
    "MemoryStorage",
    "MessageEnvelope",
    "MessageKind",
    "MessagingClient",
    "PingError",
    "Storage",
    "UserId",
    "__version__",
]
