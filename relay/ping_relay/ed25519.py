"""Strict Ed25519 point checks, on top of the ``cryptography`` package's verification.

OpenSSL's Ed25519 verification accepts public keys of small order: with the identity as
key, the "signature" ``R = identity, S = 0`` verifies for every message. The relay refuses
what a strict verifier refuses (as ed25519-zebra and ed25519-dalek's ``verify_strict`` do):

* an encoding that is not canonical: ``y >= p``, or ``x = 0`` with the sign bit set;
* a point of small order (1, 2, 4 or 8: ``[8]P`` is the identity), as a public key or
  as a signature's ``R``;
* ``S >= L`` (OpenSSL refuses that already; checked here too, so one place says it).

A public key is checked once, at registration, with plain integer arithmetic on the
twisted Edwards curve ``-x^2 + y^2 = 1 + d x^2 y^2`` over ``p = 2^255 - 19`` (a
decompression and three doublings, about 0.3 ms). Every verification checks the key and
``R`` against the eight small-order encodings instead (microseconds); the test
``test_small_order_list_is_the_eight_torsion`` checks that list with the arithmetic.
"""

from __future__ import annotations

from typing import Final

P: Final = 2**255 - 19
L: Final = 2**252 + 27742317777372353535851937790883648493
"""The order of the base point's subgroup."""
D: Final = (-121665 * pow(121666, -1, P)) % P
_SQRT_M1: Final = pow(2, (P - 1) // 4, P)
POINT_SIZE: Final = 32

SMALL_ORDER: Final = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",  # the identity
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
)
"""The canonical encodings of the eight points of small order."""

Point = tuple[int, int, int, int]
"""Extended coordinates ``(X, Y, Z, T)`` with ``x = X/Z``, ``y = Y/Z``, ``xy = T/Z``."""


def decode_point(encoded: bytes) -> Point | None:
    """The point of a canonical 32-byte encoding (RFC 8032, 5.1.3), else ``None``."""
    if len(encoded) != POINT_SIZE:
        return None
    value = int.from_bytes(encoded, "little")
    sign = value >> 255
    y = value & ((1 << 255) - 1)
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        x = x * _SQRT_M1 % P
        if (v * x * x - u) % P != 0:
            return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _double(point: Point) -> Point:
    x1, y1, z1, _ = point
    a, b = x1 * x1 % P, y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = (a + b) % P
    e = (h - (x1 + y1) * (x1 + y1)) % P
    g = (a - b) % P
    f = (c + g) % P
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _is_identity(point: Point) -> bool:
    x, y, z, _ = point
    return x % P == 0 and (y - z) % P == 0


def small_order(point: Point) -> bool:
    """``[8]P`` is the identity: ``P`` has order 1, 2, 4 or 8."""
    for _ in range(3):
        point = _double(point)
    return _is_identity(point)


def strict_public_key(encoded: bytes) -> bool:
    """A canonical encoding of a point on the curve that is not of small order."""
    point = decode_point(encoded)
    return point is not None and not small_order(point)


def _canonical_not_small(encoded: bytes) -> bool:
    """Canonical (``y < p``; no sign bit when ``x = 0``, i.e. ``y = ±1``) and not one of
    the eight small-order points. Whether it is on the curve is the verifier's check."""
    if len(encoded) != POINT_SIZE:
        return False
    value = int.from_bytes(encoded, "little")
    y = value & ((1 << 255) - 1)
    if y >= P or (value >> 255 and y in (1, P - 1)):
        return False
    return encoded not in SMALL_ORDER


def strict_signature(public_key: bytes, signature: bytes) -> bool:
    """The checks a strict verifier adds to the verification equation: canonical,
    large-order ``A`` and ``R``, and ``S < L``. The equation itself is ``cryptography``'s."""
    if len(signature) != 2 * POINT_SIZE:
        return False
    if int.from_bytes(signature[POINT_SIZE:], "little") >= L:
        return False
    return _canonical_not_small(public_key) and _canonical_not_small(signature[:POINT_SIZE])
