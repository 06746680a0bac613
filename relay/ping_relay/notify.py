"""Wake-ups: which stream connections must re-read the database.

A post never pushes its payload to a connection. It commits, then wakes the keys it
touched (``group_key`` of the group, ``device_key`` of each device that got a Welcome);
each woken connection re-reads what it has not sent yet from the database. Keys are
woken in this process right after the commit and, with PostgreSQL, in every other relay
process through ``NOTIFY`` (``backend_postgres.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


def group_key(group_id: bytes) -> str:
    return "g" + group_id.hex()


def device_key(device_id: bytes) -> str:
    return "d" + device_id.hex()


class Wakeable(Protocol):
    """An ``asyncio.Event``, or anything else woken by ``set()``."""

    def set(self) -> None: ...


class Notifier:
    """Keys to events. Call only from the event loop's thread."""

    def __init__(self) -> None:
        self._events: dict[str, set[Wakeable]] = {}

    def listen(self, key: str, event: Wakeable) -> None:
        self._events.setdefault(key, set()).add(event)

    def unlisten(self, key: str, event: Wakeable) -> None:
        events = self._events.get(key)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[key]

    def notify(self, keys: Iterable[str]) -> None:
        for key in keys:
            for event in self._events.get(key, ()):
                event.set()

    def notify_all(self) -> None:
        """Wake everyone (after a lost cross-process notification channel)."""
        for events in self._events.values():
            for event in events:
                event.set()
