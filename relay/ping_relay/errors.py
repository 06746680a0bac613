"""The one error type the relay answers with: an HTTP status, a stable code, data."""

from __future__ import annotations

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
