"""OpenMLS as the conversation's :class:`~ping_web.core.engine.MlsEngine`.

One :class:`OpenMlsEngine` is one device: a wasm instance's provider (crypto and the
key/value working set) plus the device's signing identity. Its groups are
:class:`~ping_web.mls.openmls.Group`\\ s with that identity bound in, so the conversation
logic never sees a provider, an identity or a JavaScript object.
"""

from __future__ import annotations

from collections.abc import Iterable

from ping_web.mls.openmls import Group, Identity, Provider, Savepoint


class OpenMlsEngine:
    """A device's OpenMLS: ``provider`` and the ``identity`` stored in it."""

    __slots__ = ("identity", "provider")

    def __init__(self, provider: Provider, identity: Identity) -> None:
        self.provider = provider
        self.identity = identity

    def create_group(self, group_id: bytes) -> Group:
        return self.provider.create_group(self.identity, group_id)

    def join_group(self, welcome: bytes) -> Group:
        return self.provider.join_group(self.identity, welcome)

    def inspect_group_info(self, group_info: bytes) -> tuple[bytes, int]:
        return self.provider.inspect_group_info(group_info)

    def join_external(self, group_info: bytes, aad: bytes) -> tuple[Group, bytes]:
        return self.provider.join_external(self.identity, group_info, aad)

    def load_group(self, group_id: bytes) -> Group | None:
        return self.provider.load_group(self.identity, group_id)

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
