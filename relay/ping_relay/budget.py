"""How many request-body bytes a process is receiving at once, per client and in all.

Every request body is read into memory (it is parsed as one JSON object). Without a bound,
one device with its burst of requests, each up to ``max_body_bytes`` and sent slowly,
holds hundreds of megabytes in the relay; many clients, more. A body is counted while it
is received (by its ``Content-Length`` up front, else chunk by chunk) and released once
read: a client over its share gets 429 ``uploads_limited``, and when the process's whole
budget is taken, 503 ``busy``; both say ``Retry-After: 1`` and nothing was stored.
"""

from __future__ import annotations

from .errors import RelayError

RETRY_AFTER = 1


def uploads_limited(limit: int) -> RelayError:
    return RelayError(
        429,
        "uploads_limited",
        f"this client is sending more than {limit} bytes of request bodies at once; retry in {RETRY_AFTER} s",
        {"limit": limit, "retry_after": RETRY_AFTER},
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def busy() -> RelayError:
    return RelayError(
        503,
        "busy",
        f"the relay is receiving as many request bodies as it holds at once; retry in {RETRY_AFTER} s",
        {"retry_after": RETRY_AFTER},
        headers={"Retry-After": str(RETRY_AFTER)},
    )


class BodyBudget:
    """Bytes of request bodies being received: at most ``per_client`` for one client key (a
    device, or the address of an unauthenticated request), at most ``total`` in all."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.used = 0
        self._by_client: dict[object, int] = {}

    def take(self, client: object, size: int) -> None:
        """Count ``size`` more bytes for ``client``; refuse (nothing counted) past a limit."""
        held = self._by_client.get(client, 0)
        if held + size > self.per_client:
            raise uploads_limited(self.per_client)
        if self.used + size > self.total:
            raise busy()
        self._by_client[client] = held + size
        self.used += size

    def give_back(self, client: object, size: int) -> None:
        held = self._by_client.get(client, 0) - size
        self.used -= size
        if held > 0:
            self._by_client[client] = held
        else:
            self._by_client.pop(client, None)
