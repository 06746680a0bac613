"""Deterministic CBOR: the one byte format of every wire and stored structure.

Two bindings must produce the same bytes for the same value (content hashes, conformance
vectors), and untrusted bytes must fail in exactly one way. So:

* :func:`encode` writes RFC 8949 §4.2.1 core deterministic CBOR (shortest integer and
  length forms, definite lengths, map keys sorted by their encoded bytes).
* :func:`decode` accepts only what :func:`encode` writes: it parses with tags and
  indefinite lengths disabled, checks the value against the data model below, re-encodes
  it and requires the same bytes. Anything else (non-shortest forms, unsorted or
  duplicate keys, trailing bytes, tags, floats, too deep, too large) is a
  :class:`~ping_web.errors.DecodeError`, never another exception.

Data model: integers in -2**64 .. 2**64-1, ``bool``, ``None``, byte strings, UTF-8 text,
arrays, and maps whose keys are either all text or all byte strings. (With one key type
per map, length-first order equals RFC 8949 bytewise order of the encoded keys.)

The encoder and the parser are plain Python, written for exactly this data model: in
Pyodide, loading a compiled CBOR extension (cbor2's) took longer than everything else a
client needs to start, and a walk of these small records in Python is as fast as the
extension plus the checks it needed around it.

The checkers below (:func:`uint`, :func:`byte_string`, ...) raise
:class:`~ping_web.errors.InvalidInput`, so constructors can validate with them;
:func:`record` turns every such failure inside a structure's ``decode`` into a
:class:`~ping_web.errors.DecodeError`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final

from ping_web.errors import DecodeError, InvalidInput

U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFF_FFFF
U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF

MAX_DEPTH: Final = 8
"""Deepest container nesting accepted; every structure here needs 3 at most."""

DEFAULT_MAX_SIZE: Final = 1 << 20
"""Largest input :func:`decode` reads unless the caller passes its own ``max_size``."""

_INT_MIN: Final = -(1 << 64)


class _Outside(Exception):
    """Raised while encoding when a value is outside the data model."""


_TextShape = tuple[tuple[str, bytes], ...]

_TEXT_SHAPES: dict[tuple[str, ...], _TextShape] = {}
"""Text-keyed maps seen before (the records' fixed shapes): each key with its encoding, in
canonical order, so a record's keys are sorted and encoded once per process."""
_TEXT_SHAPES_MAX: Final = 512
_TEXT_SHAPE_KEYS: Final = 32


def _text_shape(keys: tuple[str, ...]) -> _TextShape:
    """``keys`` in RFC 8949 order (by encoded length, then bytewise; one key type per map),
    each with its encoded item."""
    shape = _TEXT_SHAPES.get(keys)
    if shape is None:
        encoded = []
        for key in keys:
            item = bytearray()
            _write(item, key, 0)
            encoded.append((key, bytes(item)))
        shape = tuple(sorted(encoded, key=lambda pair: (len(pair[1]), pair[1])))
        if len(_TEXT_SHAPES) < _TEXT_SHAPES_MAX and len(keys) <= _TEXT_SHAPE_KEYS:
            _TEXT_SHAPES[keys] = shape
    return shape


def _head(out: bytearray, major: int, n: int) -> None:
    """The shortest head of major type ``major`` with argument ``n`` (0 <= n < 2**64)."""
    m = major << 5
    if n < 24:
        out.append(m | n)
    elif n < 0x100:
        out.append(m | 24)
        out.append(n)
    elif n < 0x1_0000:
        out.append(m | 25)
        out += n.to_bytes(2, "big")
    elif n < 0x1_0000_0000:
        out.append(m | 26)
        out += n.to_bytes(4, "big")
    else:
        out.append(m | 27)
        out += n.to_bytes(8, "big")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Outside("text is not valid Unicode (lone surrogate)") from None


def _bytes_order(key: bytes) -> tuple[int, bytes]:
    return len(key), key


def _write(out: bytearray, value: Any, depth: int) -> None:
    """Append the deterministic encoding of ``value``; :class:`_Outside` if it is not in the model."""
    if depth > MAX_DEPTH:
        raise _Outside(f"nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if kind is bytes:
        _head(out, 2, len(value))
        out += value
    elif kind is int:
        if 0 <= value < 24:
            out.append(value)
        elif 0 <= value <= U64_MAX:
            _head(out, 0, value)
        elif _INT_MIN <= value < 0:
            _head(out, 1, -1 - value)
        else:
            raise _Outside("integer outside 64 bits")
    elif kind is str:
        raw = _utf8(value)
        _head(out, 3, len(raw))
        out += raw
    elif kind is dict:
        _write_map(out, value, depth)
    elif kind is list or kind is tuple:
        size = len(value)
        if size < 24:
            out.append(0x80 | size)
        else:
            _head(out, 4, size)
        for item in value:
            _write(out, item, depth + 1)
    elif value is None:
        out.append(0xF6)
    elif kind is bool:
        out.append(0xF5 if value else 0xF4)
    # Subclasses of the model's types (an IntEnum, say) are written as their base type.
    elif isinstance(value, (bytes, str)):
        _write(out, bytes(value) if isinstance(value, bytes) else str(value), depth)
    elif isinstance(value, int):
        _write(out, int(value), depth)
    elif isinstance(value, dict):
        _write(out, dict(value), depth)
    elif isinstance(value, (list, tuple)):
        _write(out, list(value), depth)
    else:
        raise _Outside(f"{kind.__name__} is not in the data model")


def _write_map(out: bytearray, value: dict[Any, Any], depth: int) -> None:
    size = len(value)
    if size < 24:
        out.append(0xA0 | size)
    else:
        _head(out, 5, size)
    if not size:
        return
    keys = tuple(value)
    first = type(keys[0])
    for k in keys:
        if type(k) is not first:
            raise _Outside("map keys must be all text or all byte strings")
    if first is str:
        for k, item in _text_shape(keys):
            out += item
            _write(out, value[k], depth + 1)
    elif first is bytes:
        for k in keys if size == 1 else sorted(keys, key=_bytes_order):
            _head(out, 2, len(k))
            out += k
            _write(out, value[k], depth + 1)
    else:
        raise _Outside("map keys must be all text or all byte strings")


def _dumps(obj: Any) -> bytes:
    """Deterministic CBOR of ``obj``; :class:`_Outside` if it is outside the model."""
    out = bytearray()
    _write(out, obj, 0)
    return bytes(out)


def encode(obj: Any) -> bytes:
    """Deterministic CBOR of ``obj``; :class:`InvalidInput` if it is outside the data model."""
    try:
        return _dumps(obj)
    except _Outside as exc:
        raise InvalidInput(f"cannot encode: {exc}") from None


class _Malformed(Exception):
    """Raised inside :func:`_read` for input :func:`encode` would not have written."""


_SHORTEST: Final = (24, 0x100, 0x1_0000, 0x1_0000_0000)
"""Smallest argument each of the 1-, 2-, 4- and 8-byte argument forms may carry."""


def _read(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """The item at ``pos`` and where it ends; only the deterministic encoding is accepted."""
    if depth > MAX_DEPTH:
        raise _Malformed(f"nested deeper than {MAX_DEPTH}")
    try:
        initial = data[pos]
    except IndexError:
        raise _Malformed("the input ends early") from None
    pos += 1
    major, info = initial >> 5, initial & 31
    if info < 24:
        arg = info
    elif info < 28:
        width = 1 << (info - 24)
        end = pos + width
        if end > len(data):
            raise _Malformed("the input ends early")
        arg = int.from_bytes(data[pos:end], "big")
        pos = end
        if arg < _SHORTEST[info - 24]:
            raise _Malformed("non-shortest integer or length")
    elif major == 7 and info == 31:
        raise _Malformed("a break outside an indefinite-length item")
    elif info == 31:
        raise _Malformed("indefinite lengths are not allowed")
    else:
        raise _Malformed("reserved additional information")
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 2 or major == 3:
        end = pos + arg
        if end > len(data):
            raise _Malformed("the input ends early")
        raw = data[pos:end]
        if major == 2:
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            raise _Malformed("text is not valid UTF-8") from None
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _read(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        result: dict[Any, Any] = {}
        previous = b""
        key_type: type[Any] | None = None
        for _ in range(arg):
            start = pos
            key, pos = _read(data, pos, depth + 1)
            if type(key) is not bytes and type(key) is not str:
                raise _Malformed("map keys must be text or byte strings")
            if key_type is None:
                key_type = type(key)
            elif type(key) is not key_type:
                raise _Malformed("map keys must be all text or all byte strings")
            encoded = data[start:pos]
            if previous and encoded <= previous:
                raise _Malformed("map keys out of order or repeated")
            previous = encoded
            result[key], pos = _read(data, pos, depth + 1)
        return result, pos
    if major == 6:
        raise _Malformed("CBOR tags are not allowed")
    if initial == 0xF4:
        return False, pos
    if initial == 0xF5:
        return True, pos
    if initial == 0xF6:
        return None, pos
    raise _Malformed("floats and simple values other than false, true and null are not allowed")


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Parse canonical CBOR from untrusted ``data``; any failure is a :class:`DecodeError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise DecodeError(f"{len(data)} bytes is over the {max_size}-byte limit")
    if not data:
        raise DecodeError("empty input")
    try:
        value, end = _read(data, 0, 0)
    except _Malformed as exc:
        raise DecodeError(f"malformed CBOR: {exc}") from None
    except RecursionError:
        raise DecodeError("malformed CBOR: nested too deeply") from None
    if end != len(data):
        raise DecodeError("not canonical CBOR: bytes after the value")
    return value


class record:  # noqa: N801 - used like the function it replaces: ``with codec.record(...) as m``
    """Decode a versioned map with exactly ``keys``; failures in the block become DecodeError.

    ``keys`` is one key set, or a key set per version when versions differ in their fields.
    Use as ``with codec.record(data, "Thing", keys=..., versions=(1,)) as m: return Thing(...)``
    so a constructor's InvalidInput on a bad field is reported as undecodable bytes.
    (A class rather than a ``@contextmanager`` generator: it is on every decode's path.)
    """

    __slots__ = ("_data", "_keys", "_max_size", "_versions", "_what")

    def __init__(
        self,
        data: bytes,
        what: str,
        *,
        keys: frozenset[str] | Mapping[int, frozenset[str]],
        versions: Collection[int],
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self._data, self._what, self._keys, self._versions, self._max_size = data, what, keys, versions, max_size

    def __enter__(self) -> dict[str, Any]:
        try:
            value = decode(self._data, max_size=self._max_size)
            if not isinstance(value, dict):
                raise InvalidInput(f"expected a map, got {type(value).__name__}")
            version = uint(value.get("v"), "v")
            if version not in self._versions:
                raise InvalidInput(f"unsupported version {version}; this build reads {sorted(self._versions)}")
            keys = self._keys if isinstance(self._keys, frozenset) else self._keys[version]
            if value.keys() != keys:
                raise InvalidInput(f"expected keys {sorted(keys)}, got {sorted(map(repr, value))}")
        except InvalidInput as exc:  # DecodeError included: prefix where it happened
            raise DecodeError(f"{self._what}: {exc}") from None
        return value

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and isinstance(exc, InvalidInput):
            raise DecodeError(f"{self._what}: {exc}") from None


# -- checkers: raise InvalidInput, return the value typed -----------------------------------


def uint(value: Any, what: str, *, lo: int = 0, hi: int = U64_MAX) -> int:
    """``value`` as an int in ``lo..hi`` (a bool is not an int here)."""
    if type(value) is not int:
        raise InvalidInput(f"{what}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidInput(f"{what}: {value} is outside {lo}..{hi}")
    return value


def byte_string(value: Any, what: str, *, size: int | None = None, lo: int = 0, hi: int = U64_MAX) -> bytes:
    """``value`` as bytes of exactly ``size``, or of a length in ``lo..hi``."""
    if type(value) is not bytes:
        raise InvalidInput(f"{what}: expected bytes, got {type(value).__name__}")
    if size is not None:
        lo = hi = size
    if not lo <= len(value) <= hi:
        expected = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise InvalidInput(f"{what}: expected {expected} bytes, got {len(value)}")
    return value


def text(value: Any, what: str, *, hi: int) -> str:
    """``value`` as a str of at most ``hi`` UTF-8 bytes."""
    if type(value) is not str:
        raise InvalidInput(f"{what}: expected text, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"{what}: text is not valid Unicode (lone surrogate)") from None
    if size > hi:
        raise InvalidInput(f"{what}: {size} UTF-8 bytes is over the {hi}-byte limit")
    return value


def boolean(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise InvalidInput(f"{what}: expected a bool, got {type(value).__name__}")
    return value


def array(value: Any, what: str, *, size: int) -> list[Any] | tuple[Any, ...]:
    """``value`` as an array of exactly ``size`` items."""
    if not isinstance(value, (list, tuple)):
        raise InvalidInput(f"{what}: expected an array, got {type(value).__name__}")
    if len(value) != size:
        raise InvalidInput(f"{what}: expected {size} items, got {len(value)}")
    return value


def items(value: Any, what: str, *, hi: int = U64_MAX) -> list[Any]:
    """``value`` as an array (a list) of at most ``hi`` items of any kind."""
    if not isinstance(value, list):
        raise InvalidInput(f"{what}: expected an array, got {type(value).__name__}")
    if len(value) > hi:
        raise InvalidInput(f"{what}: {len(value)} items is over the limit of {hi}")
    return value


def byte_strings(value: Any, what: str, *, hi: int = U64_MAX) -> list[bytes]:
    """``value`` as an array of at most ``hi`` byte strings."""
    return [byte_string(item, what) for item in items(value, what, hi=hi)]


def mapping(value: Any, what: str) -> dict[str, Any]:
    """``value`` as a map keyed by text (an object of a JSON or structured-clone message)."""
    if not isinstance(value, dict) or any(type(key) is not str for key in value):
        raise InvalidInput(f"{what}: expected an object, got {type(value).__name__}")
    return value


def bytes_map(value: Any, what: str) -> dict[bytes, Any]:
    """``value`` as a map keyed by byte strings (an empty map is fine)."""
    if not isinstance(value, dict) or any(type(key) is not bytes for key in value):
        raise InvalidInput(f"{what}: expected a map with byte-string keys")
    return value


def instance(value: Any, cls: type[Any], what: str) -> None:
    """Require ``value`` to be a ``cls`` (for fields holding ids, clocks, envelopes)."""
    if not isinstance(value, cls):
        raise InvalidInput(f"{what}: expected {cls.__name__}, got {type(value).__name__}")
