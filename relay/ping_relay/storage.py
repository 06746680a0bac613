"""The storage layer: what the routes and the stream need, as one small protocol.

Two backends implement it with the same SQL logic (``sqlstore.py``): SQLite
(``backend_sqlite.py``, the embedded default) and PostgreSQL (``backend_postgres.py``).
Every method is one transaction; a write returns only once it has committed (durable).
A write that stores something for a device first spends a token of that device's
shared write bucket (in the same transaction: 429 stores nothing).
Refusals are :class:`~ping_relay.errors.RelayError`, raised before anything is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ping_web.core.envelope import MessageEnvelope


@dataclass(frozen=True, slots=True)
class Device:
    device_id: bytes
    user_id: bytes
    public_key: bytes
    registered_at_ms: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: its sequence number in the group and the envelope bytes as posted."""

    seq: int
    envelope: bytes


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    head: int
    """The last seq this device may read: the group's head, or the commit that removed it."""
    epoch: int | None
    """The group's epoch (``None`` for a removed device)."""
    removed_seq: int | None
    more: bool


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A log entry as a group's fan-out reads it: ``removed`` holds the device ids (16
    bytes each) a commit removed, empty for every other entry."""

    seq: int
    envelope: bytes
    removed: bytes


@dataclass(frozen=True, slots=True)
class LogPage:
    """Entries after a cursor, read in one snapshot with the group's ``head`` and
    ``pruned_through``, for the stream's per-group fan-out."""

    entries: list[LogEntry]
    head: int
    pruned_through: int
    more: bool


@dataclass(frozen=True, slots=True)
class Recheck:
    """What a process compares with what its streams have sent, in case a wake-up was lost."""

    heads: dict[bytes, int]
    """Each group's head seq."""
    mailboxes: dict[bytes, int]
    """Each device's newest Welcome id in its mailbox (devices without one are absent)."""
    owners: dict[bytes, bytes]
    """Each device's stream owner."""


@dataclass(frozen=True, slots=True)
class Member:
    device_id: bytes
    from_seq: int
    removed_seq: int | None


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group_id: bytes
    creator: bytes
    epoch: int
    head: int
    pruned_through: int
    members: list[Member]


@dataclass(frozen=True, slots=True)
class Posted:
    seq: int
    duplicate: bool
    epoch: int | None
    """The group's epoch after the post (a commit's reply shows the new epoch); ``None`` for
    a duplicate from a device that is no longer a member (it learns its post's fate, not the
    group's state)."""


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """A commit with its roster change and Welcome, already validated in isolation."""

    group_id: bytes
    commit: MessageEnvelope
    welcome: bytes | None
    added: list[bytes]
    removed: list[bytes]
    signature: bytes
    group_info: bytes | None = None
    """The GroupInfo of the epoch the commit makes (signed by the committer), kept with it."""
    external: bool = False
    """An external commit: the committer (re)joins; it may be outside the roster if a device of
    its user is a member (it is added to the roster then)."""


@dataclass(frozen=True, slots=True)
class Welcome:
    id: int
    group_id: bytes
    commit_seq: int
    envelope: bytes


@dataclass(frozen=True, slots=True)
class WelcomePage:
    welcomes: list[Welcome]
    more: bool
    """Mailbox entries after the page remain (fetch again after ``last_id``)."""
    last_id: int
    """The last mailbox id the page covers (the ``after`` of the next page)."""


@dataclass(frozen=True, slots=True)
class KeyPackageCount:
    available: int
    last_resort: bool
    last_resort_claims: int
    claimed: int = 0
    """Regular KeyPackages of the device claimed so far (not in replies: it tells a device
    that has run out from one that never published)."""

    @property
    def published(self) -> bool:
        return self.available > 0 or self.last_resort or self.claimed > 0 or self.last_resort_claims > 0


@dataclass(frozen=True, slots=True)
class Claimed:
    key_package: bytes
    last_resort: bool


class Store(Protocol):
    async def start(self) -> None:
        """Connect and apply pending schema migrations."""
        ...

    async def close(self) -> None: ...

    # devices and auth (registration and users' device lists: ``identity.py``)
    async def get_device(self, device_id: bytes) -> Device | None: ...

    async def add_challenge(self, challenge: bytes, device_id: bytes, expires_at_ms: int, now_ms: int) -> None: ...

    async def take_challenge(self, challenge: bytes) -> tuple[bytes, int] | None:
        """Remove and return ``(device_id, expires_at_ms)`` of a challenge (single use)."""
        ...

    async def add_token(self, token_hash: bytes, device_id: bytes, expires_at_ms: int, now_ms: int) -> None: ...

    async def token_owner(self, token_hash: bytes) -> tuple[Device, int] | None:
        """The device a token was issued to and the token's expiry."""
        ...

    # KeyPackages
    async def publish_key_packages(
        self, device_id: bytes, key_packages: list[bytes], last_resort: bytes | None, max_stored: int, now_ms: int
    ) -> KeyPackageCount: ...

    async def count_key_packages(self, device_id: bytes) -> KeyPackageCount: ...

    async def claim_key_package(self, device_id: bytes, claimer: bytes, now_ms: int) -> Claimed:
        """One KeyPackage of ``device_id``: 404 if none, 429 ``claims_limited`` past a claim
        limit (nothing taken); wakes the owner when its stock runs low."""
        ...

    # groups and the log
    async def create_group(self, group_id: bytes, creator: bytes, now_ms: int) -> bool: ...

    async def group_info(self, group_id: bytes, device_id: bytes) -> GroupInfo: ...

    async def post(self, envelope: MessageEnvelope, window: int, now_ms: int) -> Posted: ...

    async def commit(self, request: CommitRequest, now_ms: int) -> Posted: ...

    async def read(self, group_id: bytes, device_id: bytes, after: int, limit: int, max_bytes: int) -> Page: ...

    async def user_groups(self, device: Device, limit: int) -> list[bytes]:
        """Groups where a device of ``device``'s user (another one, or itself) is a current
        member, at most ``limit``: what a new device joins by external commit."""
        ...

    async def mls_group_info(self, group_id: bytes, device: Device) -> tuple[int, bytes] | None:
        """``(epoch, GroupInfo)`` kept with the group's newest commit that carried one, for a
        current member or a device whose user has a current member; 403 otherwise."""
        ...

    async def log_pages(self, cursors: list[tuple[bytes, int]], limit: int, max_bytes: int) -> dict[bytes, LogPage]:
        """The log of each ``(group_id, after)`` after its cursor, for the stream's fan-out (no
        access check: the stream checked membership when the device subscribed, and follows
        removals itself); groups that do not exist are absent."""
        ...

    async def recheck(self, group_ids: list[bytes], device_ids: list[bytes]) -> Recheck: ...

    # streams
    async def claim_stream(self, device_id: bytes, owner: bytes, now_ms: int) -> None:
        """Record ``owner`` as the device's one stream and wake the device everywhere (the
        previous owner, in whichever process, closes with 4409)."""
        ...

    async def stream_owner(self, device_id: bytes) -> bytes | None: ...

    # Welcome mailbox
    async def welcomes(
        self, device_id: bytes, after_id: int, limit: int, max_bytes: int, skip: frozenset[int] = frozenset()
    ) -> WelcomePage:
        """The mailbox after ``after_id``, at most ``limit`` Welcomes and, beyond the first,
        ``max_bytes`` of envelopes; ids in ``skip`` (already sent) are left out."""
        ...

    async def ack_welcomes(self, device_id: bytes, ids: list[int], now_ms: int) -> int: ...

    # retention
    async def record_cursors(self, cursors: dict[tuple[bytes, bytes], int]) -> None:
        """Store ``(group_id, device_id) -> seq`` cursors the devices reported (only ever
        moving a stored cursor forward)."""
        ...

    async def prune_welcomes(self, before_ms: int) -> int:
        """Delete the Welcomes queued before ``before_ms`` (expired); how many mailbox entries."""
        ...

    async def sweep_buckets(self, now_ms: int) -> int:
        """Delete rate buckets idle long enough to be full again (a missing bucket is full)."""
        ...

    async def prune(self, now_ms: int, retention_ms: int, max_retention_ms: int) -> int:
        """Delete, per group as a prefix, the entries every reader has acknowledged and that
        are older than ``retention_ms`` (0: none), and every entry older than
        ``max_retention_ms`` (0: none). Returns how many were deleted."""
        ...
