"""ping_web: an end-to-end encrypted messaging core for the browser, in Python on Pyodide.

Group cryptography is MLS (RFC 9420) by OpenMLS compiled to WebAssembly; this package owns
everything above it. Start with :class:`MessagingClient`; see ``docs/guide.md`` for usage
and ``docs/design.md`` for how the package is built (core / mls / storage / delivery /
client).
"""

from typing import TYPE_CHECKING, Any

from ping_web.errors import (
    CommitRefused,
    ContentHashMismatch,
    DatabaseInUse,
    DecodeError,
    DeliveryUnavailable,
    DeviceLogInvalid,
    ExternalCommitRefused,
    HeaderMismatch,
    IdentityChanged,
    IdentityChangeKind,
    InvalidInput,
    LinkFailed,
    MlsError,
    NoPendingCommit,
    NotAMember,
    PendingCommit,
    PingError,
    QuotaExceeded,
    RateLimited,
    RejoinRequired,
    StateConflict,
    StorageCorrupted,
    StorageError,
    StorageQuotaExceeded,
    StorageUnavailable,
    UnknownConversation,
    UnknownOwnEnvelope,
    UnverifiedDevice,
    WasmTrap,
    WrongEpoch,
)

if TYPE_CHECKING:
    from ping_web.client import BatchOutcome, MessagingClient
    from ping_web.core.conversation import Conversation
    from ping_web.core.envelope import IncomingMessage, MessageEnvelope, MessageKind
    from ping_web.core.ids import ConversationId, DeviceId, UserId
    from ping_web.core.records import AddOutcome, ConversationMeta, MemberInfo
    from ping_web.delivery import Delivery, LocalDeliveryService, LogPage
    from ping_web.delivery.relay import ConnectionState, RelayDelivery
    from ping_web.storage import Batch, EncryptedStorage, IndexedDbStorage, MemoryStorage, Storage

# Each name is imported on first use, so that importing one part (``ping_web.client`` to
# open a client) does not load the rest (the relay client, IndexedDB, encryption): in
# Pyodide every module imported is compiled or read at start.
_LAZY: dict[str, str] = {
    "BatchOutcome": "ping_web.client",
    "MessagingClient": "ping_web.client",
    "Conversation": "ping_web.core.conversation",
    "IncomingMessage": "ping_web.core.envelope",
    "MessageEnvelope": "ping_web.core.envelope",
    "MessageKind": "ping_web.core.envelope",
    "ConversationId": "ping_web.core.ids",
    "DeviceId": "ping_web.core.ids",
    "UserId": "ping_web.core.ids",
    "AddOutcome": "ping_web.core.records",
    "ConversationMeta": "ping_web.core.records",
    "MemberInfo": "ping_web.core.records",
    "Delivery": "ping_web.delivery",
    "LocalDeliveryService": "ping_web.delivery",
    "LogPage": "ping_web.delivery",
    "ConnectionState": "ping_web.delivery.relay",
    "RelayDelivery": "ping_web.delivery.relay",
    "Batch": "ping_web.storage",
    "EncryptedStorage": "ping_web.storage",
    "IndexedDbStorage": "ping_web.storage",
    "MemoryStorage": "ping_web.storage",
    "Storage": "ping_web.storage",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ping_web' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
    "DeviceLogInvalid",
    "EncryptedStorage",
    "ExternalCommitRefused",
    "HeaderMismatch",
    "IdentityChangeKind",
    "IdentityChanged",
    "IncomingMessage",
    "IndexedDbStorage",
    "InvalidInput",
    "LinkFailed",
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
    "QuotaExceeded",
    "RateLimited",
    "RejoinRequired",
    "RelayDelivery",
    "StateConflict",
    "Storage",
    "StorageCorrupted",
    "StorageError",
    "StorageQuotaExceeded",
    "StorageUnavailable",
    "UnknownConversation",
    "UnknownOwnEnvelope",
    "UnverifiedDevice",
    "UserId",
    "WasmTrap",
    "WrongEpoch",
    "__version__",
]
