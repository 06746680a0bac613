from __future__ import annotations

from typing import Any

import pytest

from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.errors import InvalidInput


@pytest.mark.parametrize("cls", [ConversationId, DeviceId])
def test_new_ids_are_16_bytes_distinct_and_time_ordered(cls: type[ConversationId]) -> None:
    made = [cls.new() for _ in range(100)]
    assert all(len(bytes(i)) == 16 for i in made)
    assert len(set(made)) == 100
    assert sorted(made) == made  # ULIDs made later sort later (monotonic within a millisecond)


@pytest.mark.parametrize("cls", [ConversationId, DeviceId])
def test_from_bytes_validates_length(cls: type[ConversationId]) -> None:
    raw = bytes(range(16))
    assert cls.from_bytes(raw).raw == raw
    assert cls.from_bytes(bytearray(raw)) == cls(raw)
    assert cls.from_bytes(memoryview(raw)) == cls(raw)
    for bad in (raw[:15], raw + b"\x00", b""):
        with pytest.raises(InvalidInput):
            cls.from_bytes(bad)
    bad_type: Any = raw.hex()
    with pytest.raises(InvalidInput):
        cls.from_bytes(bad_type)
    with pytest.raises(InvalidInput):
        cls(bad_type)


def test_hex_bytes_repr_hash_order() -> None:
    a = DeviceId(bytes(16))
    b = DeviceId(b"\x00" * 15 + b"\x01")
    assert a.hex == "00" * 16
    assert DeviceId.from_hex(b.hex) == b
    assert bytes(b) == b.raw
    assert repr(b) == "DeviceId(" + "00" * 15 + "01)"
    assert a < b and {a, b, DeviceId(bytes(16))} == {a, b}
    with pytest.raises(InvalidInput):
        DeviceId.from_hex("zz")
    with pytest.raises(InvalidInput):
        DeviceId.from_hex("00")


def test_id_types_do_not_mix() -> None:
    raw = bytes(16)
    assert ConversationId(raw) != DeviceId(raw)
    with pytest.raises(TypeError):
        _ = ConversationId(raw) < DeviceId(raw)  # type: ignore[operator]


def test_ids_are_frozen() -> None:
    device = DeviceId.new()
    with pytest.raises(AttributeError):
        device.raw = bytes(16)  # type: ignore[misc]


def test_user_id_length_bounds() -> None:
    assert UserId(b"a").raw == b"a"
    assert len(UserId(b"x" * 255).raw) == 255
    for bad in (b"", b"x" * 256):
        with pytest.raises(InvalidInput):
            UserId(bad)


def test_new_ids_are_ulids_by_the_reference_implementation() -> None:
    """ids.py makes its own ULIDs (python-ulid costs an import at start in Pyodide); python-ulid
    reads them back with the creation time they carry."""
    import time

    import ulid

    before = time.time_ns() // 1_000_000
    made = [DeviceId.new() for _ in range(50)]
    after = time.time_ns() // 1_000_000
    for device in made:
        parsed = ulid.ULID.from_bytes(device.raw)
        assert bytes(parsed) == device.raw
        assert before <= parsed.milliseconds <= after + 1  # +1: a borrowed millisecond
        assert ulid.ULID.from_str(str(parsed)).bytes == device.raw
    assert [str(ulid.ULID.from_bytes(d.raw)) for d in made] == sorted(str(ulid.ULID.from_bytes(d.raw)) for d in made)
