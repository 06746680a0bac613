"""The one error type the relay answers with: an HTTP status, a stable code, data."""

from __future__ import annotations

import enum
from typing import TypeAlias

JsonScalar: TypeAlias = str | int | float | bool | None
JsonValue: TypeAlias = JsonScalar | list["JsonValue"] | dict[str, "JsonValue"]


class RelayError(Exception):
    """A refusal. ``status`` is the HTTP status, ``code`` the ``error`` field of the body.

    Raised anywhere (validation, auth, storage); routes turn it into
    ``{"error": code, "detail": detail, **data}`` and the stream into an error frame.
    Nothing has been stored when one is raised.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        data: dict[str, JsonValue] | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.data = data or {}
        self.headers = headers or {}

    def body(self) -> dict[str, JsonValue]:
        return {"error": self.code, "detail": self.detail, **self.data}


def refuse(status: int, code: str, detail: str, **data: JsonValue) -> RelayError:
    return RelayError(status, code, detail, data)


def bad_request(code: str, detail: str, **data: JsonValue) -> RelayError:
    return RelayError(400, code, detail, data)


def unauthorized(code: str, detail: str) -> RelayError:
    return RelayError(401, code, detail, headers={"WWW-Authenticate": f'Bearer error="{code}"'})


def forbidden(code: str, detail: str, **data: JsonValue) -> RelayError:
    return RelayError(403, code, detail, data)


def not_found(code: str, detail: str, **data: JsonValue) -> RelayError:
    return RelayError(404, code, detail, data)


def conflict(code: str, detail: str, **data: JsonValue) -> RelayError:
    return RelayError(409, code, detail, data)


def gone(code: str, detail: str, **data: JsonValue) -> RelayError:
    return RelayError(410, code, detail, data)


def rate_limited(retry_after: int) -> RelayError:
    """429 with ``Retry-After``: the device (or client address) is over its rate."""
    return RelayError(
        429,
        "rate_limited",
        f"too many requests; retry in {retry_after} s",
        {"retry_after": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def unavailable(detail: str) -> RelayError:
    """503 with ``Retry-After: 1``: the database cannot be reached; nothing was acknowledged."""
    return RelayError(503, "unavailable", detail, headers={"Retry-After": "1"})


class QuotaScope(enum.Enum):
    """What a storage quota is counted for (the ``scope`` of ``quota_exceeded``)."""

    DEVICE = "device"
    GROUP = "group"


class ClaimScope(enum.Enum):
    """Which KeyPackage claim limit refused a claim (the ``scope`` of ``claims_limited``)."""

    PAIR = "pair"
    """This claimer, of this device's KeyPackages."""
    TARGET = "target"
    """Every claimer together, of this device's KeyPackages."""
    LAST_RESORT = "last_resort"
    """Hand-outs of this device's last-resort KeyPackage."""


class BucketKind(enum.Enum):
    """Rate buckets kept in the database (``sqlstore.py``) that a process mirrors in memory."""

    CLAIM_PAIR = "claim_pair"
    CLAIM_TARGET = "claim_target"
    LAST_RESORT = "last_resort"
    GROUPS = "groups"


def quota_exceeded(scope: QuotaScope, limit: int) -> RelayError:
    """409: storing this would take the device's or the group's log bytes past ``limit``."""
    whose = "this device's posts" if scope is QuotaScope.DEVICE else "this group's log"
    return conflict(
        "quota_exceeded",
        f"{whose} would hold more than {limit} bytes at this relay; wait for pruning to free room",
        scope=scope.value,
        limit=limit,
    )


def claims_limited(scope: ClaimScope, retry_after: int) -> RelayError:
    """429 with ``Retry-After``: a KeyPackage claim limit (``ClaimScope``) is spent."""
    return RelayError(
        429,
        "claims_limited",
        f"too many claims of this device's KeyPackages ({scope.value}); retry in {retry_after} s",
        {"scope": scope.value, "retry_after": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def mailbox_full(device_id: bytes, count: int, size: int) -> RelayError:
    """409: an added device's Welcome mailbox holds as many Welcomes, or bytes, as it may."""
    return conflict(
        "mailbox_full",
        f"an added device has {count} Welcomes ({size} bytes) waiting; it must accept or acknowledge them first",
        device_id=device_id.hex(),
    )
