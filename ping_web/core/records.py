"""What a conversation persists and reports besides its cursor.

Each record is a frozen value checked on construction, with a versioned deterministic
CBOR form (a map with short text keys and ``"v"``) that is what storage holds. ``decode``
reads untrusted or possibly corrupted bytes and raises only
:class:`~ping_web.errors.DecodeError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar, Final, Self

from ping_web.core import codec
from ping_web.core.envelope import ENVELOPE_MAX_SIZE, MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.errors import InvalidInput

MAX_NAME_BYTES: Final = 256
MAX_SIGNATURE_KEY: Final = 256
"""Ed25519 keys are 32 bytes; the bound leaves room for every MLS signature scheme."""
GROUP_SNAPSHOT_VERSION: Final = 1
GROUP_SNAPSHOT_HARD_CAP: Final = 8 << 20
"""Largest encoded GroupStateSnapshot (8 MiB): encode refuses more, decode reads no more."""

_META_KEYS: Final = frozenset({"v", "c", "n", "e", "m", "g", "t"})
_MEMBER_KEYS: Final = frozenset({"v", "u", "l", "k"})
_ADD_KEYS: Final = frozenset({"v", "c", "w"})
_SNAPSHOT_KEYS: Final = frozenset({"v", "g", "s", "t", "e"})
_LEAVES_KEYS: Final = frozenset({"v", "l"})
DEVICE_LEAVES_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class ConversationMeta:
    """The app-facing summary of a conversation, kept current with each applied commit."""

    VERSION: ClassVar[int] = 1

    id: ConversationId
    name: str | None
    epoch: int
    member_count: int
    is_device_group: bool
    created_at_ms: int

    def __post_init__(self) -> None:
        codec.instance(self.id, ConversationId, "id")
        if self.name is not None:
            codec.text(self.name, "name", hi=MAX_NAME_BYTES)
        codec.uint(self.epoch, "epoch")
        codec.uint(self.member_count, "member_count", lo=1, hi=codec.U32_MAX)
        codec.boolean(self.is_device_group, "is_device_group")
        codec.uint(self.created_at_ms, "created_at_ms")

    def encode(self) -> bytes:
        return codec.encode(
            {
                "v": self.VERSION,
                "c": self.id.raw,
                "n": self.name,
                "e": self.epoch,
                "m": self.member_count,
                "g": self.is_device_group,
                "t": self.created_at_ms,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        with codec.record(data, "ConversationMeta", keys=_META_KEYS, versions=(cls.VERSION,)) as m:
            return cls(ConversationId(m["c"]), m["n"], m["e"], m["m"], m["g"], m["t"])


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One leaf of the group: whose device it is (from its credential) and its key.

    A user with several devices appears once per device leaf.
    """

    VERSION: ClassVar[int] = 1

    user_id: UserId
    leaf_index: int
    signature_key: bytes

    def __post_init__(self) -> None:
        codec.instance(self.user_id, UserId, "user_id")
        codec.uint(self.leaf_index, "leaf_index", hi=codec.U32_MAX)
        codec.byte_string(self.signature_key, "signature_key", lo=1, hi=MAX_SIGNATURE_KEY)

    def encode(self) -> bytes:
        return codec.encode({"v": self.VERSION, "u": self.user_id.raw, "l": self.leaf_index, "k": self.signature_key})

    @classmethod
    def decode(cls, data: bytes) -> Self:
        with codec.record(data, "MemberInfo", keys=_MEMBER_KEYS, versions=(cls.VERSION,)) as m:
            return cls(UserId(m["u"]), m["l"], m["k"])


@dataclass(frozen=True, slots=True)
class AddOutcome:
    """Both halves of an add: the commit for the conversation, the welcome for the new devices.

    They come from one send: same conversation, sender and seq; the commit carries its
    source epoch and the welcome the epoch after it.
    """

    VERSION: ClassVar[int] = 1

    commit: MessageEnvelope
    welcome: MessageEnvelope

    def __post_init__(self) -> None:
        commit, welcome = self.commit, self.welcome
        codec.instance(commit, MessageEnvelope, "commit")
        codec.instance(welcome, MessageEnvelope, "welcome")
        if commit.kind is not MessageKind.COMMIT or welcome.kind is not MessageKind.WELCOME:
            raise InvalidInput(f"expected a COMMIT and a WELCOME, got {commit.kind.name} and {welcome.kind.name}")
        same = (commit.conversation_id, commit.sender_device, commit.seq) == (
            welcome.conversation_id,
            welcome.sender_device,
            welcome.seq,
        )
        if not same or welcome.epoch != commit.epoch + 1:
            raise InvalidInput("the welcome does not belong to the commit (conversation, sender, seq, epoch + 1)")

    def encode(self) -> bytes:
        return codec.encode({"v": self.VERSION, "c": self.commit.encode(), "w": self.welcome.encode()})

    @classmethod
    def decode(cls, data: bytes) -> Self:
        size = 2 * ENVELOPE_MAX_SIZE + 64
        with codec.record(data, "AddOutcome", keys=_ADD_KEYS, versions=(cls.VERSION,), max_size=size) as m:
            return cls(MessageEnvelope.decode(m["c"]), MessageEnvelope.decode(m["w"]))


@dataclass(frozen=True, slots=True)
class GroupStateSnapshot:
    """One group's OpenMLS storage entries, for backup and restore of this same device.

    ``entries`` are (key, value) pairs with unique keys; the constructor sorts them, so
    equal states give equal snapshots. The bytes hold past epoch secrets: never log them.
    """

    VERSION: ClassVar[int] = GROUP_SNAPSHOT_VERSION

    group_id: ConversationId
    openmls_storage_version: int
    snapshot_created_at_ms: int
    entries: tuple[tuple[bytes, bytes], ...]

    def __post_init__(self) -> None:
        codec.instance(self.group_id, ConversationId, "group_id")
        codec.uint(self.openmls_storage_version, "openmls_storage_version", hi=codec.U16_MAX)
        codec.uint(self.snapshot_created_at_ms, "snapshot_created_at_ms")
        if not isinstance(self.entries, (list, tuple)):
            raise InvalidInput(f"entries: expected a list of (key, value), got {type(self.entries).__name__}")
        entries = sorted(_snapshot_entry(entry) for entry in self.entries)
        for (key, _), (next_key, _) in pairwise(entries):
            if key == next_key:
                raise InvalidInput(f"entries: key {key.hex()} appears twice")
        object.__setattr__(self, "entries", tuple(entries))

    def encode(self) -> bytes:
        """The snapshot bytes; :class:`InvalidInput` if they pass GROUP_SNAPSHOT_HARD_CAP."""
        data = codec.encode(
            {
                "v": self.VERSION,
                "g": self.group_id.raw,
                "s": self.openmls_storage_version,
                "t": self.snapshot_created_at_ms,
                "e": dict(self.entries),
            }
        )
        if len(data) > GROUP_SNAPSHOT_HARD_CAP:
            raise InvalidInput(f"snapshot is {len(data)} bytes, over the {GROUP_SNAPSHOT_HARD_CAP}-byte cap")
        return data

    @classmethod
    def decode(cls, data: bytes) -> Self:
        with codec.record(
            data, "GroupStateSnapshot", keys=_SNAPSHOT_KEYS, versions=(cls.VERSION,), max_size=GROUP_SNAPSHOT_HARD_CAP
        ) as m:
            entries = tuple(codec.bytes_map(m["e"], "entries").items())
            return cls(ConversationId(m["g"]), m["s"], m["t"], entries)


def _snapshot_entry(entry: Any) -> tuple[bytes, bytes]:
    key, value = codec.array(entry, "entries[]", size=2)
    return codec.byte_string(key, "entry key", lo=1), codec.byte_string(value, "entry value")


# -- device -> leaf map (which leaf to remove when a device is revoked) ---------------------


def encode_device_leaves(leaves: Mapping[DeviceId, int]) -> bytes:
    """``{"v": 1, "l": {device: leaf}}``; :class:`InvalidInput` if two devices share a leaf."""
    _check_device_leaves(leaves.items())
    return codec.encode({"v": DEVICE_LEAVES_VERSION, "l": {device.raw: leaf for device, leaf in leaves.items()}})


def decode_device_leaves(data: bytes) -> dict[DeviceId, int]:
    with codec.record(data, "device leaves", keys=_LEAVES_KEYS, versions=(DEVICE_LEAVES_VERSION,)) as m:
        leaves = {DeviceId(key): leaf for key, leaf in codec.bytes_map(m["l"], "leaves").items()}
        _check_device_leaves(leaves.items())
        return leaves


def _check_device_leaves(pairs: Iterable[tuple[DeviceId, int]]) -> None:
    owners: dict[int, DeviceId] = {}
    for device, leaf in pairs:
        codec.instance(device, DeviceId, "device")
        codec.uint(leaf, "leaf index", hi=codec.U32_MAX)
        if (other := owners.setdefault(leaf, device)) != device:
            raise InvalidInput(f"leaf {leaf} is claimed by both {other!r} and {device!r}")
