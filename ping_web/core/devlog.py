"""A user's device log: the append-only, hash-chained list of the devices that speak for a user.

The relay stores and serves it; it cannot write it. The first device of a user signs the
genesis entry; every later device is added by an entry signed by a device already active in
the log (and by the new device's own consent signature), and revoked the same way. Each
entry names the SHA-256 of the one before, so a client that pinned a head notices any
rollback, fork or reordering (``docs/design.md``, "Identity").

Entry bytes (``docs/wire-format.md``, "Device log")::

    tbs   = ver u8 (1) || op u8 || len(user_id) u8 || user_id || seq u64 || prev 32 || ts_ms u64
            || device_id 16 || device_key 32 || signer_key 32 || len(label) u8 || label (UTF-8)
    entry = tbs || signature 64 (by signer_key over "ping-web/devlog-entry\\0" || tbs)
            || consent 64 (ADD only: by device_key over "ping-web/devlog-consent\\0" || consent_content)

Signatures are checked through a :class:`SignatureVerifier` (the wasm module's Ed25519 in a
client, ``cryptography`` on the relay and in CPython tests): this module does no crypto of
its own beyond SHA-256, and no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final, NoReturn, Protocol

from ping_web.core.ids import DeviceId, UserId
from ping_web.errors import DeviceLogInvalid, IdentityChanged, IdentityChangeKind

FORMAT_VERSION: Final = 1
HASH_SIZE: Final = 32
KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
MAX_LABEL_BYTES: Final = 64
MAX_ACTIVE_DEVICES: Final = 16
"""Devices active at once per user (the log's length is not capped: revocations stay possible)."""
MAX_LOG_ENTRIES: Final = 4096
"""Entries a client or relay accepts in one user's log: bounds memory against a hostile relay."""
LABEL_ENTRY: Final = "devlog-entry"
LABEL_CONSENT: Final = "devlog-consent"
NO_PREV: Final = bytes(HASH_SIZE)

_FIXED = struct.Struct(">Q32sQ16s32s32s")  # seq, prev, ts_ms, device_id, device_key, signer_key
MAX_ENTRY_SIZE: Final = 3 + 255 + _FIXED.size + 1 + MAX_LABEL_BYTES + 2 * SIGNATURE_SIZE


class LogOp(IntEnum):
    """What an entry does."""

    GENESIS = 0
    ADD = 1
    REVOKE = 2


class DeviceStatus(Enum):
    """Where a signature key stands in a user's log."""

    ACTIVE = "active"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class SignatureVerifier(Protocol):
    """Ed25519 over ``b"ping-web/" + label + b"\\x00" + content`` (what devices sign with
    ``sign_with_label``); strict verification (no small-order keys, canonical signatures)."""

    def verify(self, public_key: bytes, label: str, content: bytes, signature: bytes) -> bool: ...


def consent_content(user_id: UserId, device_id: DeviceId, device_key: bytes) -> bytes:
    """What a new device signs to agree to be ``user_id``'s device ``device_id``:
    ``len(user_id) u8 || user_id || device_id 16 || device_key 32``. It does not bind the log
    position, so a device can sign it before it knows the log; a key never returns to a log
    once revoked, so the consent cannot be replayed to add it again."""
    return bytes([len(user_id.raw)]) + user_id.raw + device_id.raw + device_key


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of a user's device log, as signed."""

    op: LogOp
    user_id: UserId
    seq: int
    prev: bytes
    ts_ms: int
    device_id: DeviceId
    device_key: bytes
    signer_key: bytes
    label: str
    signature: bytes
    consent: bytes | None = None
    raw: bytes = dataclasses.field(default=b"", compare=False, repr=False)
    """The bytes it was decoded from (they equal :meth:`encode`; kept to hash and check
    signatures without building them again)."""

    def tbs(self) -> bytes:
        """The bytes the signer signed (under :data:`LABEL_ENTRY`)."""
        if self.raw:
            return self.raw[: len(self.raw) - (2 if self.consent is not None else 1) * SIGNATURE_SIZE]
        label = self.label.encode("utf-8")
        fixed = _FIXED.pack(self.seq, self.prev, self.ts_ms, self.device_id.raw, self.device_key, self.signer_key)
        user = self.user_id.raw
        return bytes([FORMAT_VERSION, int(self.op), len(user)]) + user + fixed + bytes([len(label)]) + label

    def encode(self) -> bytes:
        return self.raw or self.tbs() + self.signature + (self.consent or b"")

    @property
    def hash(self) -> bytes:
        """SHA-256 of the encoded entry: what the next entry names as ``prev``."""
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> LogEntry:
        """Parse one entry strictly; :class:`DeviceLogInvalid` for anything malformed."""
        if not isinstance(data, (bytes, bytearray)):
            raise DeviceLogInvalid(f"a log entry must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not 3 <= len(data) <= MAX_ENTRY_SIZE:
            raise DeviceLogInvalid(f"a log entry of {len(data)} bytes is outside 3..{MAX_ENTRY_SIZE}")
        version, op_byte, user_len = data[0], data[1], data[2]
        if version != FORMAT_VERSION:
            raise DeviceLogInvalid(f"log entry format {version} is not supported")
        try:
            op = LogOp(op_byte)
        except ValueError:
            raise DeviceLogInvalid(f"unknown log operation {op_byte}") from None
        pos = 3 + user_len
        end_fixed = pos + _FIXED.size
        if user_len == 0 or len(data) < end_fixed + 1:
            raise DeviceLogInvalid("the log entry is truncated")
        user_id = UserId(data[3:pos])
        seq, prev, ts_ms, device, device_key, signer_key = _FIXED.unpack_from(data, pos)
        label_len = data[end_fixed]
        label_end = end_fixed + 1 + label_len
        signatures = 2 if op is LogOp.ADD else 1
        if label_len > MAX_LABEL_BYTES or len(data) != label_end + signatures * SIGNATURE_SIZE:
            raise DeviceLogInvalid("the log entry's label or signatures have the wrong length")
        try:
            label = data[end_fixed + 1 : label_end].decode("utf-8")
        except UnicodeDecodeError:
            raise DeviceLogInvalid("the log entry's label is not UTF-8") from None
        if not label.isprintable():
            raise DeviceLogInvalid("the log entry's label has control characters")
        signature = data[label_end : label_end + SIGNATURE_SIZE]
        consent = data[label_end + SIGNATURE_SIZE :] if op is LogOp.ADD else None
        return cls(op, user_id, seq, prev, ts_ms, DeviceId(device), device_key, signer_key, label, signature, consent,
                   data)  # fmt: skip


def unsigned_entry(
    op: LogOp, user_id: UserId, seq: int, prev: bytes, ts_ms: int, device_id: DeviceId, device_key: bytes,
    signer_key: bytes, label: str = "",
) -> LogEntry:  # fmt: skip
    """An entry without signatures yet (sign its :meth:`LogEntry.tbs`, then :func:`signed`)."""
    if len(label.encode("utf-8")) > MAX_LABEL_BYTES or not label.isprintable():
        raise DeviceLogInvalid(f"a device label is printable text of at most {MAX_LABEL_BYTES} bytes")
    if len(prev) != HASH_SIZE or len(device_key) != KEY_SIZE or len(signer_key) != KEY_SIZE:
        raise DeviceLogInvalid("prev is 32 bytes and keys are 32-byte Ed25519 public keys")
    if not 0 <= seq < 1 << 63 or not 0 <= ts_ms < 1 << 63:
        raise DeviceLogInvalid("seq and ts_ms are 63-bit unsigned integers")
    return LogEntry(op, user_id, seq, prev, ts_ms, device_id, device_key, signer_key, label, b"", None, b"")


def signed(entry: LogEntry, signature: bytes, consent: bytes | None = None) -> LogEntry:
    """``entry`` with its signer's signature (and, for an ADD, the new device's consent)."""
    if len(signature) != SIGNATURE_SIZE or (entry.op is LogOp.ADD) != (consent is not None):
        raise DeviceLogInvalid("an entry has one 64-byte signature, and an ADD also a 64-byte consent")
    if consent is not None and len(consent) != SIGNATURE_SIZE:
        raise DeviceLogInvalid("a consent signature is 64 bytes")
    return dataclasses.replace(
        entry, signature=bytes(signature), consent=None if consent is None else bytes(consent), raw=b""
    )


Sign = Callable[[str, bytes], bytes]
"""``sign(label, content)``: a device's Ed25519 signature over ``b"ping-web/" + label + b"\\x00"
+ content`` (``Identity.sign_with_label`` in a client; ``cryptography`` in tests and tools)."""


def genesis(user_id: UserId, device_id: DeviceId, key: bytes, sign: Sign, *, ts_ms: int, label: str = "") -> bytes:
    """The genesis entry of ``user_id``'s log, by its first device (``key``, signing with ``sign``)."""
    unsigned = unsigned_entry(LogOp.GENESIS, user_id, 0, NO_PREV, ts_ms, device_id, key, key, label)
    return signed(unsigned, sign(LABEL_ENTRY, unsigned.tbs())).encode()


@dataclass(frozen=True, slots=True)
class LogDevice:
    """A device as the log knows it."""

    device_id: DeviceId
    key: bytes
    label: str
    added_seq: int
    added_ms: int
    added_by: bytes
    """The signature key of the device that added it (its own for the first device)."""
    revoked_seq: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_seq is None


@dataclass(frozen=True, slots=True)
class LogChange:
    """One applied entry, for events and display ("ann linked 'Laptop'")."""

    op: LogOp
    device: LogDevice
    signer_key: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class DeviceLog:
    """A verified device log: its root and head, and every device it ever named.

    Immutable: :meth:`extend` returns a new log, so a refused page changes nothing.
    """

    user_id: UserId
    root: bytes
    """SHA-256 of the genesis entry: the user's identity (safety numbers are over it)."""
    seq: int
    head: bytes
    devices: tuple[LogDevice, ...]
    entries: tuple[bytes, ...]

    @classmethod
    def start(cls, genesis: bytes, verifier: SignatureVerifier | None) -> DeviceLog:
        """The log made of its genesis entry (``verifier`` ``None``: entries read back from
        this device's own storage, already verified once)."""
        entry = LogEntry.decode(genesis)
        if entry.op is not LogOp.GENESIS or entry.seq != 0 or entry.prev != NO_PREV:
            raise DeviceLogInvalid("a log starts with a genesis entry at seq 0 with no previous entry")
        if entry.signer_key != entry.device_key:
            raise DeviceLogInvalid("the genesis entry is signed by the first device itself")
        _check_signatures(entry, verifier)
        device = LogDevice(entry.device_id, entry.device_key, entry.label, 0, entry.ts_ms, entry.signer_key)
        digest = entry.hash
        return cls(entry.user_id, digest, 0, digest, (device,), (bytes(genesis),))

    @classmethod
    def replay(cls, entries: Sequence[bytes], verifier: SignatureVerifier | None) -> DeviceLog:
        """A whole log from its genesis on."""
        if not entries:
            raise DeviceLogInvalid("an empty device log")
        log = cls.start(entries[0], verifier)
        return log.extend(entries[1:], verifier)[0] if len(entries) > 1 else log

    def extend(self, entries: Iterable[bytes], verifier: SignatureVerifier | None) -> tuple[DeviceLog, list[LogChange]]:
        """This log with ``entries`` (seq, seq + 1, ...) appended, and what they changed.

        Raises :class:`DeviceLogInvalid` (nothing applied) for a malformed entry, a broken
        chain or a rule broken: a signer that is not active, a key or device id that comes
        back, more than :data:`MAX_ACTIVE_DEVICES` active, the last device revoked."""
        devices = {d.key: d for d in self.devices}
        ids = {d.device_id for d in self.devices}
        seq, head, raw = self.seq, self.head, list(self.entries)
        changes: list[LogChange] = []
        for data in entries:
            if len(raw) >= MAX_LOG_ENTRIES:
                raise DeviceLogInvalid(f"a device log of more than {MAX_LOG_ENTRIES} entries")
            entry = LogEntry.decode(data)
            if entry.user_id != self.user_id:
                raise DeviceLogInvalid(f"entry {entry.seq} belongs to another user")
            if entry.seq != seq + 1 or entry.prev != head:
                raise DeviceLogInvalid(f"entry {entry.seq} does not follow entry {seq} (broken chain)")
            signer = devices.get(entry.signer_key)
            if signer is None or not signer.active:
                raise DeviceLogInvalid(f"entry {entry.seq} is signed by a device that is not active in the log")
            device = _apply(entry, devices, ids)
            _check_signatures(entry, verifier)
            devices[device.key] = device
            ids.add(device.device_id)
            changes.append(LogChange(entry.op, device, entry.signer_key, entry.seq))
            seq, head = entry.seq, entry.hash
            raw.append(bytes(data))
        log = DeviceLog(self.user_id, self.root, seq, head, tuple(devices.values()), tuple(raw))
        return log, changes

    def accept(
        self, entries: Sequence[bytes], head_seq: int, verifier: SignatureVerifier | None
    ) -> tuple[DeviceLog, list[LogChange]]:
        """Extend this (pinned) log with a relay's page of the entries after :attr:`seq`,
        whose log ends at ``head_seq`` (-1: the relay has no log for the user).

        :class:`IdentityChanged` if the page does not extend the pin (rollback or fork);
        :class:`DeviceLogInvalid` if an entry is bad."""
        first = LogEntry.decode(entries[0]) if entries else None
        if first is not None and first.seq == 0 and first.hash != self.root:
            raise IdentityChanged(
                f"the relay's device log of user {self.user_id.hex} starts with another first device: "
                "a different identity; refused until accepted",
                self.user_id, IdentityChangeKind.NEW_ROOT,
            )  # fmt: skip
        if head_seq < self.seq:
            raise IdentityChanged(
                f"the relay's device log of user {self.user_id.hex} ends at entry {head_seq}, before the "
                f"entry {self.seq} this device verified: a rollback; refused",
                self.user_id, IdentityChangeKind.ROLLBACK,
            )  # fmt: skip
        if first is not None and first.seq == 0:
            if not self._is_prefix_of(entries):
                _fork(self)
            entries = entries[self.seq + 1 :]
        elif first is not None and first.seq == self.seq + 1 and first.prev != self.head:
            _fork(self)
        return self.extend(entries, verifier)

    def _is_prefix_of(self, entries: Sequence[bytes]) -> bool:
        return len(entries) > self.seq and all(bytes(a) == b for a, b in zip(entries, self.entries, strict=False))

    # -- reading ---------------------------------------------------------------------------

    def status(self, key: bytes) -> DeviceStatus:
        for device in self.devices:
            if device.key == key:
                return DeviceStatus.ACTIVE if device.active else DeviceStatus.REVOKED
        return DeviceStatus.UNKNOWN

    def device_by_key(self, key: bytes) -> LogDevice | None:
        return next((d for d in self.devices if d.key == key), None)

    def device_by_id(self, device_id: DeviceId) -> LogDevice | None:
        return next((d for d in self.devices if d.device_id == device_id), None)

    def active(self) -> list[LogDevice]:
        """The devices that speak for the user now, in the order they were added."""
        return [d for d in self.devices if d.active]


def _fork(log: DeviceLog) -> NoReturn:
    raise IdentityChanged(
        f"the relay's device log of user {log.user_id.hex} diverges from the one this device verified "
        f"at entry {log.seq}: a fork; refused",
        log.user_id, IdentityChangeKind.FORK,
    )  # fmt: skip


def _apply(entry: LogEntry, devices: dict[bytes, LogDevice], ids: set[DeviceId]) -> LogDevice:
    """The device an entry adds or revokes, checked against the log's rules."""
    if entry.op is LogOp.GENESIS:
        raise DeviceLogInvalid(f"entry {entry.seq}: a genesis entry only starts a log")
    if entry.op is LogOp.ADD:
        if entry.device_key in devices or entry.device_id in ids:
            raise DeviceLogInvalid(f"entry {entry.seq}: that device key or id was in the log before")
        if sum(d.active for d in devices.values()) >= MAX_ACTIVE_DEVICES:
            raise DeviceLogInvalid(f"entry {entry.seq}: a user has at most {MAX_ACTIVE_DEVICES} active devices")
        return LogDevice(entry.device_id, entry.device_key, entry.label, entry.seq, entry.ts_ms, entry.signer_key)
    target = devices.get(entry.device_key)
    if target is None or not target.active or target.device_id != entry.device_id:
        raise DeviceLogInvalid(f"entry {entry.seq}: revokes a device that is not active in the log")
    if sum(d.active for d in devices.values()) == 1:
        raise DeviceLogInvalid(f"entry {entry.seq}: the last active device cannot be revoked")
    return dataclasses.replace(target, revoked_seq=entry.seq)


def _check_signatures(entry: LogEntry, verifier: SignatureVerifier | None) -> None:
    if verifier is None:
        return
    if not verifier.verify(entry.signer_key, LABEL_ENTRY, entry.tbs(), entry.signature):
        raise DeviceLogInvalid(f"entry {entry.seq}: the signature does not verify")
    if entry.op is LogOp.ADD:
        content = consent_content(entry.user_id, entry.device_id, entry.device_key)
        if entry.consent is None or not verifier.verify(entry.device_key, LABEL_CONSENT, content, entry.consent):
            raise DeviceLogInvalid(f"entry {entry.seq}: the new device's consent does not verify")
