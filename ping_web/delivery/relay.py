"""RelayDelivery: the :class:`~ping_web.delivery.Delivery` protocol over the relay (``docs/relay.md``).

Works wherever Pyodide has ``fetch``: a page, a (module) Web Worker, Node 18+. All
JavaScript goes through :mod:`ping_web._ffi` (``http_request``, ``open_websocket``)::

    delivery = RelayDelivery("https://relay.example", on_notice=lambda n: schedule_sync())
    client = await MessagingClient.open(storage, b"alice", delivery=delivery)

**Identity.** The client binds its device (:meth:`RelayDelivery.bind`, a
:class:`~ping_web.delivery.DeviceSigner`) when it opens. The first request registers the
device (``relay-register``, signed by its MLS key inside the wasm module) and logs in
(a challenge signed ``relay-auth``) for a bearer token. A ``401`` (``token_expired``,
``invalid_token``) logs in again and repeats the request once. Signatures bind the relay's
origin: by default the origin of ``url``; pass ``origin`` when the relay runs with an
``--origin`` other than the URL this device reaches it by.

**Requests.** Each call is one relay request (a fetch follows ``more``). Without an answer
(network down, relay restarting) or on ``5xx``/``408``/``429``, a request is repeated with
jittered backoff for up to ``retry_for_s`` seconds, then :class:`~ping_web.delivery.DeliveryUnavailable`
is raised (:class:`~ping_web.errors.RateLimited`, with ``retry_after_s``, for a ``429``); while
the relay is known to be unreachable (state ``offline``) it is tried once. The relay's limits
map to typed errors that say what to do: a storage quota or the devices of one user to
:class:`~ping_web.errors.QuotaExceeded`, a seq the relay already holds other bytes for to
:class:`~ping_web.errors.RejoinRequired`, a commit's full mailbox or oversized Welcome to
:class:`~ping_web.errors.CommitRefused`.
Repeating is safe: posts and commits are deduplicated by the relay on (sender, seq), so a
post whose reply was lost is answered with its original seq; registration, group creation,
publishing and acknowledging are idempotent. Posts of one conversation go out one at a
time, in call order. A conversation the relay does not know (its creator was offline when
it was made) is registered by the first post, commit or fetch that finds it missing.

**Push.** Once bound, a background task keeps one WebSocket to ``/v1/stream``: on
``ready`` it subscribes every conversation this object has fetched, from the position the
client last fetched from (what it has applied, durably); entries it pushes are kept and
hand the next :meth:`fetch` its envelopes without a request, and each one (and each
Welcome) is announced to ``on_notice`` (a :class:`~ping_web.delivery.Notice`: call
``sync()``). Positions the client reaches are acknowledged on the stream (an ``ack``
frame, at most one a second), as a fetch over HTTP reports its own. A closed stream reconnects with
backoff (0.5 s doubling, capped at ``backoff_cap_s``, each delay drawn from ``[d/2, d]``)
and subscribes again from the same positions, so nothing is missed and the client's
durable cursor decides what it applies. Without a ``WebSocket`` (Node 20 without
``--experimental-websocket``) it polls every ``poll_interval_s`` instead: Welcomes and the
log of each fetched conversation.

**State.** :attr:`RelayDelivery.state` (and ``on_state`` on every change) is a
:class:`ConnectionState`: ``connecting``, ``connected``, ``reconnecting`` (a connection
failed; retrying), ``offline`` (``offline_after`` attempts in a row failed, or the host
says it is offline), ``replaced`` (another connection of this device took the stream:
requests still work, push stopped) or ``closed``; ``queued`` counts envelopes a post or
commit could not hand over and that were not posted since (the client's outbox keeps them
and ``sync()`` posts them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

from ping_web import _ffi
from ping_web.core import codec
from ping_web.core.envelope import MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.delivery.base import DeviceLogPage, DeviceSigner, LogPage, Notice, RosterChange
from ping_web.delivery.relay_wire import (
    BEARER_PREFIX,
    CHALLENGE_SIZE,
    LABEL_AUTH,
    LABEL_REGISTER,
    LABEL_ROSTER,
    SUBPROTOCOL,
    Backoff,
    Refusal,
    auth_content,
    b64d,
    b64e,
    origin_of,
    register_content,
    roster_content,
    stream_url,
)
from ping_web.errors import (
    CommitRefused,
    DeliveryUnavailable,
    DeviceLogInvalid,
    InvalidInput,
    LinkFailed,
    NotAMember,
    PingError,
    QuotaExceeded,
    RateLimited,
    RejoinRequired,
    StateConflict,
    UnknownConversation,
)

__all__ = ["ConnectionState", "RelayDelivery", "RelayRefused"]

T = TypeVar("T")

# The statuses of a connection (``ConnectionState.status``).
STATUSES = CONNECTING, CONNECTED, RECONNECTING, OFFLINE, REPLACED, CLOSED = (
    "connecting", "connected", "reconnecting", "offline", "replaced", "closed",
)  # fmt: skip

PAGE_LIMIT: Final = 1000
KEY_PACKAGES_PER_REQUEST: Final = 100
ACK_IDS_PER_REQUEST: Final = 1000
SUBSCRIBE_PER_FRAME: Final = 500
CACHE_ENTRIES: Final = 4096
"""Most pushed entries kept per conversation for the next fetch (beyond: fetched again)."""
ACK_DELAY_S: Final = 1.0
"""Acknowledgements of positions wait this long, to go out together in one frame."""
CONNECT_TIMEOUT_S: Final = 10.0
"""How long a stream connection may take to say ``ready``."""
TOKEN_MARGIN_MS: Final = 30_000
"""A token this close to its expiry is renewed before use."""
_AUTH_RETRY: Final = frozenset({"token_expired", "invalid_token", "missing_token"})


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """How :class:`RelayDelivery` reaches the relay, for a UI: see the module docstring.

    ``attempt`` counts failed connection attempts in a row, ``retry_in_s`` is the wait
    before the next one (``None`` while connected), ``push`` is ``"websocket"``,
    ``"polling"`` or ``"none"``, ``detail`` says what failed last."""

    status: str
    queued: int = 0
    attempt: int = 0
    retry_in_s: float | None = None
    push: str = "none"
    detail: str = ""


class RelayRefused(PingError):
    """The relay refused a request with a code no subclass of ours names (e.g. a 400 or 413
    for input this client built): ``refusal`` holds its status, code and data."""

    def __init__(self, message: str, refusal: Refusal) -> None:
        super().__init__(message)
        self.refusal = refusal


class _Refused(Exception):
    """A relay refusal inside this module (mapped to a PingError before it leaves)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.describe())
        self.refusal = refusal


class RelayDelivery:
    """A :class:`~ping_web.delivery.Delivery` over the relay at ``url`` (see the module docstring).

    ``url`` defaults to the origin of the page or worker (a relay serving the app itself).
    ``push`` is ``"auto"`` (WebSocket if the host has one, else polling), ``"websocket"``,
    ``"polling"`` or ``"off"`` (no background task: the app calls ``sync()`` itself).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        origin: str | None = None,
        push: str = "auto",
        on_notice: Callable[[Notice], None] | None = None,
        on_state: Callable[[ConnectionState], None] | None = None,
        request_timeout_s: float = 20.0,
        retry_for_s: float = 8.0,
        backoff_cap_s: float = 30.0,
        poll_interval_s: float = 3.0,
        heartbeat_s: float = 25.0,
        offline_after: int = 3,
    ) -> None:
        base = url if url is not None else _ffi.location_origin()
        if base is None:
            raise InvalidInput("RelayDelivery needs the relay's URL (there is no page origin to default to)")
        if push not in ("auto", "websocket", "polling", "off"):
            raise InvalidInput(f"push is auto, websocket, polling or off, got {push!r}")
        self.origin = origin_of(origin if origin is not None else base)
        self.url = base.rstrip("/")
        origin_of(self.url)  # validates the URL
        self.on_notice = on_notice
        self.on_state = on_state
        self._push_mode = push
        self._request_timeout_s = request_timeout_s
        self._retry_for_s = retry_for_s
        self._backoff_cap_s = backoff_cap_s
        self._poll_interval_s = poll_interval_s
        self._heartbeat_s = heartbeat_s
        self._offline_after = max(1, offline_after)
        self._device: DeviceSigner | None = None
        self._registered = False
        self._token: str | None = None
        self._token_expires_ms = 0
        self._login: asyncio.Future[str] | None = None
        self._known: dict[ConversationId, int] = {}
        self._subscribed: set[ConversationId] = set()
        self._cache: dict[ConversationId, dict[int, bytes]] = {}
        self._acked: dict[ConversationId, int] = {}
        self._overflowed: set[ConversationId] = set()
        self._welcomes_news = True
        self._to_ack: set[ConversationId] = set()
        self._ack_scheduled = False
        self._welcome_ids: dict[bytes, int] = {}
        self._welcomes_seen: set[int] = set()
        self._device_keys: dict[bytes, bytes] = {}
        self._queued: set[tuple[bytes, bytes, int]] = set()
        self._locks: dict[ConversationId, asyncio.Lock] = {}
        self._socket: _ffi.WebSocketHandle | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._online_listener: _ffi.ListenerHandle | None = None
        self._state = ConnectionState(CONNECTING if push != "off" else CONNECTED, push="none")
        self._rate_wait = 1.0
        self.closed = False
        """True once :meth:`close` ran (read it; do not set it)."""
        self.requests = 0
        """HTTP requests sent (for tests and measurements)."""
        self.stream_errors: list[dict[str, Any]] = []
        """The last error frames the stream sent (at most 20), for diagnostics."""

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def device_id(self) -> DeviceId | None:
        return None if self._device is None else self._device.device_id

    def _set_state(self, status: str | None = None, **changes: Any) -> None:
        state = dataclasses.replace(
            self._state, status=self._state.status if status is None else status, queued=len(self._queued), **changes
        )
        if state == self._state:
            return
        self._state = state
        _tell(self.on_state, state)

    def _notify(self, notice: Notice) -> None:
        _tell(self.on_notice, notice)

    # -- Delivery ----------------------------------------------------------------------------

    def bind(self, device: DeviceSigner) -> None:
        """Act for ``device`` (the client calls this when it opens); starts push."""
        if self._device is not None and self._device.device_id != device.device_id:
            raise InvalidInput("this RelayDelivery already acts for another device; make one per device")
        self._device = device
        if self._push_mode != "off" and self._runner is None and not self.closed:
            self._runner = asyncio.ensure_future(self._run())
            if _ffi.IN_PYODIDE:
                self._online_listener = _ffi.listen_global("online", self._wake.set)

    async def create_group(self, conversation_id: ConversationId) -> None:
        await self._register_group(conversation_id)

    async def post(self, envelope: bytes) -> bool:
        decoded = MessageEnvelope.decode(bytes(envelope))
        if decoded.kind is MessageKind.COMMIT:
            return await self.commit(envelope, None, RosterChange())
        if decoded.kind is MessageKind.WELCOME:
            raise InvalidInput("the relay takes a Welcome only with its commit (commit)")
        body = {"envelope": b64e(envelope)}
        path = f"/v1/groups/{b64e(decoded.conversation_id.raw)}/messages"
        try:
            await self._post_queued(decoded, path, body)
        except _Refused as exc:
            if exc.refusal.error == "wrong_epoch":
                return False
            self._refused(exc.refusal, "the post")
        return True

    async def commit(
        self, commit: bytes, welcome: bytes | None, roster: RosterChange, *, group_info: bytes | None = None,
        external: bool = False,
    ) -> bool:  # fmt: skip
        device = self._require_device()
        decoded = MessageEnvelope.decode(bytes(commit))
        if decoded.kind is not MessageKind.COMMIT:
            raise InvalidInput("commit takes a COMMIT envelope")
        if (welcome is None) != (not roster.added):
            raise InvalidInput("a Welcome goes with a commit exactly when it adds devices")
        removed = list(dict.fromkeys([*roster.removed, *await self._devices_by_key(decoded, roster.removed_keys)]))
        signature = device.sign(LABEL_ROSTER, roster_content(decoded, roster.added, removed))
        added_ids = [b64e(d.raw) for d in roster.added]
        body: dict[str, Any] = {
            "commit": b64e(commit),
            "welcome": None if welcome is None else {"envelope": b64e(welcome), "joiners": added_ids},
            "roster": {"added": added_ids, "removed": [b64e(d.raw) for d in removed], "signature": b64e(signature)},
        }
        if group_info is not None:
            body["group_info"] = b64e(group_info)
        if external:
            body["external"] = True
        path = f"/v1/groups/{b64e(decoded.conversation_id.raw)}/commits"
        try:
            await self._post_queued(decoded, path, body)
        except _Refused as exc:
            refusal = exc.refusal
            if refusal.error == "stale_commit":
                return False
            if refusal.status == 409 or refusal.error in ("bad_roster", "welcome_mismatch", "envelope_too_large"):
                raise CommitRefused(_commit_refusal(refusal)) from None
            self._refused(refusal, "the commit")
        return True

    async def user_groups(self) -> list[ConversationId]:
        reply = await self._ok("GET", "/v1/user-groups", what="listing this user's conversations")
        return [ConversationId(b64d(g, "group_id", size=16)) for g in _list(reply.get("groups"), "groups")]

    async def group_info(self, conversation_id: ConversationId) -> bytes | None:
        try:
            reply = await self._call("GET", f"/v1/groups/{b64e(conversation_id.raw)}/group-info")
        except _Refused as exc:
            if exc.refusal.error == "no_group_info":
                return None
            self._refused(exc.refusal, "reading the conversation's GroupInfo")
        return b64d(reply.get("group_info"), "group_info")

    async def fetch(self, conversation_id: ConversationId, position: int) -> LogPage:
        if type(position) is not int or position < 0:
            raise InvalidInput("log positions start at 0")
        # ``position`` is what the client has applied, durably: subscriptions resume there,
        # and it is what this device acknowledges to the relay.
        self._known[conversation_id] = max(self._known.get(conversation_id, 0), position)
        envelopes = self._take_cached(conversation_id, position)
        next_position = position + len(envelopes)
        if conversation_id not in self._subscribed or conversation_id in self._overflowed:
            # Push is not live for it, or dropped entries: read the log itself, from
            # ``position`` (a fetch over HTTP reports its ``after`` to the relay as what this
            # device has applied, so never one past what the client has).
            self._overflowed.discard(conversation_id)
            envelopes, next_position = await self._fetch_remote(conversation_id, position)
        else:
            # The stream sends every entry after the subscription's position, in order and
            # without gaps: what it has not pushed yet comes with a notice.
            self._acknowledge(conversation_id)
        self._subscribe([conversation_id])
        return LogPage(envelopes, next_position)

    async def send_welcome(self, device_ids: list[DeviceId], welcome: bytes) -> None:
        raise InvalidInput("the relay takes a Welcome only with its commit (commit)")

    async def fetch_welcomes(self, device_id: DeviceId) -> list[bytes]:
        self._require_self(device_id, "fetch the Welcomes of")
        if self._socket is not None and not self._welcomes_news and not self._welcome_ids:
            return []  # the stream pushes every waiting Welcome: none came since the last look
        self._welcomes_news = False
        envelopes: list[bytes] = []
        after = 0
        while True:
            reply = await self._ok("GET", f"/v1/welcomes?after={after}&limit={PAGE_LIMIT}", what="fetching Welcomes")
            items = _list(reply.get("welcomes"), "welcomes")
            for item in items:
                welcome_id = _int(_dict(item, "welcome").get("id"), "welcome id")
                envelope = b64d(item.get("envelope"), "welcome envelope")
                self._welcome_ids[envelope] = welcome_id
                self._welcomes_seen.add(welcome_id)
                envelopes.append(envelope)
                after = max(after, welcome_id)
            if not reply.get("more", len(items) == PAGE_LIMIT):  # pages are cut by bytes too
                return envelopes

    async def ack_welcomes(self, device_id: DeviceId, welcomes: list[bytes]) -> None:
        self._require_self(device_id, "acknowledge the Welcomes of")
        ids = sorted({self._welcome_ids[w] for w in welcomes if w in self._welcome_ids})
        for start in range(0, len(ids), ACK_IDS_PER_REQUEST):
            chunk = ids[start : start + ACK_IDS_PER_REQUEST]
            await self._ok("POST", "/v1/welcomes/ack", {"ids": chunk}, what="acknowledging Welcomes")
        for welcome in welcomes:
            self._welcome_ids.pop(welcome, None)

    async def publish_key_packages(self, user_id: UserId, device_id: DeviceId, key_packages: list[bytes]) -> None:
        device = self._require_self(device_id, "publish KeyPackages for")
        if user_id != device.user_id:
            raise InvalidInput("a device publishes KeyPackages only for its own user")
        packages = list(dict.fromkeys(bytes(kp) for kp in key_packages))
        for start in range(0, len(packages), KEY_PACKAGES_PER_REQUEST):
            chunk = [b64e(kp) for kp in packages[start : start + KEY_PACKAGES_PER_REQUEST]]
            await self._ok("POST", "/v1/key-packages", {"key_packages": chunk}, what="publishing KeyPackages")

    async def claim_key_package(self, device_id: DeviceId) -> bytes | None:
        try:
            reply = await self._call("POST", f"/v1/devices/{b64e(device_id.raw)}/key-packages/claim", {})
        except _Refused as exc:
            if exc.refusal.error in ("no_key_package", "unknown_device"):
                return None
            self._refused(exc.refusal, "claiming a KeyPackage")
        return b64d(reply.get("key_package"), "key_package")

    async def group(self, conversation_id: ConversationId) -> dict[str, Any]:
        """The relay's view of a conversation (``GET /v1/groups/{id}``, for a current member):
        ``creator``, ``epoch``, ``head`` and ``members`` (``device_id``, ``from_seq``,
        ``removed_at``), ids as base64url. For diagnostics; the client never needs it."""
        return await self._ok("GET", f"/v1/groups/{b64e(conversation_id.raw)}", what="reading the conversation")

    async def devices_of(self, user_id: UserId) -> list[DeviceId]:
        reply = await self._ok("GET", f"/v1/users/{b64e(user_id.raw)}/devices", what="listing devices")
        return [DeviceId(b64d(_dict(d, "device").get("device_id"), "device_id", size=16)) for d in _list(
            reply.get("devices"), "devices")]  # fmt: skip

    # -- device logs and links -----------------------------------------------------------------

    async def device_log(self, user_id: UserId, after: int) -> DeviceLogPage:
        query = f"?after={after}" if after >= 0 else ""
        try:
            reply = await self._call("GET", f"/v1/users/{b64e(user_id.raw)}/device-log{query}", auth=False)
        except _Refused as exc:
            self._refused(exc.refusal, "reading a device log")
        entries = [b64d(e, "entry") for e in _list(reply.get("entries"), "entries")]
        return DeviceLogPage(entries, _int_or_none(reply.get("head"), "head"))

    async def append_device_log(self, entry: bytes) -> None:
        device = self._require_device()
        try:
            await self._call("POST", f"/v1/users/{b64e(device.user_id.raw)}/device-log", {"entry": b64e(entry)})
        except _Refused as exc:
            if exc.refusal.error == "log_conflict":
                raise StateConflict("another entry of this device log came first: read the log again") from None
            if exc.refusal.error == "invalid_log_entry":
                raise DeviceLogInvalid(f"the relay refused the device log entry: {exc.refusal.detail}") from None
            self._refused(exc.refusal, "appending to the device log")

    async def open_link(self, link_id: bytes) -> None:
        await self._ok("POST", "/v1/links", {"link_id": b64e(link_id)}, what="opening a link")

    async def send_link_request(self, link_id: bytes, request: bytes) -> None:
        try:
            await self._call("POST", f"/v1/links/{b64e(link_id)}/request", {"request": b64e(request)}, auth=False)
        except _Refused as exc:
            self._link_refused(exc.refusal, "leaving the link request")

    async def link_request(self, link_id: bytes) -> bytes | None:
        try:
            reply = await self._call("GET", f"/v1/links/{b64e(link_id)}/request")
        except _Refused as exc:
            self._link_refused(exc.refusal, "reading the link request")
        value = reply.get("request")
        return None if value is None else b64d(value, "request")

    async def send_link_answer(self, link_id: bytes, answer: bytes) -> None:
        try:
            await self._call("POST", f"/v1/links/{b64e(link_id)}/answer", {"answer": b64e(answer)})
        except _Refused as exc:
            self._link_refused(exc.refusal, "answering the link request")

    async def link_answer(self, link_id: bytes) -> bytes | None:
        try:
            reply = await self._call("GET", f"/v1/links/{b64e(link_id)}/answer", auth=False)
        except _Refused as exc:
            self._link_refused(exc.refusal, "reading the link answer")
        value = reply.get("answer")
        return None if value is None else b64d(value, "answer")

    def _link_refused(self, refusal: Refusal, what: str) -> NoReturn:
        if refusal.error in ("unknown_link", "link_expired"):
            raise LinkFailed("the link code is wrong or expired: make a new one on the other device") from None
        if refusal.error == "link_taken":
            raise LinkFailed("another device already used this link code: make a new one") from None
        self._refused(refusal, what)

    # -- lifetime ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop push and refuse further calls. Idempotent."""
        if self.closed:
            return
        self.closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        if self._socket is not None:
            self._socket.close(1000, "closed")
            self._socket = None
        if self._online_listener is not None:
            self._online_listener.remove()
            self._online_listener = None
        self._set_state(CLOSED, retry_in_s=None)

    def reconnect_now(self) -> None:
        """Cut a reconnection wait short (e.g. the app knows the network is back)."""
        self._wake.set()

    # -- HTTP ------------------------------------------------------------------------------------

    def _require_device(self) -> DeviceSigner:
        if self._device is None:
            raise StateConflict("no device is bound to this RelayDelivery (MessagingClient.open binds it)")
        return self._device

    def _require_self(self, device_id: DeviceId, what: str) -> DeviceSigner:
        device = self._require_device()
        if device_id != device.device_id:
            raise InvalidInput(f"a relay device can only {what} itself")
        return device

    async def _ok(self, method: str, path: str, body: Any = None, *, what: str) -> dict[str, Any]:
        try:
            return await self._call(method, path, body)
        except _Refused as exc:
            self._refused(exc.refusal, what)

    async def _call(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> dict[str, Any]:
        """One request, repeated while the relay does not answer or is busy (see the module
        docstring); the reply object, or :class:`_Refused`."""
        if self.closed:
            raise DeliveryUnavailable("this RelayDelivery is closed")
        loop = asyncio.get_event_loop()
        patience = 0.0 if self._state.status == OFFLINE else self._retry_for_s
        deadline = loop.time() + patience
        backoff = Backoff(base_s=0.25, cap_s=2.0)
        renewed = False
        text = None if body is None else json.dumps(body, separators=(",", ":"))
        while True:
            headers = {"Accept": "application/json"}
            if text is not None:
                headers["Content-Type"] = "application/json"
            try:
                if auth:
                    headers["Authorization"] = "Bearer " + await self._token_now()
                self.requests += 1
                response = await _ffi.http_request(
                    method, self.url + path, headers, text, timeout_s=self._request_timeout_s
                )
            except _ffi.JsCallFailed as exc:
                problem = f"no answer from the relay at {self.url}: {exc.info.name}: {exc.info.message}"
            else:
                self._answered()
                if 200 <= response.status < 300:
                    return _parse_reply(response.text)
                refusal = Refusal.parse(response.status, response.text)
                if response.status == 401 and auth and not renewed and refusal.error in _AUTH_RETRY:
                    self._token, renewed = None, True
                    continue
                if response.status == 429:
                    wait = _retry_after(response.retry_after, refusal)
                    if loop.time() + wait <= deadline:
                        await asyncio.sleep(wait)
                        continue
                    raise RateLimited(_rate_limit_message(refusal, wait), wait)
                if response.status < 500 and response.status != 408:  # 408: the request was cut; repeat it
                    raise _Refused(refusal)
                problem = f"the relay failed: {refusal.describe()}"
            delay = backoff.next_delay()
            if loop.time() + delay > deadline:
                raise DeliveryUnavailable(f"{problem}; the outbox keeps what was not posted, retry with sync()")
            await asyncio.sleep(delay)

    def _answered(self) -> None:
        """The relay answered an HTTP request: if the stream is down, try it again now."""
        if self._state.status in (RECONNECTING, OFFLINE):
            self._wake.set()

    async def _token_now(self) -> str:
        if self._token is not None and self._token_expires_ms - TOKEN_MARGIN_MS > time.time() * 1000:
            return self._token
        login = self._login
        if login is None or login.done():
            login = self._login = asyncio.ensure_future(self._log_in())
        try:
            return await asyncio.shield(login)
        except _Refused as exc:
            self._refused(exc.refusal, "this device's login")

    async def _log_in(self) -> str:
        device = self._require_device()
        if not self._registered:
            await self._register(device)
        try:
            reply = await self._call(
                "POST", "/v1/auth/challenge", {"device_id": b64e(device.device_id.raw)}, auth=False
            )
        except _Refused as exc:
            if exc.refusal.error != "unknown_device":
                raise
            await self._register(device)  # the relay lost it (a new database): register again
            reply = await self._call(
                "POST", "/v1/auth/challenge", {"device_id": b64e(device.device_id.raw)}, auth=False
            )
        challenge = b64d(reply.get("challenge"), "challenge", size=CHALLENGE_SIZE)
        signature = device.sign(LABEL_AUTH, auth_content(challenge, device.device_id, self.origin))
        body = {"device_id": b64e(device.device_id.raw), "challenge": b64e(challenge), "signature": b64e(signature)}
        try:
            reply = await self._call("POST", "/v1/auth/token", body, auth=False)
        except _Refused as exc:
            if exc.refusal.error == "invalid_signature":
                raise StateConflict(
                    f"the relay refused this device's signature: it signs for origin {self.origin}; if the relay "
                    "was started with another --origin, pass that origin to RelayDelivery"
                ) from None
            raise
        token = reply.get("token")
        if not isinstance(token, str):
            raise InvalidInput("relay reply: no token")
        self._token, self._token_expires_ms = token, _int(reply.get("expires_at_ms"), "expires_at_ms")
        return token

    async def _register(self, device: DeviceSigner) -> None:
        user = device.user_id.raw
        content = register_content(device.device_id, device.public_key, user, self.origin)
        body = {
            "user_id": b64e(user),
            "device_id": b64e(device.device_id.raw),
            "signature_public_key": b64e(device.public_key),
            "signature": b64e(device.sign(LABEL_REGISTER, content)),
            "device_log": None if device.genesis is None else b64e(device.genesis),
        }
        try:
            await self._call("POST", "/v1/devices", body, auth=False)
        except _Refused as exc:
            if exc.refusal.error == "device_conflict":
                raise StateConflict("the relay has this device id registered with another key or user") from None
            if exc.refusal.error == "link_required":
                raise StateConflict(
                    f"the user {_text(user)!r} already has devices at the relay: link this device from one of them "
                    "(a code it shows), or pick another name"
                ) from None
            if exc.refusal.error == "device_revoked":
                raise StateConflict("this device was revoked from its user's device list") from None
            if exc.refusal.error == "too_many_devices":
                raise QuotaExceeded(
                    f"the relay allows {exc.refusal.data.get('limit')} devices per user and this user has them all; "
                    "register this device under another user id, or ask the relay's operator"
                ) from None
            if exc.refusal.error == "invalid_signature":
                raise StateConflict(
                    f"the relay refused this device's registration signature: it signs for origin {self.origin}; "
                    "if the relay was started with another --origin, pass that origin to RelayDelivery"
                ) from None
            raise
        self._registered = True

    # -- groups, posts, the log ---------------------------------------------------------------------

    async def _register_group(self, conversation_id: ConversationId) -> None:
        try:
            await self._call("POST", "/v1/groups", {"group_id": b64e(conversation_id.raw)})
        except _Refused as exc:
            if exc.refusal.error == "group_exists":
                raise StateConflict(
                    f"conversation {conversation_id.hex} is registered at the relay by another device"
                ) from None
            self._refused(exc.refusal, "registering the conversation")
        self._known.setdefault(conversation_id, 0)
        self._subscribe([conversation_id])

    def _lock(self, conversation_id: ConversationId) -> asyncio.Lock:
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = self._locks[conversation_id] = asyncio.Lock()
        return lock

    async def _post_queued(self, envelope: MessageEnvelope, path: str, body: dict[str, Any]) -> None:
        """POST an envelope (posts of one conversation in call order); counted as queued while
        it could not be handed over; registers a conversation the relay does not know."""
        key = (envelope.conversation_id.raw, envelope.sender_device.raw, envelope.seq)
        async with self._lock(envelope.conversation_id):
            try:
                try:
                    await self._call("POST", path, body)
                except _Refused as exc:
                    if exc.refusal.error != "unknown_group":
                        raise
                    await self._register_group(envelope.conversation_id)
                    await self._call("POST", path, body)
            except DeliveryUnavailable:
                self._queued.add(key)
                self._set_state()
                raise
            except BaseException:
                self._queued.discard(key)
                self._set_state()
                raise
            self._queued.discard(key)
            self._set_state()

    async def _fetch_remote(self, conversation_id: ConversationId, position: int) -> tuple[list[bytes], int]:
        group = b64e(conversation_id.raw)
        envelopes: list[bytes] = []
        after = position
        registered = False
        while True:
            try:
                reply = await self._call("GET", f"/v1/groups/{group}/messages?after={after}&limit={PAGE_LIMIT}")
            except _Refused as exc:
                refusal = exc.refusal
                if refusal.error == "unknown_group" and not registered and not envelopes:
                    await self._register_group(conversation_id)
                    registered = True
                    continue
                if refusal.error == "cursor_ahead":
                    raise StateConflict(
                        f"this device has read conversation {conversation_id.hex} up to {position}, past the "
                        f"relay's log (head {refusal.data.get('head')}): its cursor is from another relay or database"
                    ) from None
                self._refused(refusal, f"fetching conversation {conversation_id.hex}")
            for entry in _list(reply.get("entries"), "entries"):
                seq = _int(_dict(entry, "entry").get("seq"), "seq")
                if seq <= after:
                    raise InvalidInput("relay reply: entries out of order")
                envelopes.append(b64d(entry.get("envelope"), "envelope"))
                after = seq
            if not reply.get("more"):
                return envelopes, after

    def _take_cached(self, conversation_id: ConversationId, position: int) -> list[bytes]:
        """Pushed entries right after ``position``, in order (and forget those up to it)."""
        cache = self._cache.get(conversation_id)
        if not cache:
            return []
        for seq in [s for s in cache if s <= position]:
            del cache[seq]
        out = []
        seq = position + 1
        while seq in cache:
            out.append(cache.pop(seq))
            seq += 1
        return out

    async def _devices_by_key(self, commit: MessageEnvelope, keys: tuple[bytes, ...]) -> list[DeviceId]:
        """The group's current member devices whose signature key is one of ``keys``."""
        if not keys:
            return []
        wanted = set(keys)
        group = b64e(commit.conversation_id.raw)
        info = await self._ok("GET", f"/v1/groups/{group}", what="reading the group's roster")
        found = []
        for member in _list(info.get("members"), "members"):
            member = _dict(member, "member")
            if member.get("removed_at") is not None:
                continue
            raw = b64d(member.get("device_id"), "device_id", size=16)
            key = self._device_keys.get(raw)
            if key is None:
                device = await self._ok("GET", f"/v1/devices/{b64e(raw)}", what="reading a device")
                key = self._device_keys[raw] = b64d(device.get("signature_public_key"), "signature_public_key")
            if key in wanted:
                found.append(DeviceId(raw))
        return found

    def _refused(self, refusal: Refusal, what: str) -> NoReturn:
        """Raise the :class:`~ping_web.errors.PingError` a relay refusal stands for."""
        message = f"the relay refused {what}: {refusal.describe()}"
        if refusal.error == "not_member":
            raise NotAMember(message)
        if refusal.error == "unknown_group":
            raise UnknownConversation(message)
        if refusal.error == "quota_exceeded":
            raise QuotaExceeded(
                f"{message}; the message stays in the outbox: it is posted by a later sync() once the relay "
                "has pruned what every member has read (or its operator raised the quota)"
            )
        if refusal.error == "seq_reused":
            raise RejoinRequired(
                f"{message}; the relay holds another message of this device with the same seq: this copy of the "
                "device is behind what it sent (restored from an old backup?), so it must rejoin the conversation"
            )
        if refusal.status in (401, 409, 410):
            raise StateConflict(message)
        raise RelayRefused(message, refusal)

    # -- push ------------------------------------------------------------------------------------

    def _subscribe(self, conversation_ids: list[ConversationId]) -> None:
        socket = self._socket
        if socket is None:
            return
        todo = [c for c in conversation_ids if c not in self._subscribed]
        for start in range(0, len(todo), SUBSCRIBE_PER_FRAME):
            chunk = todo[start : start + SUBSCRIBE_PER_FRAME]
            groups = [{"group_id": b64e(c.raw), "after": self._known.get(c, 0)} for c in chunk]
            if socket.send(json.dumps({"type": "subscribe", "groups": groups}, separators=(",", ":"))):
                self._subscribed.update(chunk)

    def _acknowledge(self, conversation_id: ConversationId) -> None:
        """Report, on the stream, how far the client has applied this log (the relay's
        retention prunes what every reader acknowledged); batched into one frame."""
        position = self._known.get(conversation_id, 0)
        if position > self._acked.get(conversation_id, 0):
            self._to_ack.add(conversation_id)
            if not self._ack_scheduled:
                self._ack_scheduled = True
                asyncio.get_event_loop().call_later(ACK_DELAY_S, self._send_acks)

    def _send_acks(self) -> None:
        self._ack_scheduled = False
        todo = sorted((c for c in self._to_ack if c in self._subscribed), key=lambda c: c.raw)
        self._to_ack.clear()
        socket = self._socket
        if socket is None:
            return
        for start in range(0, len(todo), SUBSCRIBE_PER_FRAME):
            chunk = todo[start : start + SUBSCRIBE_PER_FRAME]
            groups = [{"group_id": b64e(c.raw), "seq": self._known[c]} for c in chunk]
            if socket.send(json.dumps({"type": "ack", "groups": groups}, separators=(",", ":"))):
                self._acked.update((c, self._known[c]) for c in chunk)

    def _push_kind(self) -> str:
        if self._push_mode == "polling":
            return "polling"
        if self._push_mode == "websocket" or _ffi.has_websocket():
            return "websocket"
        return "polling"

    async def _run(self) -> None:
        """Keep push going until closed: connect, serve, and after a failure wait and retry."""
        backoff = Backoff(cap_s=self._backoff_cap_s)
        kind = self._push_kind()
        self._set_state(CONNECTING, push=kind)
        while not self.closed:
            wait: float | None = None
            try:
                if kind == "websocket":
                    code, reason = await self._stream_session(backoff)
                    if code == 4409:
                        self._set_state(REPLACED, retry_in_s=None, detail="another connection of this device took over")
                        return
                    if code == 4401:
                        self._token = None
                    detail = f"stream closed ({code}{' ' + reason if reason else ''})"
                    if code == 4429:
                        wait = self._rate_wait
                else:
                    await self._poll_once()
                    backoff.reset()
                    why = "asked for" if self._push_mode == "polling" else "this host has no WebSocket"
                    detail = f"polling every {self._poll_interval_s:g} s ({why})"
                    self._set_state(CONNECTED, attempt=0, retry_in_s=None, detail=detail)
                    await self._sleep_or_wake(self._poll_interval_s)
                    continue
            except asyncio.CancelledError:
                raise
            except PingError as exc:
                detail = str(exc)
            except Exception as exc:  # noqa: BLE001 - a bug here must not end push for good
                detail = f"{type(exc).__name__}: {exc}"
            delay = backoff.next_delay() if wait is None else wait
            attempt = backoff.attempt
            offline = attempt >= self._offline_after or not _ffi.host_online()
            self._set_state(OFFLINE if offline else RECONNECTING, attempt=attempt, retry_in_s=round(delay, 3),
                            detail=detail)  # fmt: skip
            await self._sleep_or_wake(delay)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _stream_session(self, backoff: Backoff) -> tuple[int, str]:
        """One WebSocket connection, from the handshake to its close: ``(code, reason)``."""
        token = await self._token_now()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        try:
            socket = _ffi.open_websocket(
                stream_url(self.url), [SUBPROTOCOL, BEARER_PREFIX + token], lambda k, v: events.put_nowait((k, v))
            )
        except _ffi.JsCallFailed as exc:
            raise DeliveryUnavailable(f"cannot open the stream: {exc.info.name}: {exc.info.message}") from None
        opened = ready = pinged = False
        try:
            while True:
                try:
                    wait = self._heartbeat_s if ready else min(self._heartbeat_s, CONNECT_TIMEOUT_S)
                    kind, value = await asyncio.wait_for(events.get(), wait)
                except TimeoutError:
                    if not ready or pinged:
                        return 1006, "no answer"
                    pinged = socket.send('{"type":"ping"}')
                    continue
                pinged = False
                if kind == "close":
                    code, reason = value
                    return int(code), str(reason)
                if kind == "open":
                    opened = True
                if kind == "error" and not opened:
                    return 1006, "connection failed"
                if kind != "message":
                    continue
                try:
                    frame = json.loads(value)
                except ValueError:
                    continue
                if not isinstance(frame, dict):
                    continue
                if frame.get("type") == "ready":
                    ready = True
                    self._welcomes_news = True
                    self._socket = socket
                    self._subscribed.clear()
                    backoff.reset()
                    self._set_state(CONNECTED, attempt=0, retry_in_s=None, detail="")
                    self._subscribe(list(self._known))
                    self._notify(Notice("log"))  # catch up on what happened while disconnected
                else:
                    self._on_frame(frame)
        finally:
            if self._socket is socket:
                self._socket = None
            self._subscribed.clear()
            socket.close(1000, "done")
            socket.release()

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        try:
            group = ConversationId(b64d(frame["group_id"], "group_id", size=16)) if "group_id" in frame else None
        except PingError:
            return
        if kind == "entry" and group is not None:
            seq, envelope = frame.get("seq"), frame.get("envelope")
            if type(seq) is not int or not isinstance(envelope, str):
                return
            cache = self._cache.setdefault(group, {})
            if seq > self._known.get(group, 0):
                if len(cache) >= CACHE_ENTRIES:
                    self._overflowed.add(group)  # the next fetch reads the log over HTTP
                else:
                    try:
                        cache[seq] = b64d(envelope, "envelope")
                    except PingError:
                        self._overflowed.add(group)
            self._notify(Notice("log", conversation_id=group))
        elif kind == "welcome":
            welcome_id = frame.get("id")
            if type(welcome_id) is int and welcome_id not in self._welcomes_seen and self._device is not None:
                self._welcomes_seen.add(welcome_id)
                self._welcomes_news = True
                self._notify(Notice("welcome", device_ids=(self._device.device_id,)))
        elif kind == "removed" and group is not None:
            self._subscribed.discard(group)
            self._notify(Notice("log", conversation_id=group))
        elif kind == "error":
            self.stream_errors = [*self.stream_errors[-19:], frame]
            status = frame.get("status")
            if group is not None and frame.get("error") == "already_subscribed":
                self._subscribed.add(group)
            elif group is not None:
                self._subscribed.discard(group)  # the next fetch reads over HTTP, and subscribes again
                self._notify(Notice("log", conversation_id=group))
            if status == 429 and isinstance(frame.get("retry_after"), int):
                self._rate_wait = float(max(1, frame["retry_after"]))
            if status == 401:
                self._token = None

    async def _poll_once(self) -> None:
        """One round of polling: Welcomes, then what each fetched conversation's log has new."""
        device = self._require_device()
        fresh = await self._ok("GET", f"/v1/welcomes?after=0&limit={PAGE_LIMIT}", what="polling Welcomes")
        ids = {item.get("id") for item in _list(fresh.get("welcomes"), "welcomes") if isinstance(item, dict)}
        new = {i for i in ids if type(i) is int and i not in self._welcomes_seen}
        if new:
            self._welcomes_seen.update(new)
            self._notify(Notice("welcome", device_ids=(device.device_id,)))
        for conversation_id, known in list(self._known.items()):
            cache = self._cache.setdefault(conversation_id, {})
            after = max([known, *(s for s in cache if s > known)])
            group = b64e(conversation_id.raw)
            try:
                reply = await self._call("GET", f"/v1/groups/{group}/messages?after={after}&limit={PAGE_LIMIT}")
            except _Refused:
                continue  # the next fetch reports it
            entries = _list(reply.get("entries"), "entries")
            for entry in entries:
                seq = _int(_dict(entry, "entry").get("seq"), "seq")
                if len(cache) < CACHE_ENTRIES:
                    cache[seq] = b64d(entry.get("envelope"), "envelope")
            if entries:
                self._notify(Notice("log", conversation_id=conversation_id))


def _parse_reply(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidInput("relay reply: not JSON") from None
    return _dict(value, "reply")


def _tell(listener: Callable[[T], None] | None, value: T) -> None:
    """Call an application's listener; one that raises never breaks the connection."""
    if listener is None:
        return
    try:
        listener(value)
    except Exception:  # noqa: BLE001 - see above
        pass


def _dict(value: Any, what: str) -> dict[str, Any]:
    return codec.mapping(value, f"relay reply: {what}")


def _list(value: Any, what: str) -> list[Any]:
    return codec.items(value, f"relay reply: {what}")


def _int_or_none(value: Any, what: str) -> int:
    """An integer reply field where ``null`` means -1 (e.g. no device log yet)."""
    return -1 if value is None else _int(value, what)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _int(value: Any, what: str) -> int:
    return codec.uint(value, f"relay reply: {what}")


def _rate_limit_message(refusal: Refusal, wait: float) -> str:
    """What a 429 means for the caller, by its code."""
    if refusal.error == "claims_limited":
        return (
            "the relay limits how fast a device's KeyPackages are claimed "
            f"({refusal.data.get('scope')}); add this device again in {wait:g} s"
        )
    return f"the relay is rate limiting this device or its address; retry in {wait:g} s"


def _commit_refusal(refusal: Refusal) -> str:
    """Why the relay refused a commit as a whole, and what to do (the commit is discarded)."""
    said = f"the relay refused this commit as a whole: {refusal.describe()}"
    if refusal.error == "mailbox_full":
        return (
            f"{said}; device {refusal.data.get('device_id')} has as many invitations waiting as the relay allows: "
            "it must come online and accept or decline them before it can be added"
        )
    if refusal.error == "envelope_too_large":
        return f"{said}; the Welcome is over the relay's limit ({refusal.data.get('limit')} bytes): add fewer devices"
    if refusal.error == "quota_exceeded":
        return f"{said}; the relay's storage quota ({refusal.data.get('scope')}) is full: retry once it has pruned"
    if refusal.error == "seq_reused":
        return f"{said}; the relay holds another message of this device with the same seq: rejoin the conversation"
    return said


def _retry_after(header: str | None, refusal: Refusal) -> float:
    value = refusal.data.get("retry_after")
    if type(value) is int:
        return float(max(1, value))
    if header is not None and header.isdigit():
        return float(max(1, int(header)))
    return 1.0
