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
per map, cbor2's length-first canonical order equals RFC 8949 bytewise order.)

The checkers below (:func:`uint`, :func:`byte_string`, ...) raise
:class:`~ping_web.errors.InvalidInput`, so constructors can validate with them;
:func:`record` turns every such failure inside a structure's ``decode`` into a
:class:`~ping_web.errors.DecodeError`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final, NoReturn

import cbor2

from .errors import DecodeError, InvalidInput

U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFF_FFFF
U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF

MAX_DEPTH: Final = 8
"""Deepest container nesting accepted; every structure here needs 3 at most."""

DEFAULT_MAX_SIZE: Final = 1 << 20
"""Largest input :func:`decode` reads unless the caller passes its own ``max_size``."""

_INT_MIN: Final = -(1 << 64)


class _NoTags(dict[int, Any]):
    """A semantic-decoder table that claims every tag and rejects it while parsing."""

    def __contains__(self, tag: object) -> bool:
        return True

    def __getitem__(self, tag: int) -> Any:
        return _reject_tag


def _reject_tag(decoder: Any) -> NoReturn:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed")


_NO_TAGS: Final = _NoTags()


def _problem(value: Any, depth: int) -> str | None:
    """Why ``value`` is outside the data model, or None when it fits."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH}"
    if value is None or isinstance(value, (bool, bytes, str)):
        return None
    if isinstance(value, int):
        return None if _INT_MIN <= value <= U64_MAX else "integer outside 64 bits"
    if isinstance(value, dict):
        key_types = {type(key) for key in value}
        if not (key_types <= {str} or key_types <= {bytes}):
            return "map keys must be all text or all byte strings"
        children: Iterable[Any] = value.values()
    elif isinstance(value, (list, tuple)):
        children = value
    else:
        return f"{type(value).__name__} is not in the data model"
    for child in children:
        if (problem := _problem(child, depth + 1)) is not None:
            return problem
    return None


def encode(obj: Any) -> bytes:
    """Deterministic CBOR of ``obj``; :class:`InvalidInput` if it is outside the data model."""
    if (problem := _problem(obj, 0)) is not None:
        raise InvalidInput(f"cannot encode: {problem}")
    return cbor2.dumps(obj, canonical=True)


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
        value = cbor2.loads(
            data,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            semantic_decoders=_NO_TAGS,
        )
    except Exception as exc:  # cbor2 is a C extension; its failure types are not all documented
        raise DecodeError(f"malformed CBOR: {exc}") from None
    if (problem := _problem(value, 0)) is not None:
        raise DecodeError(f"malformed CBOR: {problem}")
    if cbor2.dumps(value, canonical=True) != data:
        raise DecodeError("not canonical CBOR (non-shortest form, unsorted keys or trailing bytes)")
    return value


@contextmanager
def record(
    data: bytes,
    what: str,
    *,
    keys: frozenset[str],
    versions: Collection[int],
    max_size: int = DEFAULT_MAX_SIZE,
) -> Iterator[dict[str, Any]]:
    """Decode a versioned map with exactly ``keys``; failures in the block become DecodeError.

    Use as ``with codec.record(data, "Thing", keys=..., versions=(1,)) as m: return Thing(...)``
    so a constructor's InvalidInput on a bad field is reported as undecodable bytes.
    """
    try:
        value = decode(data, max_size=max_size)
        if not isinstance(value, dict):
            raise InvalidInput(f"expected a map, got {type(value).__name__}")
        if value.keys() != keys:
            raise InvalidInput(f"expected keys {sorted(keys)}, got {sorted(map(repr, value))}")
        version = uint(value["v"], "v")
        if version not in versions:
            raise InvalidInput(f"unsupported version {version}; this build reads {sorted(versions)}")
        yield value
    except InvalidInput as exc:  # DecodeError included: prefix where it happened
        raise DecodeError(f"{what}: {exc}") from None


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


def bytes_map(value: Any, what: str) -> dict[bytes, Any]:
    """``value`` as a map keyed by byte strings (an empty map is fine)."""
    if not isinstance(value, dict) or any(type(key) is not bytes for key in value):
        raise InvalidInput(f"{what}: expected a map with byte-string keys")
    return value


def instance(value: Any, cls: type[Any], what: str) -> None:
    """Require ``value`` to be a ``cls`` (for fields holding ids, clocks, envelopes)."""
    if not isinstance(value, cls):
        raise InvalidInput(f"{what}: expected {cls.__name__}, got {type(value).__name__}")
