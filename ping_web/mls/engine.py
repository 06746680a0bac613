"""OpenMLS as the conversation's :class:`~ping_web.core.engine.MlsEngine`.

One :class:`OpenMlsEngine` is one device: a wasm instance's provider (crypto and the
key/value working set) plus the device's signing identity, which every group operation
signs with. Its groups are the wasm module's groups with that identity bound in, so the
conversation logic never sees a provider, an identity or a JavaScript object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ping_web.core.engine import Member, Processed
from ping_web.mls.openmls import Group, Identity, Provider, Savepoint


class OpenMlsGroup:
    """An OpenMLS group with the device identity bound in (an :class:`~ping_web.core.engine.MlsGroup`)."""

    __slots__ = ("_group", "_identity")

    def __init__(self, group: Group, identity: Identity) -> None:
        self._group = group
        self._identity = identity

    @property
    def group_id(self) -> bytes:
        return self._group.group_id

    @property
    def epoch(self) -> int:
        return self._group.epoch

    @property
    def own_leaf_index(self) -> int:
        return self._group.own_leaf_index

    @property
    def is_active(self) -> bool:
        return self._group.is_active

    def members(self) -> list[Member]:
        return self._group.members()

    def add_members(self, key_packages: Sequence[bytes], aad: bytes) -> tuple[bytes, bytes]:
        return self._group.add_members(self._identity, key_packages, aad)

    def remove_members(self, leaf_indexes: Sequence[int], aad: bytes) -> bytes:
        return self._group.remove_members(self._identity, leaf_indexes, aad)

    def self_update(self, aad: bytes) -> bytes:
        return self._group.self_update(self._identity, aad)

    def merge_pending_commit(self) -> None:
        self._group.merge_pending_commit()

    def clear_pending_commit(self) -> None:
        self._group.clear_pending_commit()

    def create_message(self, plaintext: bytes, aad: bytes) -> bytes:
        return self._group.create_message(self._identity, plaintext, aad)

    def process_message(self, message: bytes, expected_aad: bytes, plaintext_sha256: bytes) -> Processed:
        return self._group.process_message(message, expected_aad, plaintext_sha256)

    def export_secret(self, label: str, context: bytes, length: int) -> bytes:
        return self._group.export_secret(label, context, length)


class OpenMlsEngine:
    """A device's OpenMLS: ``provider`` and the ``identity`` stored in it."""

    __slots__ = ("identity", "provider")

    def __init__(self, provider: Provider, identity: Identity) -> None:
        self.provider = provider
        self.identity = identity

    def create_group(self, group_id: bytes) -> OpenMlsGroup:
        return OpenMlsGroup(self.provider.create_group(self.identity, group_id), self.identity)

    def join_group(self, welcome: bytes) -> OpenMlsGroup:
        return OpenMlsGroup(self.provider.join_group(welcome), self.identity)

    def load_group(self, group_id: bytes) -> OpenMlsGroup | None:
        group = self.provider.load_group(group_id)
        return None if group is None else OpenMlsGroup(group, self.identity)

    def inspect_key_package(self, key_package: bytes) -> tuple[bytes, bytes]:
        return self.provider.inspect_key_package(key_package)

    def savepoint(self) -> Savepoint:
        return self.provider.savepoint()

    def group_prefix(self, group_id: bytes) -> bytes:
        return self.provider.group_prefix(group_id)

    def group_entries(self, group_id: bytes) -> list[tuple[bytes, bytes]]:
        return self.provider.group_entries(group_id)

    def drop_group(self, group_id: bytes) -> None:
        self.provider.drop_group(group_id)

    def import_entries(self, entries: Iterable[tuple[bytes, bytes | None]]) -> None:
        self.provider.import_entries(entries)
