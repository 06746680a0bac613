"""Web Locks ownership: one owner per device database across tabs and workers of an origin.

A database is owned by whoever holds the Web Lock of its name; the lock is held for as long
as the owner keeps it (a promise it resolves on :meth:`WebLock.release`) and the browser
frees it when the owning tab or worker goes away, crashed or not. Hosts without Web Locks
(Node) get ``None``: callers then fall back to a per-process guard.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ping_web import _ffi
from ping_web.errors import DatabaseInUse

__all__ = ["WebLock", "acquire_lock", "web_locks_available"]


class WebLock:
    """A held Web Lock: kept until :meth:`release`, which waits until others can take it."""

    def __init__(self, name: str, release: Any, request: Any) -> None:
        self.name = name
        self._release = release  # resolves the promise the lock callback returned
        self._request = request  # settles once the lock is really free again

    @property
    def held(self) -> bool:
        return self._release is not None

    async def release(self) -> None:
        if self._release is not None:
            self._release, release = None, self._release
            release()
        try:
            await self._request
        except _ffi.JsException:  # the lock was stolen (``steal: true`` elsewhere): it is free anyway
            pass


def _locks() -> Any | None:
    navigator = _ffi.host_global("navigator")
    locks = None if navigator is None else getattr(navigator, "locks", None)
    return None if _ffi.is_absent(locks) else locks


def web_locks_available() -> bool:
    """Whether this host has Web Locks (browsers and their workers do; Node does not)."""
    return _locks() is not None


async def acquire_lock(lock_name: str, *, wait: bool = False) -> WebLock | None:
    """Hold the Web Lock ``lock_name``; ``None`` where the host has no Web Locks.

    Without ``wait``, raises :class:`~ping_web.errors.DatabaseInUse` if someone else holds
    it; with ``wait``, returns once the current holder lets go (or its tab goes away).
    Cancelling the call while it waits gives the place up: if the lock comes later, it is
    released at once.
    """
    locks = _locks()
    if locks is None:
        return None
    granted: asyncio.Future[bool] = asyncio.get_event_loop().create_future()
    release: list[Any] = []

    def keep(resolve: Any, reject: Any) -> None:
        release.append(resolve)

    def on_lock(lock: Any) -> Any:
        if _ffi.is_absent(lock) or granted.done():  # unavailable, or the opener gave up meanwhile
            if not granted.done():
                granted.set_result(False)
            return None
        held = _ffi.new_promise(keep)  # the lock lasts until this promise settles
        granted.set_result(True)
        return held

    options = _ffi.js_object({} if wait else {"ifAvailable": True})
    request = locks.request(lock_name, options, _ffi.once_callable(on_lock))
    try:
        available = await granted
    except asyncio.CancelledError:  # given up while waiting: a grant that raced it is let go
        if granted.done() and not granted.cancelled() and granted.result():
            release[0]()
        raise
    if not available:
        raise DatabaseInUse(
            f"the device storage {lock_name!r} is open in another tab or worker; "
            "close it there (or use that tab) and try again"
        )
    return WebLock(lock_name, release[0], request)
