"""The MLS protocol the conversation logic needs: a small typed seam, no wasm in sight.

:class:`~ping_web.core.conversation.Conversation` calls MLS only through :class:`MlsEngine`
(one device's identity and working set) and the :class:`MlsGroup`\\ s it hands out. The
real implementation is OpenMLS in wasm (:mod:`ping_web.mls.engine`); the CPython tests
drive the same conversation logic with an in-memory engine that keeps these rules.

Rules every implementation keeps:

* every mutating call is atomic: if it raises, it changed nothing;
* :meth:`MlsEngine.savepoint` undoes every call made inside it if the block raises;
* own commits stay pending until :meth:`MlsGroup.merge_pending_commit` or
  :meth:`MlsGroup.clear_pending_commit`; application messages may be sent meanwhile;
* :meth:`MlsGroup.process_message` merges a commit it accepts; it rejects a message whose
  authenticated data differs from ``expected_aad`` (:class:`~ping_web.errors.HeaderMismatch`)
  or whose plaintext does not hash to ``plaintext_sha256`` when one is given
  (:class:`~ping_web.errors.ContentHashMismatch`);
* messages of the few epochs before the current one can still be decrypted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol


class ProcessedKind(IntEnum):
    """What an inbound MLS message was."""

    APPLICATION = 1
    COMMIT = 2
    PROPOSAL = 3
    OWN_MESSAGE = 4
    """A message this member sent, echoed back: nothing to apply."""


@dataclass(frozen=True, slots=True)
class Processed:
    """What processing one inbound MLS message did."""

    kind: ProcessedKind
    still_member: bool
    sender_leaf: int | None
    epoch: int
    """The group's epoch after processing."""
    plaintext: bytes
    external: bool = False
    """A commit by a new member (an external commit: a device rejoining or joining)."""


@dataclass(frozen=True, slots=True)
class Member:
    """One leaf of the ratchet tree: its index, credential identity and signature key."""

    leaf_index: int
    identity: bytes
    signature_key: bytes


class MlsGroup(Protocol):
    """One MLS group as this device sees it."""

    group_id: bytes
    """Fixed for the group's life (it is the conversation id)."""
    own_leaf_index: int
    """This member's leaf: fixed while it is a member."""

    @property
    def epoch(self) -> int: ...

    @property
    def is_active(self) -> bool:
        """False once this member was removed."""
        ...

    def members(self) -> list[Member]: ...

    def add_members(self, key_packages: Sequence[bytes], aad: bytes) -> tuple[bytes, bytes]:
        """Stage a commit adding these KeyPackages; returns ``(commit, welcome)``."""
        ...

    def remove_members(self, leaf_indexes: Sequence[int], aad: bytes) -> bytes:
        """Stage a commit removing these leaves; returns the commit."""
        ...

    def self_update(self, aad: bytes) -> bytes:
        """Stage a commit with fresh keys for this member's leaf; returns the commit."""
        ...

    @property
    def staged_group_info(self) -> bytes | None:
        """The GroupInfo of the epoch the last commit staged here makes (``None`` if none
        was staged since the group was loaded)."""
        ...

    def export_group_info(self) -> bytes:
        """A signed GroupInfo of the current epoch, enough to join by external commit."""
        ...

    def merge_pending_commit(self) -> None: ...

    def clear_pending_commit(self) -> None: ...

    def create_message(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt an application message for the current epoch."""
        ...

    def process_message(self, message: bytes, expected_aad: bytes, plaintext_sha256: bytes) -> Processed: ...

    def export_secret(self, label: str, context: bytes, length: int) -> bytes: ...


class MlsEngine(Protocol):
    """One device's MLS: its signing identity and every group, in one undoable working set."""

    def create_group(self, group_id: bytes) -> MlsGroup: ...

    def join_group(self, welcome: bytes) -> MlsGroup: ...

    def inspect_group_info(self, group_info: bytes) -> tuple[bytes, int]:
        """``(group id, epoch)`` a GroupInfo claims, unverified (the join verifies it)."""
        ...

    def join_external(self, group_info: bytes, aad: bytes) -> tuple[MlsGroup, bytes]:
        """Join by external commit from a GroupInfo (removing our own stale leaf, if any);
        returns the group, merged, and the commit."""
        ...

    def load_group(self, group_id: bytes) -> MlsGroup | None:
        """The stored group, or ``None`` if the working set has none with that id."""
        ...

    def inspect_key_package(self, key_package: bytes) -> tuple[bytes, bytes]:
        """Validate a KeyPackage; returns ``(credential identity, signature key)``."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """Undo every change made inside the block if it raises. Savepoints nest."""
        ...

    def group_prefix(self, group_id: bytes) -> bytes:
        """The key prefix every working-set entry of one group shares."""
        ...

    def group_entries(self, group_id: bytes) -> list[tuple[bytes, bytes]]:
        """Every working-set entry of one group (for a snapshot)."""
        ...

    def drop_group(self, group_id: bytes) -> None: ...

    def import_entries(self, entries: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Write entries as changes (a snapshot being restored)."""
        ...
