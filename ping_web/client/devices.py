"""The user's devices: link a new device into every conversation, revoke a lost one.

A new device joins every conversation as a new member, through a KeyPackage it published:
no MLS state is ever copied between devices. Revoking removes the device's leaf wherever
this device knows it.
"""

from __future__ import annotations

from ping_web.client.base import ClientBase
from ping_web.core.envelope import MessageEnvelope
from ping_web.core.ids import DeviceId
from ping_web.core.records import AddOutcome
from ping_web.errors import InvalidInput, StateConflict


class Devices(ClientBase):
    """Linking and revoking devices of this user."""

    async def revoke_device(self, device_id: DeviceId) -> list[MessageEnvelope]:
        """Remove ``device_id``'s leaf from every conversation where this device knows it.

        Returns one commit per conversation (settled through the delivery service if bound).
        """
        await self._ready()
        if device_id == self.device_id:
            raise InvalidInput("a device cannot revoke itself; revoke it from another device")
        commits = []
        for conversation_id in list(self._metas):
            conversation = await self._get(conversation_id)
            leaf = conversation.leaf_index_of(device_id)
            if leaf is not None and not conversation.state.removed:
                commits.append(await self.remove_members(conversation_id, [leaf]))
        return commits

    async def link_device(self, device_id: DeviceId) -> list[AddOutcome]:
        """Add a new device of this user to the device group and to each conversation.

        The new device opened with ``create_device_group=False`` and published KeyPackages
        (:meth:`publish_key_packages`); one is claimed per conversation. It joins as a new
        member everywhere: no MLS state is ever copied between devices.
        """
        delivery = self._require_delivery()
        await self._ready()
        if device_id not in await delivery.devices_of(self.user_id):
            raise InvalidInput("that device has not published KeyPackages for this user")
        outcomes = []
        ordered = sorted(self._metas.values(), key=lambda meta: not meta.is_device_group)
        for meta in ordered:
            conversation = await self._get(meta.id)
            if conversation.state.removed or conversation.leaf_index_of(device_id) is not None:
                continue
            key_package = await delivery.claim_key_package(device_id)
            if key_package is None:
                raise StateConflict("the new device ran out of KeyPackages; publish more and retry")
            outcomes.append(await self.add_members(meta.id, [(device_id, key_package)]))
        return outcomes
