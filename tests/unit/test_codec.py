from __future__ import annotations

import random
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import cbor_values

from ping_web.core import codec
from ping_web.errors import DecodeError, InvalidInput


def reference_encode(value: Any) -> bytes:
    """An independent RFC 8949 §4.2.1 encoder: shortest heads, keys sorted by encoded bytes."""

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
            if n < 1 << (8 * struct.calcsize(fmt)):
                return bytes([major << 5 | extra]) + struct.pack(fmt, n)
        raise AssertionError(n)

    if value is None:
        return b"\xf6"
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(map(reference_encode, value))
    pairs = sorted((reference_encode(k), reference_encode(v)) for k, v in value.items())
    return head(5, len(pairs)) + b"".join(k + v for k, v in pairs)


@given(cbor_values)
def test_round_trip_and_rfc8949_bytes(value: Any) -> None:
    data = codec.encode(value)
    assert data == reference_encode(value)
    assert codec.decode(data) == value


@given(st.dictionaries(st.text(max_size=30), st.integers(0, 1000), min_size=2, max_size=12), st.randoms())
def test_map_key_order_does_not_matter(mapping: dict[str, int], rnd: random.Random) -> None:
    items = list(mapping.items())
    rnd.shuffle(items)
    assert codec.encode(dict(items)) == codec.encode(mapping)


def test_keys_sorted_by_encoded_bytes() -> None:
    assert codec.encode({"b": 1, "aa": 2, "a": 3}).hex() == "a361610361620162616102"
    assert codec.encode({b"\x02": 0, b"\x01\x00": 0}) == bytes.fromhex("a241020042010000")


@pytest.mark.parametrize(
    "hex_input",
    [
        "1817",  # 23 in two bytes
        "190017",  # 23 in three bytes
        "580161",  # 1-byte string with a 1-byte length head
        "9f01ff",  # indefinite array
        "5f4161ff",  # indefinite bytes
        "bf616101ff",  # indefinite map
        "a2616201616102",  # keys out of order
        "a2616101616102",  # duplicate key
        "0000",  # trailing bytes
        "",  # nothing
        "c24101",  # bignum tag for 1
        "c249010000000000000000",  # bignum 2**64: outside 64 bits
        "d9d9f701",  # self-describe tag
        "c074323031332d30332d32315432303a30343a30305a",  # datetime tag
        "d81c81d81d00",  # shared reference cycle
        "f93c00",  # float 1.0
        "fb3ff8000000000000",  # float 1.5
        "f7",  # undefined
        "f820",  # simple value 32
        "a20101616102",  # int map key
        "a2416101616102",  # mixed bytes and text keys
        "62fffe",  # invalid UTF-8
        "81" * 9 + "00",  # too deep
        "5bffffffffffffffff",  # huge length, no data
        "1c",  # reserved additional info
        "ff",  # lone break
    ],
)
def test_rejects_non_canonical_or_outside_model(hex_input: str) -> None:
    with pytest.raises(DecodeError):
        codec.decode(bytes.fromhex(hex_input))


def test_depth_limit_is_inclusive() -> None:
    deepest = "81" * codec.MAX_DEPTH + "00"
    assert codec.decode(bytes.fromhex(deepest)) is not None


def test_size_limit() -> None:
    data = codec.encode(b"x" * 100)
    assert codec.decode(data, max_size=len(data)) == b"x" * 100
    with pytest.raises(DecodeError, match="limit"):
        codec.decode(data, max_size=len(data) - 1)


@pytest.mark.parametrize("bad", ["a1", None, 5, [b"\x01"]])
def test_decode_rejects_non_bytes(bad: Any) -> None:
    with pytest.raises(DecodeError):
        codec.decode(bad)


def test_decode_accepts_bytes_like() -> None:
    assert codec.decode(bytearray(b"\x01")) == 1
    assert codec.decode(memoryview(b"\x02")) == 2


@pytest.mark.parametrize("bad", [1.5, 1 << 64, -(1 << 64) - 1, {1: 2}, {"a": 1, b"b": 2}, {1, 2}, object()])
def test_encode_rejects_outside_model(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        codec.encode(bad)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_decode_error(data: bytes) -> None:
    try:
        value = codec.decode(data)
    except DecodeError:
        return
    assert codec.encode(value) == data


@given(cbor_values, st.data())
def test_mutated_encodings_decode_only_canonically(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(codec.encode(value))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= 1 << data.draw(st.integers(0, 7))
    try:
        decoded = codec.decode(bytes(encoded))
    except DecodeError:
        return
    assert codec.encode(decoded) == bytes(encoded)


def record_bytes(**fields: Any) -> bytes:
    return cbor2.dumps(fields, canonical=True)


def read(data: bytes) -> dict[str, Any]:
    with codec.record(data, "Thing", keys=frozenset({"v", "x"}), versions=(1,)) as m:
        codec.uint(m["x"], "x", hi=10)
        return m


def test_record_reads_exact_keys_and_version() -> None:
    assert read(record_bytes(v=1, x=3)) == {"v": 1, "x": 3}
    for bad in (record_bytes(v=2, x=3), record_bytes(v=1), record_bytes(v=1, x=3, y=0), codec.encode([1])):
        with pytest.raises(DecodeError, match=r"^Thing: "):
            read(bad)


def test_record_turns_checker_failures_into_decode_errors() -> None:
    with pytest.raises(DecodeError, match=r"Thing: x: 11 is outside 0\.\.10"):
        read(record_bytes(v=1, x=11))


def test_checkers() -> None:
    assert codec.uint(5, "n", lo=5, hi=5) == 5
    with pytest.raises(InvalidInput):
        codec.uint(True, "n")
    with pytest.raises(InvalidInput):
        codec.byte_string(bytearray(b"ab"), "b")
    assert codec.byte_string(b"ab", "b", size=2) == b"ab"
    with pytest.raises(InvalidInput):
        codec.byte_string(b"ab", "b", size=3)
    assert codec.text("é", "t", hi=2) == "é"
    with pytest.raises(InvalidInput):
        codec.text("é", "t", hi=1)
    with pytest.raises(InvalidInput):
        codec.text("\ud800", "t", hi=10)
    with pytest.raises(InvalidInput):
        codec.boolean(1, "flag")
    with pytest.raises(InvalidInput):
        codec.array([1], "a", size=2)
    with pytest.raises(InvalidInput):
        codec.bytes_map({"a": 1}, "m")
    with pytest.raises(InvalidInput):
        codec.instance(1, str, "s")
