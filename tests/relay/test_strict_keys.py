"""Ed25519 keys and signatures are checked strictly (issue 17, item 8): a small-order or
non-canonically encoded public key is refused at registration, and no signature verifies
for one, wherever the relay checks a signature."""

from __future__ import annotations

import os

import pytest

from relay_client import Device, b64e
from relay_db import execute

P = 2**255 - 19
D = (-121665 * pow(121666, -1, P)) % P

# The eight points of small order (1, 2, 4, 8) in their canonical encodings, then
# non-canonical encodings of some of them (y >= p, or x = 0 with the sign bit set).
SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
]
NON_CANONICAL_SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, sign bit set
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1: the identity
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p: order 4
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = -1 with the sign bit
]
FORGED = bytes.fromhex(SMALL_ORDER[0]) + bytes(32)  # R = identity, S = 0


def non_canonical_large_order() -> bytes:
    """An encoding with y >= p of a point that is on the curve (and of large order)."""
    for y in range(2, 19):
        u, v = (y * y - 1) % P, (D * y * y + 1) % P
        x2 = u * pow(v, -1, P) % P
        if pow(x2, (P - 1) // 2, P) == 1:  # a square: the point exists
            return (y + P).to_bytes(32, "little")
    raise AssertionError("no such y")


def register_with(relay_url: str, public_key: bytes, signature: bytes):
    d = Device(relay_url)
    r = d.http.post(
        "/v1/devices",
        json={
            "user_id": b64e(d.user_id),
            "device_id": d.id,
            "signature_public_key": b64e(public_key),
            "signature": b64e(signature),
        },
    )
    d.close()
    return r


@pytest.mark.parametrize("key", SMALL_ORDER + NON_CANONICAL_SMALL_ORDER)
def test_small_order_keys_are_refused_at_registration(relay, key: str) -> None:
    r = register_with(relay.url, bytes.fromhex(key), FORGED)
    assert (r.status_code, r.json()["error"], r.json().get("field")) == (400, "bad_field", "signature_public_key"), (
        key,
        r.text,
    )


def test_non_canonical_key_is_refused(relay) -> None:
    r = register_with(relay.url, non_canonical_large_order(), os.urandom(64))
    assert (r.status_code, r.json()["error"]) == (400, "bad_field"), r.text


def test_no_token_for_a_stored_small_order_key(relay) -> None:
    """A device stored with the identity as its key (by a relay before this check) cannot
    log in with a forged signature: verification itself is strict."""
    d = Device(relay.url)
    execute(
        relay.db,
        "INSERT INTO devices (device_id, user_id, public_key, registered_at_ms) VALUES (?, ?, ?, ?)",
        d.device_id,
        d.user_id,
        bytes.fromhex(SMALL_ORDER[0]),
        1,
    )
    challenge = d.challenge()
    r = d.answer(challenge, FORGED)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_signature"), r.text
    d.close()


def test_signature_with_small_order_r_is_refused(relay) -> None:
    """Strict verification refuses a small-order R even where the equation holds: with the
    identity as R and S = 0, [S]B = R + [k]A holds for A the identity only, so this checks
    the registration path end to end with a key that is also small order."""
    r = register_with(relay.url, bytes.fromhex(SMALL_ORDER[1]), FORGED)
    assert r.status_code == 400, r.text


def test_small_order_list_is_the_eight_torsion() -> None:
    """The relay's list of small-order encodings (checked at every verification) is what
    its curve arithmetic (used at registration) says: eight distinct points of order <= 8."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from ping_relay import ed25519

    assert ed25519.SMALL_ORDER == {bytes.fromhex(h) for h in SMALL_ORDER}
    for encoded in ed25519.SMALL_ORDER:
        point = ed25519.decode_point(encoded)
        assert point is not None and ed25519.small_order(point)
    for encoded in NON_CANONICAL_SMALL_ORDER:
        assert ed25519.decode_point(bytes.fromhex(encoded)) is None
    for _ in range(50):
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert ed25519.strict_public_key(public)
        assert ed25519.strict_signature(public, key.sign(os.urandom(20)))
