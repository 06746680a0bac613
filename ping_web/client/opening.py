"""Opening a device: create its identity the first time, load it afterwards; KeyPackages; close.

A new device gets a signing identity, a DeviceId, and, as the first device of its user,
the genesis entry of the user's device log and the user's device group, all in one batch.
A device made to be linked (``linked=True``) gets neither: one of the user's devices adds it
to the log (``client.trust``). Opening an existing one restores only the global MLS entries,
the conversation index and its user's device log; each conversation's group is read on its
first use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Self

from ping_web.client import keys
from ping_web.client.base import ClientBase
from ping_web.client.device import DEVICE_GROUP_NAME, DeviceRecord, device_group_id
from ping_web.client.identity import Contact
from ping_web.core import devlog
from ping_web.core.conversation import Conversation
from ping_web.core.devlog import DeviceLog
from ping_web.core.ids import DeviceId, UserId
from ping_web.delivery.base import Delivery
from ping_web.errors import InvalidInput, PingError, StorageCorrupted
from ping_web.mls.engine import OpenMlsEngine
from ping_web.mls.openmls import MlsRuntime
from ping_web.storage.base import Storage
from ping_web.storage.memory import MemoryStorage


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Opening(ClientBase):
    """Opening and closing a device, and its KeyPackages."""

    @classmethod
    async def open(
        cls,
        storage: Storage | None = None,
        user_id: UserId | bytes | None = None,
        *,
        delivery: Delivery | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        create_device_group: bool = True,
        linked: bool = False,
        label: str = "",
    ) -> Self:
        """Open the device stored in ``storage``, or create it for ``user_id`` the first time.

        A new device gets a signing identity and a DeviceId. The first device of a user
        (the default) also starts the user's device log and, unless ``create_device_group``
        is false, the user's device group. A device for a user who already has devices is
        made with ``linked=True`` and then linked with a code from one of them
        (:meth:`request_link`). ``label`` names the device to people ("Laptop").
        """
        storage = storage if storage is not None else MemoryStorage()
        user = None if user_id is None else (user_id if isinstance(user_id, UserId) else UserId.from_bytes(user_id))
        raw = await storage.get(keys.DEVICE, keys.DEVICE_RECORD)
        if raw is None:
            if user is None:
                raise InvalidInput("this storage holds no device yet: pass user_id to create one")
            return await cls._create(storage, user, delivery=delivery, clock=clock,
                                     device_group=create_device_group and not linked, linked=linked,
                                     label=label)  # fmt: skip
        try:
            record = DeviceRecord.decode(raw)
        except PingError as exc:
            raise StorageCorrupted(f"the stored device record is unreadable ({exc}); nothing was changed") from None
        if user is not None and user != record.user_id:
            raise InvalidInput("this storage holds a device of another user")
        client = cls(storage, record, clock=clock, delivery=delivery)
        await client._load_from_storage()
        if client._identities.cached(record.user_id) is None and not await storage.get(keys.DEVICE, keys.LINK_PENDING):
            await client._start_own_log(label)  # a device made before device logs: it starts its user's
        return client

    @classmethod
    async def _create(
        cls, storage: Storage, user: UserId, *, delivery: Delivery | None, clock: Callable[[], int],
        device_group: bool, linked: bool, label: str,
    ) -> Self:  # fmt: skip
        runtime = MlsRuntime.load()
        provider = runtime.provider()
        identity = provider.create_identity(user.raw)
        record = DeviceRecord(user, DeviceId.new(), identity.public_key, clock())
        client = cls(storage, record, clock=clock, delivery=delivery)
        client._use_runtime(runtime, OpenMlsEngine(provider, identity))
        batch = client._capture([])
        batch.put(keys.DEVICE, keys.DEVICE_RECORD, record.encode())
        own = None
        if linked:
            batch.put(keys.DEVICE, keys.LINK_PENDING, b"\x01")
        else:
            own = client._genesis_contact(label)
            batch.put(keys.DEVICE, keys.device_log_key(user), own.encode())
        if device_group:
            conversation = Conversation.create(
                client._engine, record.device_id, clock(), name=DEVICE_GROUP_NAME,
                conversation_id=device_group_id(user), is_device_group=True,
            )  # fmt: skip
            client._adopt(conversation)
            batch = client._capture([conversation], batch=batch)
        await client._writer.submit(batch)
        if own is not None:
            client._identities.remember(own)
            await client._publish_genesis()
        if device_group:
            try:
                await client._register_group(device_group_id(user))
            except PingError:
                pass  # another device of this user registered it: link this one instead
        return client

    def _genesis_contact(self, label: str) -> Contact:
        """The user's device log, started by this device (signed with its MLS key)."""
        record = self._record
        entry = devlog.genesis(record.user_id, record.device_id, record.public_key,
                               self._engine.identity.sign_with_label, ts_ms=self._clock(), label=label)  # fmt: skip
        return Contact(DeviceLog.start(entry, None))

    async def _start_own_log(self, label: str) -> None:
        """Start the user's device log with this device (the first device of its user)."""
        own = self._genesis_contact(label)
        await self._identities.pin(own)
        await self._publish_genesis()

    async def new_key_package(self) -> bytes:
        """A one-time KeyPackage; its private keys are stored before it is returned."""
        await self._ready()
        key_package = self._engine.identity.key_package()
        await self._writer.submit(self._capture([]))
        return key_package

    async def publish_key_packages(self, count: int = 5) -> None:
        """Make ``count`` KeyPackages and offer them through the delivery service."""
        delivery = self._require_delivery()
        packages = [await self.new_key_package() for _ in range(count)]
        await delivery.publish_key_packages(self.user_id, self.device_id, packages)

    async def close(self) -> None:
        """Wait for pending writes, then release the storage. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._writer.flush()
        await self._storage.close()
        # Let the wasm instance (and its memory) be collected even if the client lingers.
        self._runtime = self._engine_or_none = None
        self._loaded = {}
