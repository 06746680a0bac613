"""Linking a new device to a user: a short code shown on a device the user already has.

The existing device makes a :class:`LinkCode` (80 random bits, shown as 16 characters) and
the new device's user types it in. The code never reaches the relay: the relay sees only
the slot it names (:attr:`LinkCode.link_id`, a hash of it), and both messages through that
slot carry an HMAC under a key derived from the code. So the relay cannot put its own
device in the new device's place, nor tell the new device a made-up identity:

* :class:`LinkRequest` (new -> existing): the new device's id, key, label, its consent
  signature for the log entry (:func:`~ping_web.core.devlog.consent_content`) and a few
  KeyPackages (for the user's device group and conversations);
* :class:`LinkAnswer` (existing -> new): the root of the user's device log and the hash of
  the entry that added the new device, so the new device pins the right log.

Pure: no I/O, SHA-256 and HMAC only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self

from ping_web.core import codec
from ping_web.core.devlog import HASH_SIZE, KEY_SIZE, MAX_LABEL_BYTES, SIGNATURE_SIZE
from ping_web.core.ids import DeviceId, UserId
from ping_web.errors import InvalidInput, LinkFailed, PingError

SECRET_SIZE: Final = 10
LINK_ID_SIZE: Final = 16
MAC_SIZE: Final = 32
MAX_KEY_PACKAGE: Final = 4 * 1024
MAX_LINK_KEY_PACKAGES: Final = 32
"""KeyPackages a link request carries: the existing device adds the new one with them to the
user's device group and its conversations (as many as it has KeyPackages for)."""
MAX_LINK_MESSAGE: Final = MAX_LINK_KEY_PACKAGES * MAX_KEY_PACKAGE + 1024
"""Largest link request or answer: what a relay's link slot must hold."""
_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_READS_AS: Final = {"O": "0", "I": "1", "L": "1"}
_OUTER_KEYS: Final = frozenset({"v", "b", "m"})


@dataclass(frozen=True, slots=True)
class LinkCode:
    """The secret a user carries from the existing device to the new one."""

    secret: bytes

    def __post_init__(self) -> None:
        codec.byte_string(self.secret, "link secret", size=SECRET_SIZE)

    @classmethod
    def new(cls) -> LinkCode:
        return cls(os.urandom(SECRET_SIZE))

    @classmethod
    def parse(cls, text: str) -> LinkCode:
        """Read a typed code: case, spaces and dashes do not matter, O reads as 0, I and L as 1."""
        if not isinstance(text, str):
            raise InvalidInput("a link code is text")
        chars = [_READS_AS.get(c, c) for c in text.upper() if c not in " -"]
        if len(chars) != 16 or any(c not in _ALPHABET for c in chars):
            raise InvalidInput("a link code is 16 letters and digits, as the other device shows it")
        value = 0
        for c in chars:
            value = value << 5 | _ALPHABET.index(c)
        return cls(value.to_bytes(SECRET_SIZE, "big"))

    def __str__(self) -> str:
        value = int.from_bytes(self.secret, "big")
        chars = "".join(_ALPHABET[(value >> shift) & 31] for shift in range(75, -1, -5))
        return "-".join(chars[i : i + 4] for i in range(0, 16, 4))

    def __repr__(self) -> str:
        return "LinkCode(…)"  # never the secret in logs

    @property
    def link_id(self) -> bytes:
        """The relay slot both messages go through (the relay learns only this)."""
        return hashlib.sha256(b"ping-web/link-id\x00" + self.secret).digest()[:LINK_ID_SIZE]

    def mac(self, purpose: bytes, content: bytes) -> bytes:
        key = hashlib.sha256(b"ping-web/link-key\x00" + self.secret).digest()
        return hmac.new(key, purpose + b"\x00" + self.link_id + content, hashlib.sha256).digest()


class _Sealed:
    """A message through the link slot: CBOR fields plus an HMAC over them under the code."""

    PURPOSE: ClassVar[bytes]
    NAME: ClassVar[str]
    KEYS: ClassVar[frozenset[str]]

    def fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def seal(self, code: LinkCode) -> bytes:
        body = codec.encode({"v": 1, **self.fields()})
        return codec.encode({"v": 1, "b": body, "m": code.mac(self.PURPOSE, body)})

    @classmethod
    def _open(cls, data: bytes, code: LinkCode) -> dict[str, Any]:
        try:
            with codec.record(data, cls.NAME, keys=_OUTER_KEYS, versions=(1,), max_size=MAX_LINK_MESSAGE) as outer:
                body = codec.byte_string(outer["b"], "body", hi=MAX_LINK_MESSAGE)
                mac = codec.byte_string(outer["m"], "mac", size=MAC_SIZE)
        except PingError:
            raise LinkFailed(f"the {cls.NAME} through the relay is malformed") from None
        if not hmac.compare_digest(mac, code.mac(cls.PURPOSE, body)):
            raise LinkFailed(f"the {cls.NAME} was not made with this link code (wrong code, or the relay changed it)")
        with codec.record(body, cls.NAME, keys=cls.KEYS, versions=(1,), max_size=MAX_LINK_MESSAGE) as fields:
            return dict(fields)


@dataclass(frozen=True, slots=True)
class LinkRequest(_Sealed):
    """What the new device asks to be added as."""

    PURPOSE: ClassVar[bytes] = b"request"
    NAME: ClassVar[str] = "LinkRequest"
    KEYS: ClassVar[frozenset[str]] = frozenset({"v", "u", "d", "k", "l", "c", "p"})

    user_id: UserId
    device_id: DeviceId
    device_key: bytes
    label: str
    consent: bytes
    key_packages: tuple[bytes, ...]

    def fields(self) -> dict[str, Any]:
        return {"u": self.user_id.raw, "d": self.device_id.raw, "k": self.device_key, "l": self.label,
                "c": self.consent, "p": list(self.key_packages)}  # fmt: skip

    @classmethod
    def open(cls, data: bytes, code: LinkCode) -> Self:
        """Check the HMAC, then read; :class:`LinkFailed` if it was not made with ``code``."""
        m = cls._open(data, code)
        try:
            return cls(UserId(codec.byte_string(m["u"], "user_id", lo=1, hi=255)), DeviceId(m["d"]),
                       codec.byte_string(m["k"], "device_key", size=KEY_SIZE),
                       codec.text(m["l"], "label", hi=MAX_LABEL_BYTES),
                       codec.byte_string(m["c"], "consent", size=SIGNATURE_SIZE),
                       tuple(codec.byte_string(kp, "key_package", lo=1, hi=MAX_KEY_PACKAGE)
                             for kp in codec.items(m["p"], "key_packages", hi=MAX_LINK_KEY_PACKAGES)))  # fmt: skip
        except PingError as exc:
            raise LinkFailed(f"the link request is malformed: {exc}") from None


@dataclass(frozen=True, slots=True)
class LinkAnswer(_Sealed):
    """What the existing device answers once the new one is in the log."""

    PURPOSE: ClassVar[bytes] = b"answer"
    NAME: ClassVar[str] = "LinkAnswer"
    KEYS: ClassVar[frozenset[str]] = frozenset({"v", "r", "s", "h"})

    root: bytes
    """The root of the user's device log (its identity)."""
    seq: int
    entry_hash: bytes
    """The hash of the entry (at ``seq``) that added the new device."""

    def fields(self) -> dict[str, Any]:
        return {"r": self.root, "s": self.seq, "h": self.entry_hash}

    @classmethod
    def open(cls, data: bytes, code: LinkCode) -> Self:
        m = cls._open(data, code)
        try:
            return cls(codec.byte_string(m["r"], "root", size=HASH_SIZE), codec.uint(m["s"], "seq", lo=1),
                       codec.byte_string(m["h"], "entry_hash", size=HASH_SIZE))  # fmt: skip
        except PingError as exc:
            raise LinkFailed(f"the link answer is malformed: {exc}") from None
