"""The relay protocol's bytes and shapes, pure (no I/O): what :mod:`ping_web.delivery.relay` sends.

Unpadded base64url, the signed statements a device makes to the relay (``docs/relay.md``,
"Signatures"), the relay's origin, refusals as values, and the connection backoff.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from ping_web.core.envelope import MessageEnvelope
from ping_web.core.ids import DeviceId
from ping_web.errors import InvalidInput

# What each signature is for (``docs/relay.md``): registering, logging in, a roster change.
LABEL_REGISTER, LABEL_AUTH, LABEL_ROSTER = "relay-register", "relay-auth", "relay-roster"
SUBPROTOCOL: Final = "ping-relay.v1"
BEARER_PREFIX: Final = "bearer."
CHALLENGE_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64


def b64e(data: bytes) -> str:
    """Unpadded base64url, the relay's one encoding of binary values."""
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")


def b64d(text: Any, what: str, *, size: int | None = None) -> bytes:
    """Bytes of an unpadded base64url string from the relay; :class:`InvalidInput` if it is not one."""
    if not isinstance(text, str) or "=" in text:
        raise InvalidInput(f"relay reply: {what} is not unpadded base64url")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"relay reply: {what} is not unpadded base64url") from None
    if size is not None and len(data) != size:
        raise InvalidInput(f"relay reply: {what} has {len(data)} bytes, expected {size}")
    return data


def origin_of(url: str) -> str:
    """The origin of ``url`` as the relay spells its own: ``scheme://host[:port]``, lowercase,
    without path or default port. A device signs with it (``--origin`` of the relay)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"a relay URL is http(s)://host[:port], got {url!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def stream_url(base_url: str) -> str:
    """The stream's URL for a relay at ``base_url``: ``ws(s)://.../v1/stream``."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme.lower() == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/v1/stream"


def register_content(device_id: DeviceId, public_key: bytes, user_id: bytes, origin: str) -> bytes:
    """``relay-register``: device id || public key || len(user id) (u8) || user id || origin."""
    if not 1 <= len(user_id) <= 255:
        raise InvalidInput("a relay user id is 1..255 bytes")
    return device_id.raw + public_key + bytes([len(user_id)]) + user_id + origin.encode("utf-8")


def auth_content(challenge: bytes, device_id: DeviceId, origin: str) -> bytes:
    """``relay-auth``: challenge || device id || origin."""
    return challenge + device_id.raw + origin.encode("utf-8")


def roster_content(commit: MessageEnvelope, added: Iterable[DeviceId], removed: Iterable[DeviceId]) -> bytes:
    """``relay-roster``: group || commit epoch (u64 BE) || commit content hash || n added
    (u32 BE) || added ids sorted || n removed (u32 BE) || removed ids sorted."""
    parts = [commit.conversation_id.raw, commit.epoch.to_bytes(8, "big"), commit.content_hash]
    for ids in (sorted(d.raw for d in added), sorted(d.raw for d in removed)):
        parts.append(len(ids).to_bytes(4, "big"))
        parts.extend(ids)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A relay reply other than 200: ``status``, the stable ``error`` code, and its data."""

    status: int
    error: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, status: int, text: str) -> Refusal:
        """A refusal from its status and JSON body (a body that is not the relay's JSON
        still gives a refusal, coded ``http_<status>``)."""
        try:
            body = json.loads(text) if text else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            return cls(status, f"http_{status}", text[:200])
        detail = body.get("detail")
        data = {k: v for k, v in body.items() if k not in ("error", "detail", "status", "type")}
        return cls(status, body["error"], detail if isinstance(detail, str) else "", data)

    def describe(self) -> str:
        return f"{self.status} {self.error}" + (f" ({self.detail})" if self.detail else "")


@dataclass(slots=True)
class Backoff:
    """Reconnection delays: exponential from ``base_s``, capped at ``cap_s``, with jitter
    (each delay is drawn from ``[d / 2, d]``), so devices that lost one relay do not all
    come back at the same instant."""

    base_s: float = 0.5
    cap_s: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
