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

from collections.abc import Collection, Mapping
from typing import Any, Final, NoReturn

import cbor2

from ping_web.errors import DecodeError, InvalidInput

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


class _Outside(Exception):
    """Raised inside :func:`_canonical` when a value is outside the data model."""


_TEXT_ORDER: dict[tuple[str, ...], tuple[str, ...]] = {}
"""Canonical key order of text-keyed maps seen before (the records' fixed shapes)."""
_TEXT_ORDER_MAX: Final = 512
_TEXT_ORDER_KEYS: Final = 32


def _text_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """``keys`` in RFC 8949 order: by encoded length, then bytewise (one key type per map)."""
    order = _TEXT_ORDER.get(keys)
    if order is None:
        order = tuple(sorted(keys, key=lambda k: (len(b := k.encode("utf-8")), b)))
        if len(_TEXT_ORDER) < _TEXT_ORDER_MAX and len(keys) <= _TEXT_ORDER_KEYS:
            _TEXT_ORDER[keys] = order
    return order


_SCALARS: Final = frozenset({bytes, str, bool, type(None)})


def _canonical(value: Any, depth: int) -> Any:
    """``value`` with every map in canonical key order; :class:`_Outside` if it is not in the model.

    One pass does what encoding needs: the data-model check (same rules and messages as
    before: depth first, then the type) and the RFC 8949 map key order, so the encoder can
    write maps as they come instead of sorting their encoded keys (cbor2's ``canonical``,
    the slower half of an encode). Containers already in order are returned, not copied.
    """
    if depth > MAX_DEPTH:
        raise _Outside(f"nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is int:
        if _INT_MIN <= value <= U64_MAX:
            return value
        raise _Outside("integer outside 64 bits")
    if kind is dict:
        if not value:
            return value
        keys = tuple(value)
        first = type(keys[0])
        for k in keys:
            if type(k) is not first:
                raise _Outside("map keys must be all text or all byte strings")
        order: tuple[Any, ...]
        if first is str:
            order = _text_order(keys)
        elif first is bytes:
            order = keys if len(keys) == 1 else tuple(sorted(keys, key=_bytes_order))
        else:
            raise _Outside("map keys must be all text or all byte strings")
        values = [value[k] for k in order]
        changed = _canonical_items(values, depth + 1)
        if not changed and order == keys:
            return value
        return dict(zip(order, values, strict=True))
    if kind is list or kind is tuple:
        values = list(value)
        return values if _canonical_items(values, depth + 1) else value
    # Subclasses of the model's types: the general rules, as before.
    if isinstance(value, (bool, bytes, str)):
        return value
    if isinstance(value, int):
        if _INT_MIN <= value <= U64_MAX:
            return value
        raise _Outside("integer outside 64 bits")
    if isinstance(value, dict):
        return _canonical(dict(value), depth)
    if isinstance(value, (list, tuple)):
        return _canonical(list(value), depth)
    raise _Outside(f"{kind.__name__} is not in the data model")


def _bytes_order(key: bytes) -> tuple[int, bytes]:
    return len(key), key


def _canonical_items(values: list[Any], depth: int) -> bool:
    """Check (and order, in place) the items of one container; True if any was replaced."""
    changed = False
    if depth > MAX_DEPTH:
        for v in values:
            _canonical(v, depth)  # raises
        return False
    for i, v in enumerate(values):
        kind = type(v)
        if kind in _SCALARS:
            continue
        if kind is int:
            if not _INT_MIN <= v <= U64_MAX:
                raise _Outside("integer outside 64 bits")
            continue
        ordered = _canonical(v, depth)
        if ordered is not v:
            values[i] = ordered
            changed = True
    return changed


def _problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` is outside the data model, or None when it fits."""
    try:
        _canonical(value, depth)
    except _Outside as exc:
        return str(exc)
    return None


def _dumps(obj: Any) -> bytes:
    """Deterministic CBOR of ``obj`` (already checked); :class:`_Outside` if outside the model."""
    ordered = _canonical(obj, 0)
    try:
        return cbor2.dumps(ordered)
    except Exception:  # noqa: BLE001 - e.g. a lone surrogate: let cbor2 report it as before
        return cbor2.dumps(obj, canonical=True)


def encode(obj: Any) -> bytes:
    """Deterministic CBOR of ``obj``; :class:`InvalidInput` if it is outside the data model."""
    try:
        return _dumps(obj)
    except _Outside as exc:
        raise InvalidInput(f"cannot encode: {exc}") from None


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
    except Exception as exc:  # noqa: BLE001 - cbor2 is a C extension; its failure types are not all documented
        raise DecodeError(f"malformed CBOR: {exc}") from None
    try:
        canonical = _dumps(value)
    except _Outside as exc:
        raise DecodeError(f"malformed CBOR: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - re-encoding untrusted input must fail one way only
        raise DecodeError(f"malformed CBOR: {exc}") from None
    if canonical != data:
        raise DecodeError("not canonical CBOR (non-shortest form, unsorted keys or trailing bytes)")
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
