"""ping_web: an end-to-end encrypted messaging core for the browser, in Python on Pyodide.

Group cryptography is MLS (RFC 9420) by OpenMLS compiled to WebAssembly; this package owns
everything above it. Start with :class:`MessagingClient`; see ``docs/guide.md`` for usage
and ``docs/design.md`` for how the package is built (core / mls / storage / delivery /
client).
"""

from ping_web.client import BatchOutcome, MessagingClient
from ping_web.core.conversation import Conversation
from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.records import AddOutcome, ConversationMeta, MemberInfo
from ping_web.delivery import Delivery, LocalDeliveryService, LogPage
from ping_web.delivery.relay import ConnectionState, RelayDelivery
from ping_web.errors import (
    CommitRefused,
    ContentHashMismatch,
    DatabaseInUse,
    DecodeError,
    DeliveryUnavailable,
    HeaderMismatch,
    InvalidInput,
    MlsError,
    NoPendingCommit,
    NotAMember,
    PendingCommit,
    PingError,
    StateConflict,
    StorageCorrupted,
    StorageError,
    StorageQuotaExceeded,
    StorageUnavailable,
    UnknownConversation,
    WasmTrap,
    WrongEpoch,
)
from ping_web.storage import Batch, EncryptedStorage, IndexedDbStorage, MemoryStorage, Storage

__version__ = "0.1.0"

__all__ = [
    "AddOutcome",
    "Batch",
    "BatchOutcome",
    "CommitRefused",
    "ConnectionState",
    "ContentHashMismatch",
    "Conversation",
    "ConversationId",
    "ConversationMeta",
    "DatabaseInUse",
    "DecodeError",
    "Delivery",
    "DeliveryUnavailable",
    "DeviceId",
    "EncryptedStorage",
    "HeaderMismatch",
    "IncomingMessage",
    "IndexedDbStorage",
    "InvalidInput",
    "LocalDeliveryService",
    "LogPage",
    "MemberInfo",
    "MemoryStorage",
    "MessageEnvelope",
    "MessageKind",
    "MessagingClient",
    "MlsError",
    "NoPendingCommit",
    "NotAMember",
    "PendingCommit",
    "PingError",
    "RelayDelivery",
    "StateConflict",
    "Storage",
    "StorageCorrupted",
    "StorageError",
    "StorageQuotaExceeded",
    "StorageUnavailable",
    "UnknownConversation",
    "UserId",
    "WasmTrap",
    "WrongEpoch",
    "__version__",
]
