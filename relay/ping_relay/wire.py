"""Request and reply encoding: strict JSON objects, unpadded base64url, integers.

Every helper raises :class:`RelayError` 400 on bad input, naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any, Final, NoReturn

from ping_web.core.envelope import MessageEnvelope

from .errors import bad_request, refuse

I63_MAX: Final = (1 << 63) - 1
_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_VALUE: Final = {c: i for i, c in enumerate(_ALPHABET)}
_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_UNUSED_BITS: Final = {0: 0, 2: 0b1111, 3: 0b11}
"""Per length mod 4 of unpadded base64: the low bits of the last character that encode
nothing (canonical text has them zero)."""
_UINT: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
ECHO_MAX: Final = 64
"""Most characters of a client's key name echoed in a refusal."""


def b64e(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(value: object, what: str, *, size: int | None = None, lo: int = 0, hi: int = I63_MAX) -> bytes:
    """Decode unpadded base64url (canonical: no padding, no stray bits) of ``lo..hi`` bytes.

    In C-speed steps (a megabyte envelope is decoded on the event loop): ASCII, none of
    ``+/=``, then the standard decoder in strict mode over the translated text (which
    refuses any other character), then the unused bits of the last character."""
    if type(value) is not str or not value.isascii() or len(value) % 4 == 1:
        raise bad_request("bad_field", f"{what}: expected unpadded base64url text", field=what)
    text = value.encode("ascii")
    if b"+" in text or b"/" in text or b"=" in text:
        raise bad_request("bad_field", f"{what}: expected unpadded base64url text", field=what)
    try:
        data = binascii.a2b_base64(text.translate(_TO_STANDARD) + b"=" * (-len(text) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise bad_request("bad_field", f"{what}: not base64url", field=what) from None
    if text and _B64URL_VALUE[text[-1]] & _UNUSED_BITS[len(text) % 4]:
        raise bad_request("bad_field", f"{what}: not canonical base64url", field=what)
    if size is not None:
        lo = hi = size
    if not lo <= len(data) <= hi:
        expected = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise bad_request("bad_field", f"{what}: expected {expected} bytes, got {len(data)}", field=what)
    return data


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def echo(name: str) -> str:
    """A client's key name as a refusal may quote it: at most ``ECHO_MAX`` characters."""
    return name if len(name) <= ECHO_MAX else name[:ECHO_MAX] + "..."


def _has_surrogate(value: object) -> bool:
    """True if a string anywhere in ``value`` (keys included) holds a lone surrogate, which
    JSON's ``\\udXXX`` escapes can produce although the text itself is UTF-8 (an ASCII
    string, every one the protocol uses, is known to hold none without a scan)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json(body: bytes) -> object:
    """One JSON value from strict UTF-8 (no other encoding, no byte order mark), without
    duplicate keys, ``NaN``/``Infinity`` or lone surrogates; 400 ``malformed_json`` otherwise."""
    try:
        value = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise bad_request("malformed_json", "the body is not one JSON value (UTF-8, no duplicate keys)") from None
    if _has_surrogate(value):
        raise bad_request("malformed_json", "the body holds a lone surrogate (\\udXXX): not Unicode text")
    return value


def parse_object(body: bytes, *, required: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON object with exactly the ``required`` keys and any of the ``optional`` ones."""
    value = parse_json(body)
    if not isinstance(value, dict):
        raise bad_request("malformed_json", "the body is not one JSON object")
    return parse_object_value(value, "", required=required, optional=optional)


def parse_object_value(
    value: dict[str, Any], what: str, *, required: Iterable[str], optional: Iterable[str] = ()
) -> dict[str, Any]:
    """An object (``what``: its name, empty for the body itself) with exactly the
    ``required`` keys and any of the ``optional`` ones. A refusal names the first missing or
    unknown key, shortened (:func:`echo`)."""
    need, may = set(required), set(optional)
    missing = sorted(need - value.keys())
    prefix = f"{what}." if what else ""
    if missing:
        field = prefix + missing[0]
        raise bad_request("missing_field", f"missing {field}", field=field)
    extra = sorted(value.keys() - need - may)
    if extra:
        field = prefix + echo(extra[0])
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise bad_request("unknown_field", f"unknown {field}{more}", field=field)
    return value


def uint(value: object, what: str, *, lo: int = 0, hi: int = I63_MAX) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise bad_request("bad_field", f"{what}: expected an integer in {lo}..{hi}", field=what)
    return value


def query_uint(text: str | None, what: str, *, default: int, lo: int = 0, hi: int = I63_MAX) -> int:
    """A decimal query parameter (no sign, no leading zeros)."""
    if text is None:
        return default
    if not _UINT.fullmatch(text) or not lo <= int(text) <= hi:
        raise bad_request("bad_query", f"{what}: expected a decimal integer in {lo}..{hi}", field=what)
    return int(text)


def id_list(value: object, what: str, *, size: int, most: int) -> list[bytes]:
    """A JSON array of distinct base64url ids of ``size`` bytes (at most ``most``)."""
    if not isinstance(value, list):
        raise bad_request("bad_field", f"{what}: expected an array", field=what)
    if len(value) > most:
        raise refuse(413, "too_many_items", f"{what}: at most {most} items", field=what, limit=most)
    ids = [b64d(item, what, size=size) for item in value]
    if len(set(ids)) != len(ids):
        raise bad_request("bad_field", f"{what}: duplicate ids", field=what)
    return ids


def sized(value: object, what: str, *, max_bytes: int, code: str = "too_large") -> bytes:
    """Base64url of 1..``max_bytes`` bytes; 413 ``code`` when larger."""
    if type(value) is str and len(value) > (max_bytes * 4 + 2) // 3:
        raise refuse(413, code, f"{what}: over {max_bytes} bytes", field=what, limit=max_bytes)
    data = b64d(value, what, lo=1)
    if len(data) > max_bytes:
        raise refuse(413, code, f"{what}: over {max_bytes} bytes", field=what, limit=max_bytes)
    return data


def envelope(value: object, what: str, *, max_bytes: int) -> MessageEnvelope:
    """An encoded MessageEnvelope (base64url), decoded and validated by ping_web's core."""
    data = sized(value, what, max_bytes=max_bytes, code="envelope_too_large")
    try:
        return MessageEnvelope.decode(data)
    except Exception as exc:  # noqa: BLE001 - decode raises DecodeError only; any failure is a 400
        raise bad_request("malformed_envelope", f"{what}: {exc}", field=what) from None
