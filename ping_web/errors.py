"""The ping_web exception hierarchy.

Every failure the package reports is a :class:`PingError`. Untrusted bytes never
surface as a bare ``KeyError``/``ValueError``/JS error: callers catch one base class
and branch on the subclass to decide what to do.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class PingError(Exception):
    """Base class of every error ping_web raises."""


class InvalidInput(PingError):
    """Input was malformed, oversized or out of range; nothing was changed."""


class DecodeError(InvalidInput):
    """Bytes could not be decoded into the expected structure."""


class ContentHashMismatch(InvalidInput):
    """An envelope's content hash does not match its content; it was rejected unapplied."""


class HeaderMismatch(InvalidInput):
    """An envelope's header (kind, sender device, epoch, seq, clock) differs from what its
    sender authenticated inside the MLS message; it was rejected unapplied."""


class MlsError(PingError):
    """OpenMLS refused the operation. ``code`` is the wasm module's stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.detail = message

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class WasmTrap(PingError):
    """The wasm instance trapped (a Rust panic); it must be dropped and rebuilt from storage."""


class StorageError(PingError):
    """The storage backend failed; the operation was not applied."""


class StorageQuotaExceeded(StorageError):
    """The backend is full. Free space and retry; stored data is intact."""


class StorageUnavailable(StorageError):
    """A transient failure (closed connection, aborted transaction). Retry later."""


class StorageCorrupted(StorageError):
    """Stored records could not be decoded. Nothing was deleted; inspect or restore a backup."""


class DatabaseInUse(StorageError):
    """Another tab, worker or client already owns this device's database."""


class StateConflict(PingError):
    """The operation does not fit the current state (wrong epoch, pending commit, ...)."""


class WrongEpoch(StateConflict):
    """A handshake message is for an epoch other than the group's current one."""


class PendingCommit(StateConflict):
    """An own commit awaits confirm_commit() or discard_commit() first."""


class NoPendingCommit(StateConflict):
    """confirm_commit()/discard_commit() was called with no commit pending."""


class NotAMember(StateConflict):
    """This device is no longer a member of the conversation."""


class UnknownConversation(StateConflict):
    """No conversation with that id is known to this client."""


class UnknownOwnEnvelope(InvalidInput):
    """An envelope names this device as its sender, but this device never sent it (a relay
    that forged or replayed one, or another copy of this device restored from the same
    backup). It was refused unapplied; nothing in it was trusted."""


class RejoinRequired(StateConflict):
    """This device's copy of the conversation was restored from a backup that is no longer
    current: it cannot prove that it alone holds its epoch's sending keys, so it no longer
    sends there. Rejoin the conversation (another member adds this device again)."""


class DeliveryUnavailable(PingError):
    """The delivery service did not answer (the network or the relay is down, its worker is
    gone, the port closed, or it timed out). Nothing is lost: the client's outbox keeps what
    was not handed over; retry with ``sync()`` once the service is back."""


class RateLimited(DeliveryUnavailable):
    """The delivery service refused for now: this device, its address, or the device whose
    KeyPackage it claims is over a rate. ``retry_after_s`` says when to try again; nothing
    was changed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QuotaExceeded(StateConflict):
    """The delivery service holds as much as it allows for this device, conversation or user
    (a storage quota, the devices of one user). Nothing was stored; the message says what
    frees room (the relay's pruning, or its operator)."""


class CommitRefused(StateConflict):
    """The delivery service refused a commit for a reason other than a lost race for the
    epoch (its roster names a device it does not know, or one already in or out of the
    group). The commit never entered the log: the committer discards it."""


class DeviceLogInvalid(InvalidInput):
    """A device log entry is malformed, badly signed, or breaks the log's rules (a signer that
    is not an active device of the user, a broken hash chain, a key that comes back). The
    log was not changed."""


class IdentityChangeKind(Enum):
    """How a device log served by the relay fails to extend the one this device pinned."""

    NEW_ROOT = "new_root"
    """Another first device: a different identity under the same user id."""
    ROLLBACK = "rollback"
    """The log is shorter than what was pinned, or gone."""
    FORK = "fork"
    """The log diverges from the pinned head."""


class IdentityChanged(StateConflict):
    """The relay serves a device log of ``user_id`` that does not extend the one this device
    verified before (``kind``): a new identity, a rollback or a fork. It was refused; the
    contact keeps its pinned devices until the application accepts the change
    (``MessagingClient.accept_identity``), after the people compared safety numbers."""

    def __init__(self, message: str, user_id: Any, kind: IdentityChangeKind) -> None:
        super().__init__(message)
        self.user_id = user_id
        self.kind = kind


class UnverifiedDevice(InvalidInput):
    """A KeyPackage, Welcome or commit names a device (its user id and signature key) that is
    not an active device in that user's verified device log. ``user_id`` and ``key`` name it,
    ``reason`` says why. Nothing was applied."""

    def __init__(self, message: str, user_id: Any, key: bytes, reason: str) -> None:
        super().__init__(message)
        self.user_id = user_id
        self.key = key
        self.reason = reason


class LinkFailed(PingError):
    """Linking a new device did not complete: a wrong or expired code, a request or answer
    that does not verify, or no answer in time. Nothing was added to the device log."""


class ExternalCommitRefused(InvalidInput):
    """Another member's external commit was refused: only a device of a user already in the
    conversation may join by external commit (a stale copy of a member's device rejoining,
    or a new device of a member's user), and it may remove nothing but its own stale leaf.
    Nothing was applied."""
