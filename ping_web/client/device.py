"""The device: its identity record and the user's device group.

A device is one installation of the app: a signing identity (its key pair lives in the
OpenMLS working set; the record keeps the public key), a DeviceId and the user it belongs
to. A user's devices share a device group whose id is derived from the user, so every
device of the user finds it without asking anyone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar, Final, Self

from ping_web.core import codec
from ping_web.core.ids import ConversationId, DeviceId, UserId

DEVICE_GROUP_NAME: Final = "devices"


def device_group_id(user_id: UserId) -> ConversationId:
    """The id of a user's device group: derived from the user, so every device finds it."""
    return ConversationId(hashlib.sha256(b"ping/device-group/" + user_id.raw).digest()[:16])


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """This device's identity, stored once (``client.keys.DEVICE_RECORD``)."""

    VERSION: ClassVar[int] = 1
    _KEYS: ClassVar[frozenset[str]] = frozenset({"v", "u", "d", "k", "t"})

    user_id: UserId
    device_id: DeviceId
    public_key: bytes
    created_at_ms: int

    def encode(self) -> bytes:
        return codec.encode(
            {"v": self.VERSION, "u": self.user_id.raw, "d": self.device_id.raw, "k": self.public_key,
             "t": self.created_at_ms}
        )  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Self:
        with codec.record(data, "DeviceRecord", keys=cls._KEYS, versions=(cls.VERSION,)) as m:
            return cls(UserId(m["u"]), DeviceId(m["d"]), codec.byte_string(m["k"], "public_key", lo=1, hi=256),
                       codec.uint(m["t"], "created_at_ms"))  # fmt: skip
