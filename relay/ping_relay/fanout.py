"""Fan-out: one reader per group per process, feeding every stream that follows the group.

A subscription starts in *catch-up*: its connection reads the log for it (``Store.read``,
with the device's access checks) from the subscription's cursor until it has what the
group's feed has already handed out. It then *joins* the feed, which is the only reader of
that group in this process from then on: woken by the group's key (a post in this process,
or ``NOTIFY`` from another), it is read together with every other feed woken meanwhile
(``Store.log_pages``: one query for a batch of groups, each from the last entry its feed
handed out); each entry's frame is built once and offered to every joined subscription
that has not had it. At most one read per wake-up per group, however many devices follow
the group here, and one query for many groups under load.

An offer never waits. A subscription whose connection cannot take a frame at once is let
go (``Sink.release``) and goes back to catch-up, where its connection waits for room and
closes the connection after ``ws_send_timeout`` (4408, slow consumer): one slow device never
holds up the others. A commit that removes a joined device ends its subscription after the
commit's entry with a ``removed`` frame; entries that were pruned past a subscription's
cursor end it with ``410 cursor_expired``.

No gap, no duplicate: a subscription joins only when its cursor is at or past the feed's
position (the last seq the feed read), or when the feed's recent frames bridge the
difference; the feed hands an entry to a subscription only if its seq is past the
subscription's cursor, and entries come in seq order. Joining and offering run on the
event loop without an ``await`` in between.

One access rule on every path that hands out an entry (``GroupFeed.deliver``): the
bridge of a join and the dispatch of a read alike stop after the commit that removes the
subscription's device, and end the subscription with its ``removed`` frame (the catch-up
reads through ``Store.read``, which applies the same rule).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Final, Protocol

from .config import Limits
from .errors import JsonValue, RelayError, gone
from .notify import Notifier, group_key
from .storage import LogPage, Store

RECENT_FRAMES: Final = 16
"""Frames a feed keeps after handing them out, so a subscription a little behind can join."""
RETRY_DELAY: Final = 0.5
"""Seconds before feeds are read again after a failed read (e.g. the database restarting)."""
READ_BATCH: Final = 128
"""Most groups read by one query."""
log = logging.getLogger("ping_relay.fanout")


def dumps(frame: dict[str, JsonValue]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def error_frame(error: RelayError, **extra: JsonValue) -> str:
    return dumps({"type": "error", "status": error.status, **error.body(), **extra})


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def entry_frame(tag: str, seq: int, envelope: bytes) -> str:
    """``{"type":"entry","group_id",seq,envelope}`` (the base64url texts need no escaping)."""
    return f'{{"type":"entry","group_id":"{tag}","seq":{seq},"envelope":"{b64e(envelope)}"}}'


class Sink(Protocol):
    """What a feed needs of a stream connection."""

    @property
    def device_id(self) -> bytes: ...

    def offer(self, frame: str) -> bool:
        """Queue ``frame`` if there is room now; False (nothing queued) otherwise."""
        ...

    def release(self, sub: Subscription, final: str | None) -> None:
        """The feed let go of ``sub``: resume it by catch-up (``final`` None), or end it with
        ``final`` (a ``removed`` or an error frame), which the connection must deliver."""
        ...


@dataclass(eq=False)
class Subscription:
    group_id: bytes
    tag: str
    """The group id in base64url, as frames carry it."""
    sink: Sink
    last_sent: int
    """The connection's cursor for the group: the last seq queued for it."""
    live: bool = False
    """Joined to the group's feed (else in catch-up)."""


def _removes(removed: bytes, device_id: bytes) -> bool:
    return any(removed[i : i + 16] == device_id for i in range(0, len(removed), 16))


def removed_frame(tag: str, removed_at: int) -> str:
    return dumps({"type": "removed", "group_id": tag, "removed_at": removed_at})


class Joined(enum.Enum):
    """What came of a subscription's attempt to join its group's feed."""

    LIVE = "live"
    """It follows the feed from now on."""
    BEHIND = "behind"
    """The feed is ahead by more than its recent frames, or the connection had no room:
    catch up further by reading the log."""
    ENDED = "ended"
    """The bridge reached the commit that removed the device: ended with ``removed``."""


class _Wake:
    """What the notifier sets for a feed: marks it for the process's next batch read."""

    def __init__(self, fanout: Fanout, feed: GroupFeed) -> None:
        self._fanout = fanout
        self._feed = feed

    def set(self) -> None:
        self._fanout.mark(self._feed)


class GroupFeed:
    def __init__(self, fanout: Fanout, group_id: bytes) -> None:
        self.group_id = group_id
        self.key = group_key(group_id)
        self.tag = b64e(group_id)
        self.subs: set[Subscription] = set()
        self.position = -1
        """The last seq read and handed out (-1: none yet; set by the first join)."""
        self.recent: deque[tuple[int, str, bytes]] = deque(maxlen=RECENT_FRAMES)
        """``(seq, frame, removed device ids)`` of the last entries handed out."""
        self.wake = _Wake(fanout, self)

    def join(self, sub: Subscription) -> Joined:
        if self.position < 0:
            self.position = sub.last_sent
        if sub.last_sent < self.position:
            if not self.recent or self.recent[0][0] > sub.last_sent + 1:
                return Joined.BEHIND
            for seq, frame, removed in self.recent:
                if seq <= sub.last_sent:
                    continue
                if not sub.sink.offer(frame):
                    return Joined.BEHIND
                sub.last_sent = seq
                if removed and _removes(removed, sub.sink.device_id):
                    self.let_go(sub, removed_frame(self.tag, seq))
                    return Joined.ENDED
        self.subs.add(sub)
        sub.live = True
        return Joined.LIVE

    def let_go(self, sub: Subscription, final: str | None) -> None:
        self.subs.discard(sub)
        sub.live = False
        sub.sink.release(sub, final)

    def deliver(self, sub: Subscription, seq: int, frame: str, removed: bytes) -> None:
        """Hand one entry to a joined subscription: let it go if its connection has no room
        (it catches up by itself), end it after the commit that removes its device."""
        if not sub.sink.offer(frame):
            self.let_go(sub, None)
            return
        sub.last_sent = seq
        if removed and _removes(removed, sub.sink.device_id):
            self.let_go(sub, removed_frame(self.tag, seq))

    def dispatch(self, page: LogPage) -> None:
        """Hand out a page read after ``position``."""
        if page.pruned_through > self.position:
            expired = error_frame(
                gone(
                    "cursor_expired",
                    f"entries up to {page.pruned_through} were pruned",
                    pruned_through=page.pruned_through,
                    head=page.head,
                ),
                group_id=self.tag,
            )
            for sub in list(self.subs):
                if sub.last_sent < page.pruned_through:
                    self.let_go(sub, expired)
            self.position = max(self.position, page.pruned_through)
            self.recent.clear()
        for entry in page.entries:
            if entry.seq <= self.position:
                continue
            frame = entry_frame(self.tag, entry.seq, entry.envelope)
            for sub in list(self.subs):
                if entry.seq > sub.last_sent:
                    self.deliver(sub, entry.seq, frame, entry.removed)
            self.position = entry.seq
            self.recent.append((entry.seq, frame, entry.removed))


class Fanout:
    """The feeds of this process, one per group some stream here follows, and the one task
    that reads the log for all of them, a batch of woken feeds per query."""

    def __init__(self, store: Store, notifier: Notifier, limits: Limits) -> None:
        self.store = store
        self.notifier = notifier
        self.limits = limits
        self.feeds: dict[bytes, GroupFeed] = {}
        self._pending: dict[bytes, GroupFeed] = {}
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    def mark(self, feed: GroupFeed) -> None:
        """``feed``'s group has (or may have) entries it has not read: read it soon."""
        if feed.subs and self.feeds.get(feed.group_id) is feed:
            self._pending[feed.group_id] = feed
            self._ready.set()
            if self._reader is None:
                self._reader = asyncio.create_task(self._read_forever(), name="ping_relay.fanout")

    def join(self, sub: Subscription) -> Joined:
        """Hand ``sub`` to its group's feed (or end it, if the feed's recent entries remove
        its device)."""
        feed = self.feeds.get(sub.group_id)
        if feed is None:
            feed = GroupFeed(self, sub.group_id)
            self.feeds[sub.group_id] = feed
            self.notifier.listen(feed.key, feed.wake)
        joined = feed.join(sub)
        if joined is Joined.LIVE:
            self.mark(feed)  # read what was committed between the catch-up's read and now
        elif not feed.subs:
            self._forget(feed)
        return joined

    def leave(self, sub: Subscription) -> None:
        feed = self.feeds.get(sub.group_id)
        if feed is not None and sub in feed.subs:
            feed.subs.discard(sub)
            if not feed.subs:
                self._forget(feed)
        sub.live = False

    def _forget(self, feed: GroupFeed) -> None:
        if self.feeds.get(feed.group_id) is feed:
            del self.feeds[feed.group_id]
            self._pending.pop(feed.group_id, None)
            self.notifier.unlisten(feed.key, feed.wake)

    async def _read_forever(self) -> None:
        lim = self.limits
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._pending:
                batch = list(self._pending.values())[:READ_BATCH]
                for feed in batch:
                    del self._pending[feed.group_id]
                try:
                    pages = await self.store.log_pages(
                        [(feed.group_id, feed.position) for feed in batch], lim.page_default_entries, lim.page_max_bytes
                    )
                except Exception:
                    log.warning("reading the log of %d groups failed; retrying", len(batch), exc_info=True)
                    await asyncio.sleep(RETRY_DELAY)
                    for feed in batch:
                        self.mark(feed)
                    continue
                for feed in batch:
                    page = pages.get(feed.group_id)
                    if page is None or self.feeds.get(feed.group_id) is not feed:
                        continue
                    try:
                        feed.dispatch(page)
                    except Exception:
                        log.exception("a group's fan-out failed; its streams continue by catch-up")
                        for sub in list(feed.subs):
                            feed.let_go(sub, None)
                        self._forget(feed)
                        continue
                    if not feed.subs:
                        self._forget(feed)
                    elif page.more:
                        self.mark(feed)

    def recheck(self, heads: dict[bytes, int]) -> int:
        """Mark the feeds whose group has entries they have not read; how many were marked."""
        woken = 0
        for group_id, head in heads.items():
            feed = self.feeds.get(group_id)
            if feed is not None and head > feed.position:
                self.mark(feed)
                woken += 1
        return woken

    def wake_all(self) -> None:
        for feed in list(self.feeds.values()):
            self.mark(feed)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
