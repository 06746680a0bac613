"""JournaledDelivery: the demo's delivery service, a LocalDeliveryService that survives reloads.

The browser demo runs it in a worker of its own, behind :class:`~ping_web.delivery.port.DeliveryServer`,
with its journal in IndexedDB, so a page reload finds every conversation log, Welcome and
KeyPackage where it was. It is demo infrastructure, not part of the library: a deployment
uses a relay server.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Final

from ping_web import errors
from ping_web.core import codec
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.delivery import LocalDeliveryService, LogPage
from ping_web.delivery.port import _raw, _raw_list
from ping_web.errors import InvalidInput, PingError, StorageError
from ping_web.storage import Batch, BatchWriter, Storage

# -- a local service that survives a restart ----------------------------------------------------

JOURNAL_VERSION: Final = 1
JOURNAL_MAX_ENTRY: Final = 16 << 20
_JOURNAL_KEY: Final = struct.Struct(">Q")


class JournaledDelivery:
    """A :class:`~ping_web.delivery.LocalDeliveryService` whose every change is journaled.

    Each state change (an accepted post, a Welcome left or taken, KeyPackages published or
    claimed) is appended to ``storage`` under namespace ``namespace`` (key: 8-byte
    big-endian sequence number; value: CBOR ``{"v": 1, "op": str, "a": [...]}``) before the
    call returns, through one FIFO writer; reads wait for earlier changes to be durable, so
    nothing a caller saw can be lost by a restart. :meth:`open` replays the journal into a
    fresh service, which is deterministic, so the service comes back exactly as it was.

    Everything journaled is what any delivery server sees anyway (MLS ciphertexts,
    Welcomes, public KeyPackages), so the journal needs no encryption.
    """

    def __init__(self, storage: Storage, *, namespace: str = "journal") -> None:
        self.service = LocalDeliveryService()
        self._storage = storage
        self._namespace = namespace
        self._next = 1
        self._failed: BaseException | None = None
        self._writer = BatchWriter(storage, self._on_write_failure)
        self.replayed = 0

    @classmethod
    async def open(cls, storage: Storage, *, namespace: str = "journal") -> JournaledDelivery:
        """The service as ``storage``'s journal left it (empty the first time)."""
        journaled = cls(storage, namespace=namespace)
        await journaled._replay()
        return journaled

    async def close(self) -> None:
        await self._writer.flush()
        await self._storage.close()

    # Delivery ---------------------------------------------------------------------------------

    async def post(self, envelope: bytes) -> bool:
        await self._ready()
        accepted = self.service.post_now(envelope)
        if accepted:
            await self._journal("post", [bytes(envelope)])
        else:
            await self._durable()
        return accepted

    async def fetch(self, conversation_id: ConversationId, position: int) -> LogPage:
        await self._ready()
        page = await self.service.fetch(conversation_id, position)
        await self._durable()
        return page

    async def send_welcome(self, device_ids: list[DeviceId], welcome: bytes) -> None:
        await self._ready()
        await self.service.send_welcome(device_ids, welcome)
        await self._journal("welcome", [[d.raw for d in device_ids], bytes(welcome)])

    async def fetch_welcomes(self, device_id: DeviceId) -> list[bytes]:
        await self._ready()
        welcomes = await self.service.fetch_welcomes(device_id)
        if welcomes:
            await self._journal("take_welcomes", [device_id.raw])
        else:
            await self._durable()
        return welcomes

    async def publish_key_packages(self, user_id: UserId, device_id: DeviceId, key_packages: list[bytes]) -> None:
        await self._ready()
        await self.service.publish_key_packages(user_id, device_id, key_packages)
        await self._journal("publish", [user_id.raw, device_id.raw, [bytes(kp) for kp in key_packages]])

    async def claim_key_package(self, device_id: DeviceId) -> bytes | None:
        await self._ready()
        key_package = await self.service.claim_key_package(device_id)
        if key_package is not None:
            await self._journal("claim", [device_id.raw])
        else:
            await self._durable()
        return key_package

    async def devices_of(self, user_id: UserId) -> list[DeviceId]:
        await self._ready()
        devices = await self.service.devices_of(user_id)
        await self._durable()
        return devices

    # ------------------------------------------------------------------------------------------

    def _journal(self, op: str, args: list[Any]) -> asyncio.Future[None]:
        """Append one entry (synchronously queued right after the change it records)."""
        batch = Batch()
        entry = codec.encode({"v": JOURNAL_VERSION, "op": op, "a": args})
        batch.put(self._namespace, _JOURNAL_KEY.pack(self._next), entry)
        self._next += 1
        return self._writer.submit(batch)

    async def _durable(self) -> None:
        """Wait until every change made so far is stored; fail if one could not be."""
        await self._writer.flush()
        if self._failed is not None:
            raise StorageError(f"the delivery journal could not be written ({self._failed}); retry")

    def _on_write_failure(self, error: BaseException) -> None:
        self._failed = error

    async def _ready(self) -> None:
        """After a failed journal write, rebuild memory from what the journal really holds."""
        if self._failed is not None:
            await self._writer.flush()
            self.service = LocalDeliveryService()
            self._next = 1
            await self._replay()
            self._failed = None

    async def _replay(self) -> None:
        service = self.service
        for key, value in await self._storage.scan(self._namespace):
            try:
                (seq,) = _JOURNAL_KEY.unpack(key)
                with codec.record(value, "DeliveryJournal", keys=frozenset({"v", "op", "a"}),
                                  versions=(JOURNAL_VERSION,), max_size=JOURNAL_MAX_ENTRY) as m:  # fmt: skip
                    op, args = m["op"], m["a"]
                await _apply(service, op, args)
            except (struct.error, PingError) as exc:
                raise errors.StorageCorrupted(
                    f"delivery journal entry {key.hex()} is unreadable ({exc}); nothing was deleted"
                ) from None
            self._next = seq + 1
            self.replayed += 1


async def _apply(service: LocalDeliveryService, op: Any, args: Any) -> None:
    """Replay one journal entry."""
    if not isinstance(args, list):
        raise InvalidInput("journal arguments must be an array")
    if op == "post" and len(args) == 1:
        service.post_now(_raw(args[0], "envelope"))
    elif op == "welcome" and len(args) == 2:
        await service.send_welcome([DeviceId.from_bytes(r) for r in _raw_list(args[0], "devices")], _raw(args[1], "w"))
    elif op == "take_welcomes" and len(args) == 1:
        await service.fetch_welcomes(DeviceId.from_bytes(_raw(args[0], "device")))
    elif op == "publish" and len(args) == 3:
        await service.publish_key_packages(
            UserId.from_bytes(_raw(args[0], "user")), DeviceId.from_bytes(_raw(args[1], "device")),
            _raw_list(args[2], "key_packages"),
        )  # fmt: skip
    elif op == "claim" and len(args) == 1:
        await service.claim_key_package(DeviceId.from_bytes(_raw(args[0], "device")))
    else:
        raise InvalidInput(f"unknown journal operation {op!r}")
