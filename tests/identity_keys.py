"""Ed25519 devices and device logs on CPython (``cryptography``), for the unit and relay tests.

A :class:`TestDevice` signs what a ping_web device signs with its MLS key
(``b"ping-web/" + label + b"\\x00" + content``); :class:`CryptographyVerifier` checks it. The
relay verifies with the same library, and the wasm module with ed25519-dalek: the tests in
``tests/pyodide`` check that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ping_web.core import devlog
from ping_web.core.devlog import LogEntry, LogOp
from ping_web.core.ids import DeviceId, UserId


def labeled(label: str, content: bytes) -> bytes:
    return b"ping-web/" + label.encode("ascii") + b"\x00" + content


class CryptographyVerifier:
    """:class:`~ping_web.core.devlog.SignatureVerifier` over ``cryptography``."""

    def verify(self, public_key: bytes, label: str, content: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, labeled(label, content))
        except (InvalidSignature, ValueError):
            return False
        return True


VERIFIER = CryptographyVerifier()


@dataclass
class TestDevice:
    """A device of ``user_id``: its key pair and id."""

    __test__ = False  # not a pytest class

    user_id: UserId
    device_id: DeviceId = field(default_factory=DeviceId.new)
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    label: str = ""

    @property
    def key(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, label: str, content: bytes) -> bytes:
        return self.private.sign(labeled(label, content))

    def consent(self) -> bytes:
        return self.sign(devlog.LABEL_CONSENT, devlog.consent_content(self.user_id, self.device_id, self.key))


def entry(op: LogOp, seq: int, prev: bytes, subject: TestDevice, signer: TestDevice, *, ts_ms: int = 1) -> bytes:
    """A signed entry: ``signer`` adds, revokes or (GENESIS) starts the log with ``subject``."""
    unsigned = devlog.unsigned_entry(
        op, subject.user_id, seq, prev, ts_ms, subject.device_id, subject.key, signer.key, subject.label
    )
    consent = subject.consent() if op is LogOp.ADD else None
    return devlog.signed(unsigned, signer.sign(devlog.LABEL_ENTRY, unsigned.tbs()), consent).encode()


def genesis(device: TestDevice) -> bytes:
    return devlog.genesis(device.user_id, device.device_id, device.key, device.sign, ts_ms=1, label=device.label)


class LogWriter:
    """Appends signed entries to one user's log, as its devices would."""

    def __init__(self, first: TestDevice) -> None:
        self.entries = [genesis(first)]

    @property
    def head(self) -> bytes:
        return LogEntry.decode(self.entries[-1]).hash

    def add(self, device: TestDevice, signer: TestDevice) -> bytes:
        data = entry(LogOp.ADD, len(self.entries), self.head, device, signer)
        self.entries.append(data)
        return data

    def revoke(self, device: TestDevice, signer: TestDevice) -> bytes:
        data = entry(LogOp.REVOKE, len(self.entries), self.head, device, signer)
        self.entries.append(data)
        return data
