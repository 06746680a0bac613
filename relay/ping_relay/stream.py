"""The WebSocket stream (docs/relay.md, "Stream"): one connection per device.

The connection keeps, per subscribed group, the last sequence number it sent. A new
subscription catches up by reading ``seq > last_sent`` from the database itself, then
joins its group's feed (``fanout.py``), which reads each new entry once per process and
offers it to every connection following the group; both read the log, so there is no gap
and no duplicate at the hand-off, and nothing is ever pushed from a post handler. Frames
wait in a bounded send queue; one that stays full for ``ws_send_timeout`` closes the
connection (4408), and the device resumes from its cursors on a new one.

One stream per device, across processes: a new connection records itself as the device's
stream owner in the database and wakes the device's key everywhere; a connection woken
that finds another owner closes with 4409.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from typing import Any, Final

from starlette.websockets import WebSocket, WebSocketDisconnect

from . import wire
from .errors import JsonValue, RelayError, bad_request, refuse, unauthorized, unavailable
from .fanout import Joined, Subscription, dumps, entry_frame, error_frame, removed_frame
from .notify import device_key
from .relay import Relay, now_ms
from .routes import GROUP_ID, client_address, device_of_token, header_token
from .storage import Device, KeyPackageCount

SUBPROTOCOL: Final = "ping-relay.v1"
BEARER_PREFIX: Final = "bearer."
CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_SLOW_CONSUMER: Final = 4408
CLOSE_REPLACED: Final = 4409
CLOSE_RATE_LIMITED: Final = 4429
CLOSE_TIMEOUT: Final = 5.0
RETRY_DELAY: Final = 0.5
log = logging.getLogger("ping_relay.stream")


class _Close(Exception):
    """End the connection with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class SendQueue:
    """Frames waiting for the socket, bounded in count and bytes."""

    def __init__(self, max_bytes: int, max_frames: int) -> None:
        self._frames: deque[str] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_frames = max_frames
        self._space = asyncio.Event()
        self._ready = asyncio.Event()

    def _fits(self, frame: str) -> bool:
        if not self._frames:
            return True  # one frame always fits, however large
        return len(self._frames) < self._max_frames and self._bytes + len(frame) <= self._max_bytes

    def try_put(self, frame: str) -> bool:
        """Queue ``frame`` if it fits now."""
        if not self._fits(frame):
            return False
        self._frames.append(frame)
        self._bytes += len(frame)
        self._ready.set()
        return True

    async def put(self, frame: str, timeout: float) -> None:
        """Queue ``frame``; :class:`_Close` 4408 if there is no room within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._fits(frame):
            self._space.clear()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._space.wait(), remaining)
            except TimeoutError:
                raise _Close(CLOSE_SLOW_CONSUMER, "slow_consumer") from None
        self._frames.append(frame)
        self._bytes += len(frame)
        self._ready.set()

    async def get(self) -> str:
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        self._space.set()
        return frame


class Connection:
    def __init__(self, ws: WebSocket, relay: Relay, device: Device, token_expires_at_ms: int) -> None:
        self.ws = ws
        self.relay = relay
        self.device = device
        self.expires_at_ms = token_expires_at_ms
        lim = relay.config.limits
        self.queue = SendQueue(lim.ws_queue_bytes, lim.ws_queue_frames)
        self.subs: dict[bytes, Subscription] = {}
        self.wake = asyncio.Event()
        """The pump has work: a subscription to catch up, a final frame, the device's key."""
        self.device_wake = asyncio.Event()
        """The device's key was woken: Welcomes, or another stream of the device."""
        self.finals: deque[str] = deque()
        self.welcomes_sent: set[int] = set()
        self.key_packages_told: KeyPackageCount | None = None
        """The KeyPackage counts last sent in a ``key_packages_low`` frame."""
        self.replaced = asyncio.Event()
        self.owner = os.urandom(16)
        """This connection's id in the database's ``streams`` table."""

    @property
    def device_id(self) -> bytes:
        return self.device.device_id

    # -- what the feeds call (fanout.Sink) ---------------------------------------------------

    def offer(self, frame: str) -> bool:
        return self.queue.try_put(frame)

    def release(self, sub: Subscription, final: str | None) -> None:
        if self.subs.get(sub.group_id) is not sub:
            return
        if final is not None:
            del self.subs[sub.group_id]
            self.finals.append(final)
        self.wake.set()

    # -- what the process's recheck calls (relay.Closable) -------------------------------------

    async def replace(self) -> None:
        self.replaced.set()

    def recheck(self, newest_welcome: int | None, owner: bytes | None) -> None:
        if owner is not None and owner != self.owner:
            self.replaced.set()
        if newest_welcome is not None and newest_welcome not in self.welcomes_sent:
            self.device_wake.set()
            self.wake.set()

    async def put(self, frame: str) -> None:
        await self.queue.put(frame, self.relay.config.limits.ws_send_timeout)

    async def run(self) -> None:
        notifier = self.relay.notifier
        notifier.listen(device_key(self.device.device_id), self.wake)
        notifier.listen(device_key(self.device.device_id), self.device_wake)
        self.device_wake.set()
        await self.put(
            dumps(
                {
                    "type": "ready",
                    "device_id": wire.b64e(self.device.device_id),
                    "token_expires_at_ms": self.expires_at_ms,
                }
            )
        )
        tasks = [
            asyncio.create_task(self._receive()),
            asyncio.create_task(self._pump()),
            asyncio.create_task(self._send()),
            asyncio.create_task(self._expire()),
            asyncio.create_task(self._watch_replaced()),
        ]
        close: _Close | None = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if isinstance(error, _Close):
                    close = error
                elif isinstance(error, WebSocketDisconnect):
                    close = None
                elif error is not None:
                    log.error("stream connection failed", exc_info=error)
                    close = _Close(1011, "internal_error")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            notifier.unlisten(device_key(self.device.device_id), self.wake)
            notifier.unlisten(device_key(self.device.device_id), self.device_wake)
            for sub in self.subs.values():
                if sub.live:
                    self.relay.fanout.leave(sub)
            self.subs.clear()
        if close is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(close.code, close.reason), CLOSE_TIMEOUT)

    async def _watch_replaced(self) -> None:
        await self.replaced.wait()
        raise _Close(CLOSE_REPLACED, "replaced")

    async def _expire(self) -> None:
        await asyncio.sleep(max(0.0, (self.expires_at_ms - now_ms()) / 1000))
        with contextlib.suppress(_Close):
            await self.put(error_frame(unauthorized("token_expired", "the token has expired; reconnect")))
        await asyncio.sleep(0.05)
        raise _Close(CLOSE_UNAUTHORIZED, "token_expired")

    async def _send(self) -> None:
        while True:
            frame = await self.queue.get()
            await self.ws.send_text(frame)

    async def _receive(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            retry = self.relay.device_limiter.take(self.device.device_id)
            if retry is not None:
                error = refuse(429, "rate_limited", f"too many frames; retry in {retry} s", retry_after=retry)
                await self.put(error_frame(error))
                continue
            text = message.get("text")
            try:
                if not isinstance(text, str):
                    raise bad_request("bad_frame", "send JSON text frames")
                await self._handle(self._parse(text))
            except RelayError as error:
                await self.put(error_frame(error))

    @staticmethod
    def _parse(text: str) -> dict[str, Any]:
        frame = wire.parse_object(text.encode("utf-8", "surrogatepass"), required=("type",), optional=("groups",))
        if frame["type"] == "ping":
            return wire.parse_object_value(frame, "frame", required=("type",))
        if frame["type"] in ("subscribe", "unsubscribe", "ack"):
            frame = wire.parse_object_value(frame, "frame", required=("type", "groups"))
            if not isinstance(frame["groups"], list) or not frame["groups"]:
                raise bad_request("bad_frame", "groups: expected a non-empty array", field="groups")
            return frame
        raise bad_request("bad_frame", "type: expected subscribe, unsubscribe, ack or ping", field="type")

    def _cursors(self, items: list[Any], key: str) -> list[tuple[bytes, int]]:
        lim = self.relay.config.limits
        if len(items) > lim.ws_max_subscriptions:
            raise refuse(413, "too_many_items", "groups: too many", field="groups", limit=lim.ws_max_subscriptions)
        wanted: list[tuple[bytes, int]] = []
        for item in items:
            if not isinstance(item, dict):
                raise bad_request("bad_frame", f"groups: expected objects {{group_id, {key}}}", field="groups")
            item = wire.parse_object_value(item, "groups[]", required=("group_id", key))
            wanted.append((wire.b64d(item["group_id"], "group_id", size=GROUP_ID), wire.uint(item[key], key)))
        if len({g for g, _ in wanted}) != len(wanted):
            raise bad_request("bad_frame", "groups: a group is listed twice", field="groups")
        return wanted

    async def _handle(self, frame: dict[str, Any]) -> None:
        lim = self.relay.config.limits
        if frame["type"] == "ping":
            await self.put(dumps({"type": "pong"}))
            return
        if frame["type"] == "unsubscribe":
            ids = wire.id_list(frame["groups"], "groups", size=GROUP_ID, most=lim.ws_max_subscriptions)
            for group_id in ids:
                sub = self.subs.get(group_id)
                if sub is not None:
                    self._drop(sub)
                await self.put(dumps({"type": "unsubscribed", "group_id": wire.b64e(group_id)}))
            return
        if frame["type"] == "ack":
            for group_id, seq in self._cursors(frame["groups"], "seq"):
                sub = self.subs.get(group_id)
                if sub is None:
                    error = refuse(409, "not_subscribed", "acknowledge only groups subscribed on this stream")
                    await self.put(error_frame(error, group_id=wire.b64e(group_id)))
                    continue
                self.relay.cursors.report(group_id, self.device.device_id, min(seq, sub.last_sent))
            return
        for group_id, after in self._cursors(frame["groups"], "after"):
            tag: dict[str, JsonValue] = {"group_id": wire.b64e(group_id)}
            if group_id in self.subs:
                await self.put(error_frame(refuse(409, "already_subscribed", "unsubscribe first"), **tag))
                continue
            if len(self.subs) >= lim.ws_max_subscriptions:
                error = refuse(413, "too_many_subscriptions", "too many groups", limit=lim.ws_max_subscriptions)
                await self.put(error_frame(error, **tag))
                continue
            try:
                page = await self.relay.store.read(group_id, self.device.device_id, after, 0, 0)
            except RelayError as error:
                await self.put(error_frame(error, **tag))
                continue
            except Exception:
                log.warning("subscribe failed", exc_info=True)
                await self.put(error_frame(unavailable("the database did not answer; reconnect"), **tag))
                continue
            if group_id in self.subs:  # subscribed meanwhile by a concurrent frame: keep that one
                continue
            await self.put(dumps({"type": "subscribed", **tag, "after": after, "head": page.head}))
            self.subs[group_id] = Subscription(group_id, wire.b64e(group_id), self, after)
            self.relay.cursors.report(group_id, self.device.device_id, after)
            self.wake.set()

    async def _check_owner(self) -> None:
        owner = await self.relay.store.stream_owner(self.device.device_id)
        if owner is not None and owner != self.owner:
            raise _Close(CLOSE_REPLACED, "replaced")

    async def _welcomes(self) -> None:
        """Send the device's unacknowledged Welcomes this connection has not sent yet, read
        in pages bounded in count and bytes (each waits for room in the send queue)."""
        lim = self.relay.config.limits
        after = 0
        while True:
            page = await self.relay.store.welcomes(
                self.device.device_id, after, lim.page_max_entries, lim.page_max_bytes, frozenset(self.welcomes_sent)
            )
            for item in page.welcomes:
                self.welcomes_sent.add(item.id)
                frame: dict[str, JsonValue] = {
                    "type": "welcome",
                    "id": item.id,
                    "group_id": wire.b64e(item.group_id),
                    "commit_seq": item.commit_seq,
                    "envelope": wire.b64e(item.envelope),
                }
                await self.put(dumps(frame))
            if not page.more:
                return
            after = page.last_id

    async def _key_packages_low(self) -> None:
        """Tell a device that publishes KeyPackages when its regular ones run low (once per
        change of its counts on this connection), so that it publishes more."""
        threshold = self.relay.config.limits.key_packages_low
        count = await self.relay.store.count_key_packages(self.device.device_id)
        if count.available >= threshold or not count.published:
            self.key_packages_told = None
            return
        if count == self.key_packages_told:
            return
        self.key_packages_told = count
        frame: dict[str, JsonValue] = {
            "type": "key_packages_low",
            "available": count.available,
            "last_resort": count.last_resort,
            "last_resort_claims": count.last_resort_claims,
            "threshold": threshold,
        }
        await self.put(dumps(frame))

    async def _catch_up(self, sub: Subscription) -> bool:
        """Read and queue the entries after ``sub``'s cursor; join the feed once caught up.
        True if there is more to do right away."""
        lim = self.relay.config.limits
        try:
            page = await self.relay.store.read(
                sub.group_id, self.device.device_id, sub.last_sent, lim.page_default_entries, lim.page_max_bytes
            )
        except RelayError as error:
            if self.subs.get(sub.group_id) is sub:
                self._drop(sub)
                await self.put(error_frame(error, group_id=sub.tag))
            return False
        for entry in page.entries:
            if self.subs.get(sub.group_id) is not sub:
                return False
            await self.put(entry_frame(sub.tag, entry.seq, entry.envelope))
            sub.last_sent = entry.seq
        if self.subs.get(sub.group_id) is not sub:
            return False
        if page.more:
            return True
        if page.removed_seq is not None:
            self._drop(sub)
            await self.put(removed_frame(sub.tag, page.removed_seq))
            return False
        return self.relay.fanout.join(sub) is Joined.BEHIND

    async def _pump(self) -> None:
        while True:
            self.wake.clear()
            try:
                if self.device_wake.is_set():
                    self.device_wake.clear()
                    await self._check_owner()
                    await self._welcomes()
                    await self._key_packages_low()
                while self.finals:
                    await self.put(self.finals.popleft())
                busy = False
                for sub in list(self.subs.values()):
                    if not sub.live and self.subs.get(sub.group_id) is sub:
                        busy = await self._catch_up(sub) or busy
            except (_Close, asyncio.CancelledError):
                raise
            except Exception:
                log.warning("a stream's read failed; retrying", exc_info=True)
                await asyncio.sleep(RETRY_DELAY)
                self.device_wake.set()
                continue
            if not busy:
                await self.wake.wait()

    def _drop(self, sub: Subscription) -> None:
        del self.subs[sub.group_id]
        if sub.live:
            self.relay.fanout.leave(sub)


async def stream(ws: WebSocket) -> None:
    relay: Relay = ws.app.state.relay
    offered = list(ws.scope.get("subprotocols") or [])
    token: str | None = None
    problem: RelayError | None = None
    try:
        header = ws.headers.get("authorization")
        if header is not None:
            token = header_token(header)
        for protocol in offered:
            if protocol.startswith(BEARER_PREFIX):
                token = protocol[len(BEARER_PREFIX) :]
    except RelayError as error:
        problem = error
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    device: Device | None = None
    expires = 0
    connection: Connection | None = None
    if problem is None:
        try:
            if token is None:
                raise unauthorized("missing_token", "offer the subprotocol bearer.<token> or send Authorization")
            device, expires = await device_of_token(token, relay, client_address(ws))
            connection = Connection(ws, relay, device, expires)
            await relay.store.claim_stream(device.device_id, connection.owner, now_ms())
        except RelayError as error:
            problem = error
        except Exception:
            log.warning("opening a stream failed", exc_info=True)
            problem = unavailable("the database did not answer; reconnect")
    if device is None or connection is None or problem is not None:
        refusal = problem or unauthorized("invalid_token", "unknown token")
        code = {429: CLOSE_RATE_LIMITED, 503: 1011}.get(refusal.status, CLOSE_UNAUTHORIZED)
        with contextlib.suppress(Exception):
            await ws.send_text(error_frame(refusal))
            await ws.close(code, refusal.code)
        return
    previous = relay.streams.get(device.device_id)
    relay.streams[device.device_id] = connection
    if previous is not None:
        await previous.replace()
    try:
        await connection.run()
    finally:
        if relay.streams.get(device.device_id) is connection:
            del relay.streams[device.device_id]
