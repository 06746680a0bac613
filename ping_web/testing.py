"""Helpers for tests and demos that drive conversations without a client or storage.

:class:`LocalDevice` is one device with its own wasm instance. After every operation it
folds the provider's checkpoint into :attr:`LocalDevice.stored`, a dict that stands in for
durable storage, exactly as :class:`~ping_web.client.MessagingClient` does with a real
backend; so a test can "restart" a device from what was stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .conversation import Conversation
from .envelope import MessageEnvelope
from .ids import DeviceId
from .mls import MlsRuntime

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
        return self.run(lambda: Conversation.create(self.provider, self.identity, self.device_id, now_ms, **kwargs))  # type: ignore[arg-type]

    def join(self, welcome: MessageEnvelope, now_ms: int) -> Conversation:
        return self.run(lambda: Conversation.join(self.provider, self.identity, self.device_id, welcome, now_ms))

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


def deliver(
    envelope: MessageEnvelope, receivers: list[tuple[LocalDevice, Conversation]], now_ms: int
) -> list[object]:
    """Send ``envelope`` over the wire to each ``(device, conversation)``; returns each result."""
    wire = over_the_wire(envelope)
    return [device.run(lambda conversation=conversation: conversation.process(wire, now_ms)) for device, conversation in receivers]
