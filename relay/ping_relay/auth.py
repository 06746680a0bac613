"""The signed statements a device makes to the relay, and tokens.

Every signature is pure Ed25519 by the device's MLS signature key over

    b"ping-web/" + label + b"\\x00" + content

with an ASCII ``label``. The labels and contents (docs/relay.md, "Signatures"):

* ``relay-register``: device_id (16) || signature_public_key (32) || len(user_id) (1)
  || user_id || origin (UTF-8)
* ``relay-auth``: challenge (32) || device_id (16) || origin (UTF-8)
* ``relay-roster``: group_id (16) || commit epoch (u64 BE) || commit content_hash (32)
  || count (u32 BE) || added ids sorted (16 each) || count (u32 BE) || removed ids sorted

Tokens and challenges are 32 random bytes; the relay stores SHA-256 of a token, never the token.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import ed25519

PREFIX: Final = b"ping-web/"
LABEL_REGISTER: Final = "relay-register"
LABEL_AUTH: Final = "relay-auth"
LABEL_ROSTER: Final = "relay-roster"
PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
SECRET_SIZE: Final = 32


def signing_input(label: str, content: bytes) -> bytes:
    """The exact bytes a device signs for ``label``."""
    return PREFIX + label.encode("ascii") + b"\x00" + content


def register_content(device_id: bytes, public_key: bytes, user_id: bytes, origin: str) -> bytes:
    return device_id + public_key + bytes([len(user_id)]) + user_id + origin.encode("utf-8")


def auth_content(challenge: bytes, device_id: bytes, origin: str) -> bytes:
    return challenge + device_id + origin.encode("utf-8")


def roster_content(
    group_id: bytes, epoch: int, commit_hash: bytes, added: Iterable[bytes], removed: Iterable[bytes]
) -> bytes:
    parts = [group_id, epoch.to_bytes(8, "big"), commit_hash]
    for ids in (sorted(added), sorted(removed)):
        parts.append(len(ids).to_bytes(4, "big"))
        parts.extend(ids)
    return b"".join(parts)


def verify(public_key: bytes, signature: bytes, label: str, content: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of ``label``/``content``,
    verified strictly (``ed25519.py``: no small-order or non-canonical key or ``R``)."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    if not ed25519.strict_signature(public_key, signature):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signing_input(label, content))
    except (InvalidSignature, ValueError):
        return False
    return True


def valid_public_key(public_key: bytes) -> bool:
    """An Ed25519 public key the relay accepts: the canonical encoding of a point on the
    curve that is not of small order (``ed25519.strict_public_key``)."""
    return len(public_key) == PUBLIC_KEY_SIZE and ed25519.strict_public_key(public_key)


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_SIZE)


def token_hash(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class Verifier:
    """:func:`verify` as the ``SignatureVerifier`` device logs are checked with
    (``ping_web.core.devlog``)."""

    def verify(self, public_key: bytes, label: str, content: bytes, signature: bytes) -> bool:
        return verify(public_key, signature, label, content)
