"""Helpers for tests and demos that drive conversations without a client or storage.

:class:`LocalDevice` is one device with its own wasm instance. After every operation it
folds the provider's checkpoint into :attr:`LocalDevice.stored`, a dict that stands in for
durable storage, exactly as :class:`~ping_web.client.MessagingClient` does with a real
backend; so a test can "restart" a device from what was stored.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TypeVar

from ping_web.core.conversation import Conversation
from ping_web.core.envelope import MessageEnvelope
from ping_web.core.ids import DeviceId
from ping_web.errors import StorageUnavailable
from ping_web.mls.engine import OpenMlsEngine
from ping_web.mls.openmls import MlsRuntime
from ping_web.storage.base import Batch, Storage

T = TypeVar("T")


def over_the_wire(envelope: MessageEnvelope) -> MessageEnvelope:
    """The envelope as a receiver decodes it: encoded, then decoded and validated."""
    return MessageEnvelope.decode(envelope.encode())


class LocalDevice:
    """A device of ``user``: wasm instance, provider, identity, device id, stored entries."""

    def __init__(self, user: bytes, *, runtime: MlsRuntime | None = None) -> None:
        self.user = user
        self.runtime = runtime or MlsRuntime.load()
        self.provider = self.runtime.provider()
        self.identity = self.provider.create_identity(user)
        self.device_id = DeviceId.new()
        self.stored: dict[bytes, bytes] = {}
        self.persist()

    @property
    def engine(self) -> OpenMlsEngine:
        """This device's MLS engine (provider and identity)."""
        return OpenMlsEngine(self.provider, self.identity)

    def persist(self) -> None:
        """Fold the provider's changes since the last checkpoint into :attr:`stored`."""
        for key, value in self.provider.checkpoint():
            if value is None:
                self.stored.pop(key, None)
            else:
                self.stored[key] = value

    def run(self, operation: Callable[[], T]) -> T:
        """Run one operation and checkpoint after it, whether it succeeded or not."""
        try:
            return operation()
        finally:
            self.persist()

    def key_package(self) -> bytes:
        return self.run(self.identity.key_package)

    def create(self, now_ms: int, **kwargs: object) -> Conversation:
        return self.run(lambda: Conversation.create(self.engine, self.device_id, now_ms, **kwargs))  # type: ignore[arg-type]

    def join(self, welcome: MessageEnvelope, now_ms: int) -> Conversation:
        return self.run(lambda: Conversation.join(self.engine, self.device_id, welcome, now_ms))

    def restarted(self) -> LocalDevice:
        """This device after a restart: a fresh wasm instance restored from :attr:`stored`."""
        clone = LocalDevice.__new__(LocalDevice)
        clone.user = self.user
        clone.runtime = MlsRuntime.load()
        clone.provider = clone.runtime.provider()
        clone.provider.restore(self.stored.items())
        clone.identity = clone.provider.load_identity(self.user, self.identity.public_key)
        clone.device_id = self.device_id
        clone.stored = dict(self.stored)
        return clone


def deliver(envelope: MessageEnvelope, receivers: list[tuple[LocalDevice, Conversation]], now_ms: int) -> list[object]:
    """Send ``envelope`` over the wire to each ``(device, conversation)``; returns each result."""
    wire = over_the_wire(envelope)
    return [device.run(functools.partial(conversation.process, wire, now_ms)) for device, conversation in receivers]


class SimulatedCrash(BaseException):
    """The process "died" inside a storage write (a BaseException, so nothing catches it)."""


class FaultyStorage:
    """Wraps a storage; the ``fail_at``-th commit (1-based) fails in the chosen way.

    ``mode``: ``"error"`` raises StorageUnavailable and applies nothing; ``"crash"`` raises
    :class:`SimulatedCrash` and applies nothing; ``"crash_after"`` applies the batch, then
    raises :class:`SimulatedCrash` (the write landed, its acknowledgement did not).
    ``delay`` seconds are awaited inside every commit (a slow disk).
    """

    def __init__(self, inner: Storage, *, fail_at: int | None = None, mode: str = "error", delay: float = 0.0) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.mode = mode
        self.delay = delay
        self.commits = 0
        self.in_flight = 0

    async def get(self, namespace: str, key: bytes) -> bytes | None:
        return await self.inner.get(namespace, key)

    async def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        return await self.inner.scan(namespace, prefix)

    async def commit(self, batch: Batch) -> None:
        self.commits += 1
        self.in_flight += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.commits == self.fail_at and self.mode == "error":
                raise StorageUnavailable(f"injected failure of write {self.commits}")
            if self.commits == self.fail_at and self.mode == "crash":
                raise SimulatedCrash(f"crash in write {self.commits}")
            await self.inner.commit(batch)
            if self.commits == self.fail_at and self.mode == "crash_after":
                raise SimulatedCrash(f"crash after write {self.commits}")
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        await self.inner.close()
