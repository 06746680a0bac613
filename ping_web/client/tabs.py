"""One device shared by the tabs of a browser: a leader owns it, the other tabs forward to it.

A device's storage has one owner (the Web Lock ``ping_web:{name}``). :class:`SharedDevice`
makes every tab (or worker) of the origin usable anyway:

* **Election.** Each tab asks for that lock. The one that holds it is the **leader**: it
  opens the storage under the lock and the :class:`~ping_web.client.MessagingClient`.
  The others are **followers**, each with a request for the lock waiting in the browser's
  queue; when the leader's tab closes or crashes, the browser frees its lock and grants
  the next request, and that tab opens storage and client and carries on.
* **Channel.** Tabs talk over a ``BroadcastChannel`` named like the database. It needs no
  extra process, works between pages and workers alike, and is gone with no state when a
  tab is; a SharedWorker would be one more JavaScript context to load Pyodide into, and is
  missing on some browsers (Chrome on Android). Every message goes to every tab; each
  reply names the tab it is for.
* **Calls.** A follower's call is ``{t: "call", from, id, method, args}`` and the leader
  answers ``{t: "reply", to, id, result}`` or ``{..., error: {name, message}}``. Every
  call has a 16-byte request id. Mutating calls (``send``, ``create_conversation``,
  ``add_members``, ``remove_members``, ``self_update``) pass it to the client, which stores
  ``request id -> result`` in the operation's own batch (``client.requests``). A follower
  keeps each call until it is answered and sends it again to every new leader: if the
  old leader had applied it, the new one answers from the record, else applies it. So a
  call is applied exactly once, whoever dies when. Reads are just run again.
* **Events.** The leader broadcasts ``{t: "messages", messages}`` whenever its client
  stores messages (received, or sent by any tab), before it answers the call that stored
  them; every tab's ``on_event`` gets them. A new leader announces itself
  (``{t: "leader"}``, also the answer to a newcomer's ``{t: "hello"}``); ``on_event``
  then gets a ``"leader"`` event: re-read what you show, since a leader that died may
  have stored messages it never announced.

Hosts without Web Locks and BroadcastChannel (Node) can use :class:`LocalTabs`: tabs
simulated in one Python process, for tests.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ping_web import _ffi
from ping_web.client.base import BatchOutcome
from ping_web.client.client import MessagingClient
from ping_web.client.opening import wall_clock_ms
from ping_web.client.requests import check_request_id, new_request_id, recorded_error
from ping_web.core import codec
from ping_web.core.envelope import IncomingMessage, MessageEnvelope
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.records import AddOutcome, ConversationMeta
from ping_web.delivery.base import Delivery
from ping_web.errors import DatabaseInUse, InvalidInput, PingError, StateConflict, StorageUnavailable
from ping_web.storage.base import Storage
from ping_web.storage.encrypted import EncryptedStorage
from ping_web.storage.indexeddb import IndexedDbStorage, database_name
from ping_web.storage.locks import WebLock, acquire_lock

__all__ = [
    "FOLLOWER",
    "LEADER",
    "BrowserTabs",
    "LeaderUnavailable",
    "LocalTab",
    "LocalTabs",
    "SharedDevice",
    "TabEvent",
    "TabHost",
]

# The roles of a tab (``SharedDevice.role``).
ROLES = LEADER, FOLLOWER, CLOSED = ("leader", "follower", "closed")
TAB_ID_BYTES: Final = 16
RETAKE_DELAY_S: Final = 1.0
"""Pause before asking for the lock again after this tab failed to take over."""
_WIRE_LIMIT: Final = 10_000


class LeaderUnavailable(PingError):
    """No leader answered a call in time. It may still be applied: retry with the same
    ``request_id`` (:attr:`request_id`) and it is applied at most once."""

    def __init__(self, message: str, request_id: bytes) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class TabEvent:
    """What a tab hears: ``"messages"`` (stored by the leader, in :attr:`messages`),
    ``"leader"`` (a leader took over, :attr:`this_tab` if it is this one: re-read what you
    show), or ``"error"`` (a background step of the leader failed, :attr:`error`)."""

    kind: str
    messages: tuple[IncomingMessage, ...] = ()
    this_tab: bool = False
    error: PingError | None = None


# -- how tabs meet: a lock to elect the leader, a channel to talk ------------------------------


class TabChannel(Protocol):
    def post(self, message: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class HeldLock(Protocol):
    async def release(self) -> None: ...


class TabHost(Protocol):
    """What a tab needs from its host: the device's lock and a channel to the other tabs."""

    async def acquire(self, name: str, *, wait: bool) -> HeldLock | None:
        """The lock ``name``; ``None`` if another tab holds it and ``wait`` is false.
        With ``wait``, returns once it is this tab's (cancel the call to stop waiting)."""
        ...

    def channel(self, name: str, on_message: Callable[[Any], None]) -> TabChannel:
        """Join the channel ``name``; ``on_message`` gets what the other tabs post."""
        ...


class BrowserTabs:
    """The browser's own: Web Locks and ``BroadcastChannel`` (pages and workers of an origin)."""

    async def acquire(self, name: str, *, wait: bool) -> HeldLock | None:
        try:
            lock = await acquire_lock(name, wait=wait)
        except DatabaseInUse:
            return None
        if lock is None:
            raise StorageUnavailable(
                "this host has no Web Locks, so its tabs cannot share a device; use MessagingClient directly"
            )
        return lock

    def channel(self, name: str, on_message: Callable[[Any], None]) -> TabChannel:
        if _ffi.host_global("BroadcastChannel") is None:
            raise StorageUnavailable("this host has no BroadcastChannel, so its tabs cannot share a device")
        return _ffi.broadcast_channel(name, on_message)


async def open_indexeddb(name: str, lock: HeldLock, *, encrypt: bool = True) -> Storage:
    """The device storage ``name`` in IndexedDB, opened under its already held Web Lock;
    sealed with its stored key unless ``encrypt`` is false."""
    inner = await IndexedDbStorage.open(name, lock=lock if isinstance(lock, WebLock) else None)
    if not encrypt:
        return inner
    try:
        return EncryptedStorage(inner, await inner.load_or_create_key("storage"))
    except BaseException:
        await inner.close()
        raise


# -- calls on the wire ---------------------------------------------------------------------------


def _bytes(value: Any, what: str) -> bytes:
    return codec.byte_string(value, f"tab call: {what}")


def _list(value: Any, what: str) -> list[Any]:
    return codec.items(value, f"tab call: {what}", hi=_WIRE_LIMIT)


def _args(args: Any, count: int, method: str) -> list[Any]:
    if not isinstance(args, list) or len(args) != count:
        raise InvalidInput(f"tab call: {method} takes {count} arguments")
    return args


def _conversation(value: Any) -> ConversationId:
    return ConversationId.from_bytes(_bytes(value, "conversation id"))


def _error_record(exc: BaseException) -> dict[str, str]:
    return {"name": type(exc).__name__, "message": str(exc)}


def _error_from(record: Any) -> PingError:
    if not isinstance(record, dict):
        return PingError("the leader answered with a malformed error")
    name, message = record.get("name"), record.get("message")
    return recorded_error(name if isinstance(name, str) else "PingError", message if isinstance(message, str) else "")


async def _run_call(client: MessagingClient, method: str, args: Any, request_id: bytes) -> Any:
    """Apply one call on the leader's client; its result in wire form (CBOR bytes inside)."""
    if method == "send":
        conversation, plaintext = _args(args, 2, method)
        envelope = await client.send(_conversation(conversation), _bytes(plaintext, "plaintext"), request_id=request_id)
        return envelope.encode()
    if method == "create_conversation":
        (name,) = _args(args, 1, method)
        if name is not None and not isinstance(name, str):
            raise InvalidInput("tab call: a conversation name is text")
        return (await client.create_conversation(name, request_id=request_id)).encode()
    if method == "add_members":
        conversation, raw_entries = _args(args, 2, method)
        entries = []
        for entry in _list(raw_entries, "entries"):
            device, key_package = _args(entry, 2, "an add_members entry")
            entries.append((DeviceId.from_bytes(_bytes(device, "device id")), _bytes(key_package, "key package")))
        outcome = await client.add_members(_conversation(conversation), entries, request_id=request_id)
        return outcome.encode()
    if method == "remove_members":
        conversation, leaves = _args(args, 2, method)
        if not all(isinstance(leaf, int) and not isinstance(leaf, bool) for leaf in _list(leaves, "leaf indexes")):
            raise InvalidInput("tab call: leaf indexes are integers")
        return (await client.remove_members(_conversation(conversation), leaves, request_id=request_id)).encode()
    if method == "self_update":
        (conversation,) = _args(args, 1, method)
        return (await client.self_update(_conversation(conversation), request_id=request_id)).encode()
    if method == "history":
        conversation, limit = _args(args, 2, method)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise InvalidInput("tab call: a history limit is an integer")
        return [m.encode() for m in await client.history(_conversation(conversation), limit=limit)]
    if method == "conversations":
        _args(args, 0, method)
        return [meta.encode() for meta in client.conversations()]
    if method == "sync":
        _args(args, 0, method)
        synced = await client.sync()
        return {
            "messages": [m.encode() for m in synced.messages],
            "rejected": [
                [item.encode() if isinstance(item, MessageEnvelope) else bytes(item), _error_record(error)]
                for item, error in synced.rejected
            ],
        }
    if method == "publish_key_packages":
        (count,) = _args(args, 1, method)
        if not isinstance(count, int) or isinstance(count, bool):
            raise InvalidInput("tab call: a KeyPackage count is an integer")
        await client.publish_key_packages(count)
        return None
    raise InvalidInput(f"tab call: unknown method {method!r}")


def _decode_sync(result: Any) -> BatchOutcome:
    outcome = BatchOutcome()
    outcome.messages = [IncomingMessage.decode(_bytes(raw, "message")) for raw in _list(result["messages"], "messages")]
    outcome.rejected = [(_bytes(item, "envelope"), _error_from(error)) for item, error in result["rejected"]]
    return outcome


@dataclass(slots=True)
class _Call:
    """One of this tab's calls, kept until answered (by whichever leader)."""

    id: bytes
    method: str
    args: list[Any]
    done: asyncio.Future[Any]
    sent_to: bytes | None = None


@dataclass(slots=True)
class _Options:
    user_id: UserId | None
    delivery: Delivery | None
    clock: Callable[[], int]
    create_device_group: bool
    open_storage: Callable[[HeldLock], Awaitable[Storage]]
    call_timeout_s: float | None


# -- the shared device ---------------------------------------------------------------------------


class SharedDevice:
    """A device used by many tabs: the same calls as :class:`MessagingClient`, from any tab.

    Open it with :meth:`open` in every tab; :attr:`role` says whether this tab leads
    (``"leader"``: :attr:`client` is the real client) or forwards (``"follower"``). It
    changes to ``"leader"`` when the leading tab goes away and this one takes over.
    """

    def __init__(self, name: str, host: TabHost, options: _Options, on_event: Callable[[TabEvent], None] | None):
        self.name = name
        self.tab_id = os.urandom(TAB_ID_BYTES)
        self.role = FOLLOWER
        self.client: MessagingClient | None = None
        self.on_event = on_event
        self._host = host
        self._options = options
        self._lock_name = database_name(name)
        self._lock: HeldLock | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._leader: bytes | None = None
        self._identity: tuple[UserId, DeviceId] | None = None
        self._known = asyncio.Event()
        self._pending: dict[bytes, _Call] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._channel: TabChannel | None = None
        self.resent = 0
        """Calls this tab sent again to a new leader (for tests and diagnostics)."""
        self._withhold: Callable[[dict[str, Any]], None] | None = None
        """Tests: replies go here instead of to their callers (a leader that dies before it answers)."""

    @classmethod
    async def open(
        cls,
        name: str,
        user_id: UserId | bytes | None = None,
        *,
        delivery: Delivery | None = None,
        encrypt: bool = True,
        create_device_group: bool = True,
        clock: Callable[[], int] = wall_clock_ms,
        on_event: Callable[[TabEvent], None] | None = None,
        host: TabHost | None = None,
        open_storage: Callable[[HeldLock], Awaitable[Storage]] | None = None,
        announce_timeout_s: float = 30.0,
        call_timeout_s: float | None = None,
    ) -> SharedDevice:
        """Join the tabs sharing device storage ``name`` (IndexedDB ``ping_web:{name}``).

        This tab leads if no other holds the device (creating it for ``user_id`` the first
        time), else follows once the leader has answered (:class:`DatabaseInUse` if none
        does within ``announce_timeout_s``: something else owns the database).
        ``delivery`` is this tab's own handle on the delivery service, used while it leads.
        ``host`` and ``open_storage`` default to the browser's Web Locks, BroadcastChannel
        and IndexedDB. ``call_timeout_s``: how long a call waits for an answer (default:
        as long as it takes; a leader always comes back while any tab is open).
        """
        user = None if user_id is None else (user_id if isinstance(user_id, UserId) else UserId.from_bytes(user_id))

        async def default_storage(lock: HeldLock) -> Storage:
            return await open_indexeddb(name, lock, encrypt=encrypt)

        options = _Options(
            user, delivery, clock, create_device_group, open_storage or default_storage, call_timeout_s
        )  # fmt: skip
        device = cls(name, host or BrowserTabs(), options, on_event)
        try:
            device._channel = device._host.channel(device._lock_name, device._on_message)
            lock = await device._host.acquire(device._lock_name, wait=False)
            if lock is not None:
                await device._lead(lock)
            else:
                device._waiter = asyncio.ensure_future(device._wait_for_lock())
                device._post({"t": "hello"})
                try:
                    await asyncio.wait_for(device._known.wait(), announce_timeout_s)
                except TimeoutError:
                    raise DatabaseInUse(
                        f"the device storage {device._lock_name!r} is held by something that does not answer as "
                        "a leader of shared tabs (opened without SharedDevice?); close it there and retry"
                    ) from None
            identity = device._identity
            if user is not None and identity is not None and identity[0] != user:
                raise InvalidInput("this storage holds a device of another user")
        except BaseException:
            await device.close()
            raise
        return device

    # -- reading -----------------------------------------------------------------------------

    @property
    def device_id(self) -> DeviceId:
        return self._require_identity()[1]

    @property
    def user_id(self) -> UserId:
        return self._require_identity()[0]

    @property
    def leader_tab(self) -> bytes | None:
        """The tab id of the current leader, as far as this tab knows."""
        return self._leader

    def _require_identity(self) -> tuple[UserId, DeviceId]:
        if self._identity is None:
            raise StateConflict("no leader has answered yet")
        return self._identity

    # -- the calls (the same as MessagingClient's) ---------------------------------------------

    async def send(
        self, conversation_id: ConversationId, plaintext: bytes, *, request_id: bytes | None = None
    ) -> MessageEnvelope:
        """Encrypt, store and post ``plaintext`` (exactly once, whichever tab leads)."""
        result = await self._call("send", [conversation_id.raw, bytes(plaintext)], request_id)
        return MessageEnvelope.decode(_bytes(result, "envelope"))

    async def create_conversation(
        self, name: str | None = None, *, request_id: bytes | None = None
    ) -> ConversationMeta:
        return ConversationMeta.decode(_bytes(await self._call("create_conversation", [name], request_id), "meta"))

    async def add_members(
        self, conversation_id: ConversationId, entries: Sequence[tuple[DeviceId, bytes]], *,
        request_id: bytes | None = None,
    ) -> AddOutcome:  # fmt: skip
        wire = [[device.raw, bytes(key_package)] for device, key_package in entries]
        return AddOutcome.decode(
            _bytes(await self._call("add_members", [conversation_id.raw, wire], request_id), "add")
        )

    async def remove_members(
        self, conversation_id: ConversationId, leaf_indexes: Sequence[int], *, request_id: bytes | None = None
    ) -> MessageEnvelope:
        result = await self._call("remove_members", [conversation_id.raw, list(leaf_indexes)], request_id)
        return MessageEnvelope.decode(_bytes(result, "commit"))

    async def self_update(self, conversation_id: ConversationId, *, request_id: bytes | None = None) -> MessageEnvelope:
        return MessageEnvelope.decode(
            _bytes(await self._call("self_update", [conversation_id.raw], request_id), "commit")
        )

    async def history(self, conversation_id: ConversationId, *, limit: int | None = None) -> list[IncomingMessage]:
        result = await self._call("history", [conversation_id.raw, limit], None)
        return [IncomingMessage.decode(_bytes(raw, "message")) for raw in _list(result, "history")]

    async def conversations(self) -> list[ConversationMeta]:
        result = await self._call("conversations", [], None)
        return [ConversationMeta.decode(_bytes(raw, "meta")) for raw in _list(result, "conversations")]

    async def sync(self) -> BatchOutcome:
        """Pull from the delivery service (on the leader). Call it from the leading tab when
        the delivery service has news; from a follower it is forwarded like any call."""
        result = await self._call("sync", [], None)
        if not isinstance(result, dict):
            raise PingError("the leader answered sync with a malformed result")
        return _decode_sync(result)

    async def publish_key_packages(self, count: int = 5) -> None:
        """At least once: a retried call may publish ``count`` more (harmless)."""
        await self._call("publish_key_packages", [count], None)

    async def _call(self, method: str, args: list[Any], request_id: bytes | None) -> Any:
        if self.role == CLOSED:
            raise StateConflict("this tab's shared device is closed")
        request_id = new_request_id() if request_id is None else check_request_id(request_id)
        call = self._pending.get(request_id)
        if call is None or call.done.done():
            call = self._pending[request_id] = _Call(
                request_id, method, args, asyncio.get_running_loop().create_future()
            )
            call.done.add_done_callback(lambda _: self._forget(call))
            self._dispatch(call)
        elif call.method != method:
            raise InvalidInput(f"request id {request_id.hex()} is in flight for {call.method}, not {method}")
        timeout = self._options.call_timeout_s
        try:
            return await (asyncio.wait_for(asyncio.shield(call.done), timeout) if timeout else call.done)
        except TimeoutError:
            call.done.cancel()  # a retry with this id is a new call, sent again
            self._forget(call)
            raise LeaderUnavailable(
                f"no leader answered {method} within {timeout:g} s; retry with the same request_id", request_id
            ) from None

    def _forget(self, call: _Call) -> None:
        if self._pending.get(call.id) is call:
            del self._pending[call.id]

    def _dispatch(self, call: _Call) -> None:
        """Run the call here if this tab leads, else send it to the leader (if one is known;
        otherwise the next leader's announcement sends it)."""
        if self.role == LEADER:
            self._spawn(self._answer_local(call))
        elif self._leader is not None and self._channel is not None:
            call.sent_to = self._leader
            self._post({"t": "call", "id": call.id, "method": call.method, "args": call.args})

    async def _answer_local(self, call: _Call) -> None:
        try:
            result = await self._execute(call.method, call.args, call.id)
        except PingError as exc:
            if not call.done.done():
                call.done.set_exception(exc)
            return
        if not call.done.done():
            call.done.set_result(result)

    async def _execute(self, method: str, args: Any, request_id: bytes) -> Any:
        client = self.client
        if client is None or self.role != LEADER:
            raise StateConflict("this tab does not lead the shared device")
        try:
            return await _run_call(client, method, args, request_id)
        except PingError:
            raise
        except Exception as exc:
            raise PingError(f"{method} failed: {exc!r}") from exc

    # -- leading -----------------------------------------------------------------------------

    async def _wait_for_lock(self) -> None:
        """Follow until the browser hands this tab the lock; then lead."""
        while self.role == FOLLOWER:
            try:
                lock = await self._host.acquire(self._lock_name, wait=True)
            except PingError as exc:
                self._emit(TabEvent("error", error=exc))
                return
            if lock is None:
                continue
            try:
                await self._lead(lock)
                return
            except Exception as exc:  # noqa: BLE001 - reported; another tab (or this one, later) retries
                self._emit(TabEvent("error", error=exc if isinstance(exc, PingError) else PingError(repr(exc))))
            await asyncio.sleep(RETAKE_DELAY_S)

    async def _lead(self, lock: HeldLock) -> None:
        """Open storage and client under ``lock``, announce, and take over this tab's calls."""
        options = self._options
        try:
            storage = await options.open_storage(lock)
            try:
                client = await MessagingClient.open(
                    storage, options.user_id, delivery=options.delivery, clock=options.clock,
                    create_device_group=options.create_device_group,
                )  # fmt: skip
            except BaseException:
                await storage.close()
                raise
        except BaseException:
            await lock.release()
            raise
        if self.role == CLOSED:  # closed while opening
            await client.close()
            await lock.release()
            return
        self._lock, self.client, self.role = lock, client, LEADER
        client.on_messages = self._stored
        self._leader, self._identity = self.tab_id, (client.user_id, client.device_id)
        self._known.set()
        self._announce()
        self._emit(TabEvent("leader", this_tab=True))
        for call in list(self._pending.values()):  # sent to a leader that is gone
            if call.sent_to is not None:
                self.resent += 1
            self._dispatch(call)
        if options.delivery is not None:
            self._spawn(self._catch_up(client))

    async def _catch_up(self, client: MessagingClient) -> None:
        """Settle what the last leader left (pending commits, the outbox), pull what is new."""
        try:
            await client.sync()
        except PingError as exc:
            self._emit(TabEvent("error", error=exc))

    def _announce(self) -> None:
        user, device = self._require_identity()
        self._post({"t": "leader", "user": user.raw, "device": device.raw})

    def _stored(self, messages: list[IncomingMessage]) -> None:
        """The client stored messages: tell every tab (before the call that stored them returns)."""
        self._post({"t": "messages", "messages": [m.encode() for m in messages]})
        self._emit(TabEvent("messages", messages=tuple(messages)))

    def _serve(self, message: dict[str, Any]) -> None:
        """Answer another tab's call (leader only)."""
        sender, request_id, method = message.get("from"), message.get("id"), message.get("method")
        if not isinstance(sender, bytes) or not isinstance(request_id, bytes) or not isinstance(method, str):
            return
        self._spawn(self._answer_remote(sender, request_id, method, message.get("args")))

    async def _answer_remote(self, sender: bytes, request_id: bytes, method: str, args: Any) -> None:
        reply: dict[str, Any] = {"t": "reply", "to": sender, "id": request_id}
        try:
            reply["result"] = await self._execute(method, args, check_request_id(request_id))
        except PingError as exc:
            if self.role != LEADER:
                return  # no longer leading: the caller asks the next leader
            reply["error"] = _error_record(exc)
        if self._withhold is not None:
            self._withhold(reply)
            return
        self._post(reply)

    # -- the channel -------------------------------------------------------------------------

    def _post(self, message: dict[str, Any]) -> None:
        if self._channel is not None:
            self._channel.post({**message, "from": self.tab_id})

    def _on_message(self, message: Any) -> None:
        if not isinstance(message, dict) or self.role == CLOSED:
            return
        kind, sender = message.get("t"), message.get("from")
        if not isinstance(sender, bytes) or sender == self.tab_id:
            return
        try:
            if kind == "call" and self.role == LEADER:
                self._serve(message)
            elif kind == "reply" and message.get("to") == self.tab_id:
                self._reply(message)
            elif kind == "hello" and self.role == LEADER:
                self._announce()
            elif kind == "leader" and self.role == FOLLOWER:
                self._follow(sender, message)
            elif kind == "messages":
                raw = _list(message.get("messages"), "messages")
                self._emit(TabEvent("messages", messages=tuple(IncomingMessage.decode(_bytes(m, "m")) for m in raw)))
        except PingError:
            return  # a malformed message from another tab changes nothing here

    def _reply(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        call = self._pending.get(request_id) if isinstance(request_id, bytes) else None
        if call is None or call.done.done():
            return
        if "error" in message:
            call.done.set_exception(_error_from(message["error"]))
        else:
            call.done.set_result(message.get("result"))

    def _follow(self, leader: bytes, message: dict[str, Any]) -> None:
        """A leader announced itself: send it every call still unanswered."""
        identity = (UserId.from_bytes(_bytes(message.get("user"), "user")),
                    DeviceId.from_bytes(_bytes(message.get("device"), "device")))  # fmt: skip
        if leader == self._leader:
            return
        first = self._leader is None
        self._leader, self._identity = leader, identity
        self._known.set()
        for call in list(self._pending.values()):
            if call.sent_to is not None:
                self.resent += 1
            self._dispatch(call)
        if not first:
            self._emit(TabEvent("leader"))

    def _emit(self, event: TabEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a listener's failure is its own
                pass

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Leave: a leader finishes the calls it is answering, closes the client and frees
        the lock (the next tab takes over); a follower stops waiting for it. This tab's own
        unanswered calls fail with :class:`~ping_web.errors.StateConflict`. Idempotent."""
        if self.role == CLOSED:
            return
        self.role = CLOSED
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        if self._serving:
            await asyncio.gather(*list(self._serving), return_exceptions=True)
        for call in list(self._pending.values()):
            if not call.done.done():
                call.done.set_exception(
                    StateConflict("this tab's shared device was closed before the call was answered")
                )
        client, self.client = self.client, None
        lock, self._lock = self._lock, None
        try:
            if client is not None:
                await client.close()
        finally:
            if lock is not None:
                await lock.release()
            channel, self._channel = self._channel, None
            if channel is not None:
                channel.close()


# -- tabs in one process (tests) -----------------------------------------------------------------


class _LocalLock:
    def __init__(self, origin: LocalTabs, name: str, tab: LocalTab) -> None:
        self._origin, self._name, self.tab = origin, name, tab
        self.held = True

    async def release(self) -> None:
        if self.held:
            self.held = False
            self._origin._hand_over(self._name)


class _LocalChannel:
    def __init__(self, origin: LocalTabs, name: str, tab: LocalTab, on_message: Callable[[Any], None]) -> None:
        self._origin, self.name, self.tab, self.on_message = origin, name, tab, on_message
        self.open = True

    def post(self, message: dict[str, Any]) -> None:
        if not self.open:
            return
        loop = asyncio.get_running_loop()
        for other in list(self._origin._channels.get(self.name, [])):
            if other is not self:  # a structured clone each, delivered in a later task, in order
                loop.call_soon(other._deliver, copy.deepcopy(message))

    def _deliver(self, message: dict[str, Any]) -> None:
        if self.open:
            self.on_message(message)

    def close(self) -> None:
        if self.open:
            self.open = False
            self._origin._channels[self.name].remove(self)


class LocalTab:
    """One simulated tab: its locks and channels. :meth:`crash` takes it away at once."""

    def __init__(self, origin: LocalTabs) -> None:
        self._origin = origin
        self.crashed = False

    async def acquire(self, name: str, *, wait: bool) -> HeldLock | None:
        if self.crashed:
            raise StorageUnavailable("this simulated tab crashed")
        return await self._origin._acquire(self, name, wait=wait)

    def channel(self, name: str, on_message: Callable[[Any], None]) -> TabChannel:
        channel = _LocalChannel(self._origin, name, self, on_message)
        self._origin._channels.setdefault(name, []).append(channel)
        return channel

    def crash(self) -> None:
        """Like a tab whose process died: its channels go silent and its locks are freed,
        without any of its code running again through them."""
        self.crashed = True
        for channels in self._origin._channels.values():
            for channel in [c for c in channels if c.tab is self]:
                channel.close()
        for name, holder in list(self._origin._holders.items()):
            if holder.tab is self:
                holder.held = False
                self._origin._hand_over(name)
        for waiters in self._origin._waiters.values():
            for tab, waiting in list(waiters):
                if tab is self and not waiting.done():
                    waiting.cancel()


class LocalTabs:
    """Tabs of one origin simulated in one Python process: locks granted in request order
    and freed when their tab crashes, channels that deliver to every other tab in a later
    task. :meth:`tab` makes one tab's :class:`TabHost`."""

    def __init__(self) -> None:
        self._holders: dict[str, _LocalLock] = {}
        self._waiters: dict[str, deque[tuple[LocalTab, asyncio.Future[_LocalLock]]]] = {}
        self._channels: dict[str, list[_LocalChannel]] = {}

    def tab(self) -> LocalTab:
        return LocalTab(self)

    async def _acquire(self, tab: LocalTab, name: str, *, wait: bool) -> _LocalLock | None:
        holder = self._holders.get(name)
        if holder is None or not holder.held:
            lock = self._holders[name] = _LocalLock(self, name, tab)
            return lock
        if not wait:
            return None
        waiting: asyncio.Future[_LocalLock] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, deque()).append((tab, waiting))
        try:
            return await waiting
        except asyncio.CancelledError:  # given up: a grant that raced it is let go
            if waiting.done() and not waiting.cancelled():
                await waiting.result().release()
            raise

    def _hand_over(self, name: str) -> None:
        del self._holders[name]
        waiters = self._waiters.get(name, deque())
        while waiters:
            tab, waiting = waiters.popleft()
            if not waiting.done() and not tab.crashed:
                lock = self._holders[name] = _LocalLock(self, name, tab)
                waiting.set_result(lock)
                return
