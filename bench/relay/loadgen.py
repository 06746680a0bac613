"""A load generator for the relay: simulated devices in groups, posting and listening.

Every device is real as far as the relay can tell: an Ed25519 key (``cryptography``)
that signs the relay's auth construction (``b"ping-web/" + label + b"\\x00" + content``,
the algorithm the wasm module uses), registration, login, a bearer token, envelopes
built with ``ping_web.core.envelope``, one WebSocket stream per device.

A device posts one envelope at a time (its own ``seq`` counter goes up by one per post),
so the relay's order of a sender's posts must be the sender's order. The
:class:`Checker` verifies every delivery against what was posted: per receiver and
group the relay seqs arrive without gap or repeat, per receiver and sender the sender
seqs only go up, every acknowledged post reaches every member's stream exactly once with
the bytes that were posted, and no two log entries carry the same post. It also times
each post from just before its request to the moment the last member's stream delivered
it (all in this process, on one monotonic clock).

Posts and streams survive relay restarts: a failed request is retried with the same bytes
(the relay deduplicates by sender and seq), on another relay process if one is down; a
closed stream reconnects to whichever process answers and subscribes again from its
cursor.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ping_web.core import devlog
from ping_web.core.envelope import Hlc, MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, DeviceId, UserId

SUBPROTOCOL = "ping-relay.v1"
PAYLOAD_BYTES = 256
"""Ciphertext size of a simulated application message (a short chat message under MLS)."""


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_input(label: str, content: bytes) -> bytes:
    return b"ping-web/" + label.encode("ascii") + b"\x00" + content


def roster_content(
    group: bytes, epoch: int, commit_hash: bytes, added: Sequence[bytes], removed: Sequence[bytes]
) -> bytes:
    out = group + epoch.to_bytes(8, "big") + commit_hash
    for ids in (sorted(added), sorted(removed)):
        out += len(ids).to_bytes(4, "big") + b"".join(ids)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


class RelayDown(Exception):
    """No relay process answered within the deadline."""


class Http:
    """One aiohttp session over the relay processes, with retries and failover."""

    def __init__(self, urls: Sequence[str], connections: int = 256, deadline: float = 90.0) -> None:
        self.urls = list(urls)
        self.deadline = deadline
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=30, connect=5),
            json_serialize=lambda obj: json.dumps(obj, separators=(",", ":")),
        )
        self.retries = 0

    async def close(self) -> None:
        await self.session.close()

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None, prefer: int = 0
    ) -> tuple[int, dict[str, Any]]:
        """One request; a lost connection, a 5xx or a 429 is retried (same body), also on
        the other processes. Other statuses are returned with the reply body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        loop = asyncio.get_running_loop()
        stop = loop.time() + self.deadline
        attempt = 0
        while True:
            url = self.urls[(prefer + attempt) % len(self.urls)]
            delay = min(0.5, 0.02 * (attempt + 1))
            try:
                async with self.session.request(method, url + path, json=body, headers=headers) as r:
                    data = await r.json(content_type=None)
                    if r.status == 429:
                        delay = float(r.headers.get("Retry-After", "1"))
                    elif r.status < 500:
                        return r.status, data
            except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError):
                pass
            attempt += 1
            self.retries += 1
            if loop.time() + delay > stop:
                raise RelayDown(f"{method} {path}: no answer within {self.deadline} s")
            await asyncio.sleep(delay)

    async def ok(
        self, method: str, path: str, body: Any = None, *, token: str | None = None, prefer: int = 0
    ) -> dict[str, Any]:
        status, data = await self.call(method, path, body, token=token, prefer=prefer)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {data}")
        return data


@dataclass(eq=False)
class SimDevice:
    index: int
    origin: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    device_id: bytes = field(default_factory=lambda: os.urandom(16))
    user_id: bytes = field(default_factory=lambda: os.urandom(8))
    token: str = ""
    group: bytes = b""
    members: int = 0
    seq: int = 0
    post_prefer: int = 0
    stream_prefer: int = 0

    @property
    def id(self) -> str:
        return b64e(self.device_id)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, label: str, content: bytes) -> bytes:
        return self.key.sign(signing_input(label, content))

    async def setup(self, http: Http) -> None:
        content = self.device_id + self.public_key + bytes([len(self.user_id)]) + self.user_id + self.origin.encode()
        await http.ok(
            "POST",
            "/v1/devices",
            {
                "user_id": b64e(self.user_id),
                "device_id": self.id,
                "signature_public_key": b64e(self.public_key),
                "signature": b64e(self.sign("relay-register", content)),
                "device_log": b64e(devlog.genesis(UserId(self.user_id), DeviceId(self.device_id), self.public_key,
                                                  self.sign, ts_ms=int(time.time() * 1000))),  # a new user's first device
            },
            prefer=self.post_prefer,
        )
        challenge = b64d(
            (await http.ok("POST", "/v1/auth/challenge", {"device_id": self.id}, prefer=self.post_prefer))["challenge"]
        )
        signature = self.sign("relay-auth", challenge + self.device_id + self.origin.encode())
        reply = await http.ok(
            "POST",
            "/v1/auth/token",
            {"device_id": self.id, "challenge": b64e(challenge), "signature": b64e(signature)},
            prefer=self.post_prefer,
        )
        self.token = reply["token"]

    def application(self, epoch: int, payload: bytes) -> MessageEnvelope:
        self.seq += 1
        return MessageEnvelope.application(
            ConversationId(self.group),
            epoch,
            DeviceId(self.device_id),
            self.seq,
            Hlc(int(time.time() * 1000), 0),
            payload,
            payload[:32],
        )

    def commit_body(self, epoch: int, added: Sequence[bytes]) -> dict[str, Any]:
        self.seq += 1
        hlc = Hlc(int(time.time() * 1000), 0)
        conv, me = ConversationId(self.group), DeviceId(self.device_id)
        commit = MessageEnvelope.handshake(MessageKind.COMMIT, conv, epoch, me, self.seq, hlc, os.urandom(64))
        welcome = None
        if added:
            w = MessageEnvelope.handshake(MessageKind.WELCOME, conv, epoch + 1, me, self.seq, hlc, os.urandom(64))
            welcome = {"envelope": b64e(w.encode()), "joiners": [b64e(d) for d in added]}
        signature = self.sign("relay-roster", roster_content(self.group, epoch, commit.content_hash, added, []))
        return {
            "commit": b64e(commit.encode()),
            "welcome": welcome,
            "roster": {"added": [b64e(d) for d in added], "removed": [], "signature": b64e(signature)},
        }


@dataclass(eq=False)
class Post:
    group: bytes
    sender: int
    members: int
    started: float
    seq: int | None = None
    received: int = 0
    last: float = 0.0


@dataclass(eq=False)
class _Known:
    envelope: str
    post: Post | None
    sender: bytes
    sender_seq: int


@dataclass
class Report:
    posted: int = 0
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    gaps: int = 0
    mismatched: int = 0
    unexpected: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.lost or self.duplicated or self.out_of_order or self.gaps or self.mismatched or self.unexpected
        )

    def summary(self) -> str:
        lat = self.latencies_ms
        text = (
            f"posted {self.posted}, acked {self.acked}, delivered {self.delivered}; lost {self.lost},"
            f" duplicated {self.duplicated}, out of order {self.out_of_order}, gaps {self.gaps},"
            f" mismatched {self.mismatched}, unexpected {self.unexpected}"
        )
        if lat:
            text += f"; fan-out p50 {percentile(lat, 0.5):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms, max {max(lat):.1f} ms"
        return text


class Checker:
    """Every delivery checked against what was posted (see the module docstring)."""

    def __init__(self) -> None:
        self.posts: dict[tuple[bytes, int], Post] = {}
        self.known: dict[tuple[bytes, int], _Known] = {}
        self.by_post: dict[tuple[bytes, int], int] = {}
        self.report = Report()
        self.window: list[Post] | None = None

    def posting(self, device: SimDevice, envelope: MessageEnvelope) -> Post:
        post = Post(device.group, device.index, device.members, time.perf_counter())
        self.posts[(device.device_id, envelope.seq)] = post
        self.report.posted += 1
        if self.window is not None:
            self.window.append(post)
        return post

    def acked(self, post: Post, seq: int) -> None:
        """The relay answered ``seq`` (0: a baseline, whose broker numbers differently)."""
        if post.seq and seq and post.seq != seq:
            self.report.mismatched += 1
        post.seq = seq
        self.report.acked += 1

    def delivered(self, receiver: Receiver, group: bytes, seq: int, envelope: str, now: float) -> None:
        rep = self.report
        rep.delivered += 1
        info = self.known.get((group, seq))
        if info is None:
            env = MessageEnvelope.decode(b64d(envelope))
            if env.conversation_id.raw != group:
                rep.mismatched += 1
            key = (env.sender_device.raw, env.seq)
            post = self.posts.get(key)
            if post is None:
                rep.unexpected += 1
            previous = self.by_post.setdefault(key, seq)
            if previous != seq:
                rep.duplicated += 1  # one post stored twice in the log
            info = _Known(envelope, post, key[0], key[1])
            self.known[(group, seq)] = info
        elif info.envelope != envelope:
            rep.mismatched += 1
        last = receiver.by_sender.get(info.sender, 0)
        if info.sender_seq <= last:
            rep.out_of_order += 1
        else:
            receiver.by_sender[info.sender] = info.sender_seq
        post = info.post
        if post is not None:
            if post.seq and post.seq != seq:
                rep.mismatched += 1
            post.received += 1
            post.last = max(post.last, now)

    def pending(self) -> int:
        """Acknowledged posts some member has not received yet."""
        return sum(1 for p in self.posts.values() if p.seq is not None and p.received < p.members)

    def latencies(self, posts: Sequence[Post]) -> list[float]:
        return [(p.last - p.started) * 1000 for p in posts if p.seq is not None and p.received >= p.members]

    def finish(self) -> Report:
        rep = self.report
        rep.latencies_ms = self.latencies(list(self.posts.values()))
        rep.lost = sum(max(0, p.members - p.received) for p in self.posts.values() if p.seq is not None)
        rep.duplicated += sum(max(0, p.received - p.members) for p in self.posts.values())
        return rep


@dataclass(eq=False)
class Receiver:
    """One device's stream: the cursor of its group, reconnecting on any close."""

    device: SimDevice
    urls: Sequence[str]
    checker: Checker
    cursor: int
    ack_interval: float = 0.0
    by_sender: dict[bytes, int] = field(default_factory=dict)
    reconnects: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    fatal: list[str] = field(default_factory=list)
    closed_codes: list[int] = field(default_factory=list)
    _stop: bool = False
    _ws: aiohttp.ClientWebSocketResponse | None = None

    async def run(self, session: aiohttp.ClientSession) -> None:
        attempt = 0
        group = b64e(self.device.group)
        while not self._stop:
            url = self.urls[(self.device.stream_prefer + attempt) % len(self.urls)].replace("http://", "ws://")
            try:
                async with session.ws_connect(
                    url + "/v1/stream",
                    protocols=(SUBPROTOCOL, "bearer." + self.device.token),
                    max_msg_size=4 * 1024 * 1024,
                    autoping=True,
                    heartbeat=None,
                ) as ws:
                    self._ws = ws
                    await ws.send_str(
                        json.dumps({"type": "subscribe", "groups": [{"group_id": group, "after": self.cursor}]})
                    )
                    acker = asyncio.create_task(self._ack(ws, group)) if self.ack_interval > 0 else None
                    try:
                        await self._read(ws)
                    finally:
                        if acker is not None:
                            acker.cancel()
                    if ws.close_code is not None:
                        self.closed_codes.append(ws.close_code)
                    attempt = 0 if ws.close_code in (4408,) else attempt + 1
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                attempt += 1
            finally:
                self._ws = None
            if self._stop:
                return
            self.reconnects += 1
            await asyncio.sleep(min(1.0, 0.05 * attempt))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        checker = self.checker
        group = self.device.group
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            kind = frame["type"]
            if kind == "entry":
                seq = frame["seq"]
                now = time.perf_counter()
                if seq <= self.cursor:
                    checker.report.duplicated += 1
                    continue
                if seq != self.cursor + 1:
                    checker.report.gaps += 1
                self.cursor = seq
                checker.delivered(self, group, seq, frame["envelope"], now)
            elif kind == "subscribed":
                self.subscribed.set()
            elif kind == "error":
                if frame.get("status", 500) >= 500 or frame.get("status") == 429:
                    return  # reconnect and subscribe again
                self.fatal.append(f"{frame.get('status')} {frame.get('error')}")
                return

    async def _ack(self, ws: aiohttp.ClientWebSocketResponse, group: str) -> None:
        sent = -1
        while True:
            await asyncio.sleep(self.ack_interval)
            if self.cursor != sent:
                sent = self.cursor
                await ws.send_str(json.dumps({"type": "ack", "groups": [{"group_id": group, "seq": sent}]}))

    async def stop(self) -> None:
        self._stop = True
        ws = self._ws
        if ws is not None:
            await ws.close()


class Population:
    """N devices in groups of ``group_size`` on the relay processes at ``urls``."""

    def __init__(
        self, urls: Sequence[str], devices: int, group_size: int, origin: str, *, ack_interval: float = 0.0
    ) -> None:
        self.urls = list(urls)
        self.origin = origin
        self.group_size = group_size
        self.devices = [SimDevice(i, origin) for i in range(devices)]
        count = len(self.urls)
        for d in self.devices:
            d.stream_prefer = d.index % count
            d.post_prefer = (d.index + 1) % count  # posts go through another process than the stream
        self.http = Http(self.urls)
        self.checker = Checker()
        self.receivers: list[Receiver] = []
        self.ws_session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ack_interval = ack_interval
        self.epoch = 1

    def groups(self) -> list[list[SimDevice]]:
        """The devices in groups of ``group_size``, each group given its id."""
        groups = [self.devices[i : i + self.group_size] for i in range(0, len(self.devices), self.group_size)]
        for members in groups:
            group = os.urandom(16)
            for m in members:
                m.group = group
                m.members = len(members)
        return groups

    async def setup(self, parallel: int = 32) -> None:
        sem = asyncio.Semaphore(parallel)

        async def one(coro_fn: Callable[[], Any]) -> None:
            async with sem:
                await coro_fn()

        await asyncio.gather(*(one(lambda d=d: d.setup(self.http)) for d in self.devices))

        async def make_group(members: list[SimDevice]) -> None:
            creator = members[0]
            group = creator.group
            await self.http.ok(
                "POST", "/v1/groups", {"group_id": b64e(group)}, token=creator.token, prefer=creator.post_prefer
            )
            added = [m.device_id for m in members[1:]]
            body = creator.commit_body(0, added)
            await self.http.ok(
                "POST", f"/v1/groups/{b64e(group)}/commits", body, token=creator.token, prefer=creator.post_prefer
            )

        await asyncio.gather(*(one(lambda g=g: make_group(g)) for g in self.groups()))

    async def connect(self, within: float = 120.0) -> None:
        self.ws_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, connect=10)
        )
        self.receivers = [
            Receiver(d, self.urls, self.checker, cursor=1, ack_interval=self.ack_interval) for d in self.devices
        ]
        for i, r in enumerate(self.receivers):
            self._tasks.append(asyncio.create_task(r.run(self.ws_session)))
            if i % 50 == 49:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*(r.subscribed.wait() for r in self.receivers)), within)

    async def post(self, device: SimDevice) -> Post:
        envelope = device.application(self.epoch, os.urandom(PAYLOAD_BYTES))
        post = self.checker.posting(device, envelope)
        post.seq = None
        self.checker.acked(post, await self.send(device, envelope))
        return post

    async def send(self, device: SimDevice, envelope: MessageEnvelope) -> int:
        """Post one envelope; its seq in the group's log."""
        body = {"envelope": b64e(envelope.encode())}
        reply = await self.http.ok(
            "POST", f"/v1/groups/{b64e(device.group)}/messages", body, token=device.token, prefer=device.post_prefer
        )
        return int(reply["seq"])

    async def closed_loop(self, duration: float, concurrency: int) -> tuple[int, float]:
        """Post as fast as the relay accepts, ``concurrency`` requests in flight (each from
        an idle device); returns (accepted posts, seconds)."""
        idle = deque(self.devices)
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        accepted = 0

        async def worker() -> None:
            nonlocal accepted
            while loop.time() < end:
                if not idle:
                    await asyncio.sleep(0.001)
                    continue
                d = idle.popleft()
                try:
                    await self.post(d)
                    accepted += 1
                finally:
                    idle.append(d)

        start = loop.time()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(self.devices)))))
        return accepted, loop.time() - start

    async def open_loop(self, rate: float, duration: float) -> tuple[list[Post], int]:
        """Post at ``rate`` per second for ``duration`` seconds (a post is skipped when every
        device still waits for its previous reply); returns the posts and the skips."""
        idle = deque(self.devices)
        loop = asyncio.get_running_loop()
        posts: list[Post] = []
        tasks: set[asyncio.Task[None]] = set()
        skipped = 0

        async def one(d: SimDevice) -> None:
            try:
                posts.append(await self.post(d))
            finally:
                idle.append(d)

        start = loop.time()
        total = int(rate * duration)
        for k in range(total):
            delay = start + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not idle:
                skipped += 1
                continue
            task = asyncio.create_task(one(idle.popleft()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        return posts, skipped

    async def drain(self, within: float = 60.0) -> bool:
        """Wait until every acknowledged post reached every member (False on timeout)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while self.checker.pending():
            if loop.time() > end:
                return False
            await asyncio.sleep(0.1)
        return True

    async def close(self) -> None:
        for r in self.receivers:
            await r.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.ws_session is not None:
            await self.ws_session.close()
        await self.http.close()

    def reconnects(self) -> int:
        return sum(r.reconnects for r in self.receivers)

    def fatal(self) -> list[str]:
        return [f for r in self.receivers for f in r.fatal]


class RedisPopulation(Population):
    """The same devices, groups and payloads over Redis Streams: one stream per group,
    ``XADD`` to post, a connection per device blocking in ``XREAD`` to listen. Redis numbers
    entries itself, so a receiver counts what it got per group as its cursor."""

    def __init__(self, url: str, devices: int, group_size: int) -> None:
        super().__init__(["http://unused"], devices, group_size, "redis")
        self.redis_url = url
        self.pool: Any = None
        self.readers: list[Any] = []

    async def setup(self, parallel: int = 32) -> None:
        import redis.asyncio as aioredis

        self.groups()
        self.pool = aioredis.Redis.from_url(self.redis_url, max_connections=256)

    async def connect(self, within: float = 120.0) -> None:
        import redis.asyncio as aioredis

        ready = []
        for i, d in enumerate(self.devices):
            r = Receiver(d, [], self.checker, cursor=0)
            self.receivers.append(r)
            client = aioredis.Redis.from_url(self.redis_url, single_connection_client=True, socket_timeout=None)
            self.readers.append(client)
            started = asyncio.Event()
            ready.append(started)
            self._tasks.append(asyncio.create_task(self._listen(r, client, started)))
            if i % 50 == 49:  # do not overflow the server's accept backlog
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), within)
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), within)

    async def _listen(self, r: Receiver, client: Any, started: asyncio.Event) -> None:
        import redis.asyncio as aioredis

        key = b"g:" + r.device.group.hex().encode()
        last = b"0-0"  # a fresh stream: everything in it was posted during the run
        while True:
            try:
                await client.ping()
                break
            except (OSError, aioredis.RedisError):
                await asyncio.sleep(0.1)
        started.set()
        while True:
            try:
                reply = await client.xread({key: last}, block=1000, count=1000)  # within any client timeout
            except Exception as exc:  # noqa: BLE001 - any failure: a new connection, on from the last id
                r.reconnects += 1
                if not r.fatal:
                    r.fatal.append(f"reconnected after {type(exc).__name__}: {exc}"[:120])
                with contextlib.suppress(Exception):
                    await client.aclose()
                client = aioredis.Redis.from_url(self.redis_url, single_connection_client=True, socket_timeout=None)
                self.readers.append(client)
                await asyncio.sleep(0.1)
                continue
            now = time.perf_counter()
            for _, items in reply or ():
                for entry_id, fields in items:
                    last = entry_id
                    r.cursor += 1
                    self.checker.delivered(r, r.device.group, r.cursor, b64e(fields[b"e"]), now)

    async def send(self, device: SimDevice, envelope: MessageEnvelope) -> int:
        await self.pool.xadd(b"g:" + device.group.hex().encode(), {b"e": envelope.encode()})
        return 0

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for client in self.readers:
            with contextlib.suppress(Exception):
                await client.aclose()
        if self.pool is not None:
            await self.pool.aclose()
        await self.http.close()


class NatsPopulation(Population):
    """The same over NATS JetStream: one stream with a subject per group, ``publish`` (which
    waits for the stream's acknowledgement) to post, an ordered push consumer per device,
    on its own connection, to listen."""

    def __init__(self, url: str, devices: int, group_size: int) -> None:
        super().__init__(["http://unused"], devices, group_size, "nats")
        self.nats_url = url
        self.publishers: list[Any] = []
        self.listeners: list[Any] = []

    async def setup(self, parallel: int = 32) -> None:
        import nats
        from nats.js.api import StorageType, StreamConfig

        self.groups()
        for _ in range(4):
            self.publishers.append(await nats.connect(self.nats_url))
        js = self.publishers[0].jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream("PING")
        await js.add_stream(StreamConfig(name="PING", subjects=["g.>"], storage=StorageType.FILE))

    async def connect(self, within: float = 120.0) -> None:
        import nats
        from nats.js.api import DeliverPolicy

        sem = asyncio.Semaphore(32)

        async def one(d: SimDevice) -> None:
            async with sem:
                nc = await nats.connect(self.nats_url)
                self.listeners.append(nc)
                r = Receiver(d, [], self.checker, cursor=0)
                self.receivers.append(r)
                group = d.group

                async def on_message(msg: Any, r: Receiver = r, group: bytes = group) -> None:
                    r.cursor += 1
                    self.checker.delivered(r, group, r.cursor, b64e(msg.data), time.perf_counter())

                await nc.jetstream().subscribe(
                    f"g.{group.hex()}", cb=on_message, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
                )

        await asyncio.wait_for(asyncio.gather(*(one(d) for d in self.devices)), within)

    async def send(self, device: SimDevice, envelope: MessageEnvelope) -> int:
        nc = self.publishers[device.index % len(self.publishers)]
        await nc.jetstream().publish(f"g.{device.group.hex()}", envelope.encode(), timeout=30)
        return 0

    async def close(self) -> None:
        for nc in [*self.listeners, *self.publishers]:
            with contextlib.suppress(Exception):
                await nc.close()
        await self.http.close()
