"""The Python half of ``web/worker.js``: one ping_web device (or the delivery service) per worker.

``worker.js`` boots Pyodide, loads the ping_web wheel, imports this module and hands every
page message to :meth:`WorkerHost.handle`. The message API is documented in
``web/README.md``; in short:

* request, page to worker: ``{id, method, args}`` (``args`` an object);
* reply, worker to page: ``{id, result}`` or ``{id, error: {name, message}}``, where
  ``name`` is the :class:`~ping_web.errors.PingError` subclass (``DatabaseInUse``,
  ``StateConflict``, ...), or the Python exception class for a bug;
* event, worker to page: ``{event, data}``: ``progress`` while starting, ``update`` after a
  background sync applied something new, ``error`` when a background sync failed.

Ids cross as lowercase hex strings and message text as strings, so every result is plain
JSON. A device runs one operation at a time, in the order requests arrive (background
syncs included), so the page sees results in the order it asked for them.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from journaled_delivery import JournaledDelivery

from ping_web.client import MessagingClient
from ping_web.core.envelope import IncomingMessage
from ping_web.core.ids import ConversationId, DeviceId
from ping_web.delivery import LocalDeliveryService
from ping_web.delivery.port import DeliveryServer, Notice, PortDelivery, error_record
from ping_web.errors import DatabaseInUse, InvalidInput, PingError, StateConflict
from ping_web.storage import MemoryStorage, Storage
from ping_web.storage.encrypted import EncryptedStorage
from ping_web.storage.indexeddb import IndexedDbStorage

PROTOCOL_VERSION = 1
HISTORY_LIMIT = 200


def _js(value: Any) -> Any:
    import js
    from pyodide.ffi import to_js

    return to_js(value, dict_converter=js.Object.fromEntries, create_pyproxies=False)


def post(message: dict[str, Any]) -> None:
    """Send ``message`` to the page (``self.postMessage`` of the worker)."""
    import js

    js.postMessage(_js(message))


def emit(event: str, data: Any = None) -> None:
    post({"event": event, "data": data})


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    value = args.get(name, default)
    if value is ...:
        raise InvalidInput(f"missing argument {name!r}")
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"argument {name!r} has the wrong type ({type(value).__name__})")
    return value


def _conversation_id(args: dict[str, Any]) -> ConversationId:
    return ConversationId.from_hex(_arg(args, "conversation_id", str))


def _device_id(args: dict[str, Any], name: str = "device_id") -> DeviceId:
    return DeviceId.from_hex(_arg(args, name, str))


def message_json(message: IncomingMessage, own_device: DeviceId) -> dict[str, Any]:
    return {
        "conversation_id": message.conversation_id.hex,
        "sender_device": message.sender_device.hex,
        "sender_user": None if message.sender_user is None else _text(message.sender_user.raw),
        "own": message.sender_device == own_device,
        "epoch": message.epoch,
        "seq": message.seq,
        "wall_ms": message.hlc.wall_ms,
        "text": _text(message.plaintext),
    }


async def _open_with_retry(open_once: Callable[[], Awaitable[Storage]], wait_ms: int) -> Storage:
    """Open storage; while another owner holds it, retry for up to ``wait_ms`` (a reloaded
    page's old workers may still be letting go of their Web Locks)."""
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        try:
            return await open_once()
        except DatabaseInUse:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.25)


class WorkerHost:
    """Dispatches page requests to one device (:class:`MessagingClient`) or to the delivery service."""

    def __init__(self) -> None:
        self.role: str | None = None
        self.client: MessagingClient | None = None
        self.delivery: PortDelivery | None = None
        self.server: DeliveryServer | None = None
        self.storage_name: str | None = None
        self._key_packages = 0
        self._sync_queued = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._methods: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "describe": self.describe,
            # device
            "open_device": self.open_device,
            "device": self.device,
            "conversations": self.conversations,
            "snapshot": self.snapshot,
            "history": self.history,
            "create_conversation": self.create_conversation,
            "add_member": self.add_member,
            "remove_member": self.remove_member,
            "link_device": self.link_device,
            "revoke_device": self.revoke_device,
            "send": self.send,
            "self_update": self.self_update,
            "sync": self.sync,
            "publish_key_packages": self.publish_key_packages,
            "close": self.close,
            # delivery service
            "open_delivery": self.open_delivery,
            "connect": self.connect,
        }

    # -- plumbing ----------------------------------------------------------------------------

    def handle(self, message: Any) -> None:
        """Entry point from worker.js: answer one page message (asynchronously)."""
        task = asyncio.ensure_future(self._answer(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: Any) -> None:
        request_id: Any = None
        try:
            data = message.to_py(depth=1) if hasattr(message, "to_py") else message
            if not isinstance(data, dict):
                raise InvalidInput("a request is an object {id, method, args}")
            request_id = data.get("id")
            method = data.get("method")
            handler = self._methods.get(method) if isinstance(method, str) else None
            if handler is None:
                raise InvalidInput(f"unknown method {method!r}; call 'describe' for the list")
            raw_args = data.get("args")
            args = {} if raw_args is None or type(raw_args).__name__ == "JsNull" else _args(raw_args)
            result = await handler(args)
            reply: dict[str, Any] = {"id": request_id, "result": result}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the page
            if not isinstance(exc, PingError):
                traceback.print_exc()
            reply = {"id": request_id, "error": error_record(exc)}
        post(reply)

    async def _serial(self, operation: Callable[[], Awaitable[Any]]) -> Any:
        """Run one device operation. No lock: MessagingClient captures each operation's
        state synchronously and orders its writes itself, so requests and background syncs
        may interleave freely (docs/design.md: never hold a lock across an await)."""
        return await operation()

    def _require_client(self) -> MessagingClient:
        if self.client is None:
            raise StateConflict("no device is open in this worker: call open_device first")
        return self.client

    # -- common ------------------------------------------------------------------------------

    async def describe(self, args: dict[str, Any]) -> dict[str, Any]:
        import sys

        import pyodide

        return {
            "protocol": PROTOCOL_VERSION,
            "role": self.role,
            "methods": sorted(self._methods),
            "pyodide": pyodide.__version__,
            "python": sys.version.split()[0],
        }

    # -- device ------------------------------------------------------------------------------

    async def open_device(self, args: dict[str, Any]) -> dict[str, Any]:
        """Open (first time: create) the device stored in IndexedDB database ``storage``."""
        if self.role is not None:
            raise StateConflict(f"this worker already runs {self.role}; start another worker")
        name = _arg(args, "storage", str, None)
        user = _arg(args, "user", str, None)
        linked = bool(_arg(args, "linked", bool, False))
        encrypt = bool(_arg(args, "encrypt", bool, True))
        self._key_packages = _arg(args, "key_packages", int, 5)
        wait_ms = _arg(args, "wait_for_lock_ms", int, 0)
        timeout_ms = _arg(args, "delivery_timeout_ms", int, 30_000)
        port = args.get("delivery")
        if name is None:
            storage: Storage = MemoryStorage()
        else:

            async def opener() -> Storage:
                return await (EncryptedStorage.open_indexeddb(name) if encrypt else IndexedDbStorage.open(name))

            storage = await _open_with_retry(opener, wait_ms)
        self.role = "device"
        try:
            if port is not None and type(port).__name__ != "JsNull":
                self.delivery = PortDelivery(port, on_notice=self._on_notice, timeout_s=timeout_ms / 1000)
            created = await storage.get("device", b"identity") is None
            self.client = await MessagingClient.open(
                storage, None if user is None else user.encode(), delivery=self.delivery,
                create_device_group=not linked,
            )  # fmt: skip
        except BaseException:
            self.role = None
            if self.delivery is not None:
                self.delivery.close()
                self.delivery = None
            await storage.close()
            raise
        self.storage_name = name
        if self.delivery is not None:
            if created and self._key_packages:
                await self.client.publish_key_packages(self._key_packages)
            await self._serial(self._sync_now)
        info = self._device_info()
        info["created"] = created
        return info

    def _device_info(self) -> dict[str, Any]:
        client = self._require_client()
        return {
            "device_id": client.device_id.hex,
            "user": _text(client.user_id.raw),
            "storage": self.storage_name,
            "device_group": None if client.device_group_id is None else client.device_group_id.hex,
        }

    async def device(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._device_info()

    async def conversations(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return await self._serial(lambda: self._conversations(with_messages=False))

    async def snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """Everything a UI shows: the device, and each conversation with members and history."""
        limit = _arg(args, "limit", int, HISTORY_LIMIT)

        async def run() -> dict[str, Any]:
            return {"device": self._device_info(), "conversations": await self._conversations(True, limit)}

        return await self._serial(run)

    async def _conversations(self, with_messages: bool, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
        client = self._require_client()
        result = []
        for meta in client.conversations():
            item: dict[str, Any] = {
                "id": meta.id.hex,
                "name": meta.name,
                "epoch": meta.epoch,
                "member_count": meta.member_count,
                "is_device_group": meta.is_device_group,
                "created_at_ms": meta.created_at_ms,
            }
            conversation = await client.conversation(meta.id)
            state = conversation.state
            item["pending_commit"] = state.pending is not None
            item["removed"] = state.removed
            leaves = {leaf: device for device, leaf in conversation.device_leaves.items()}
            members = []
            if not state.removed:
                own_leaf = conversation.own_leaf_index
                for member in conversation.members():
                    device = leaves.get(member.leaf_index)
                    members.append({
                        "user": _text(member.user_id.raw),
                        "leaf_index": member.leaf_index,
                        "device_id": None if device is None else device.hex,
                        "own": member.leaf_index == own_leaf,
                    })  # fmt: skip
            item["members"] = members
            if with_messages:
                history = await client.history(meta.id, limit=limit)
                item["messages"] = [message_json(m, client.device_id) for m in history]
            result.append(item)
        return result

    async def history(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        client = self._require_client()
        conversation_id = _conversation_id(args)
        limit = _arg(args, "limit", int, None)
        messages = await client.history(conversation_id, limit=limit)
        return [message_json(m, client.device_id) for m in messages]

    async def create_conversation(self, args: dict[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        name = _arg(args, "name", str, None)
        meta = await self._serial(lambda: client.create_conversation(name or None))
        return {"id": meta.id.hex, "name": meta.name, "epoch": meta.epoch}

    async def add_member(self, args: dict[str, Any]) -> dict[str, Any]:
        """Add ``device_id`` to ``conversation_id`` with one of its published KeyPackages."""
        client = self._require_client()
        conversation_id, device_id = _conversation_id(args), _device_id(args)

        async def run() -> dict[str, Any]:
            delivery = self._require_delivery()
            key_package = await delivery.claim_key_package(device_id)
            if key_package is None:
                raise StateConflict(
                    f"device {device_id.hex[:8]} has no KeyPackage left on the delivery service; "
                    "it publishes more when it next syncs, then retry"
                )
            outcome = await client.add_members(conversation_id, [(device_id, key_package)])
            return {"epoch": outcome.welcome.epoch}

        return await self._serial(run)

    async def remove_member(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove a member by ``leaf_index``, or by ``device_id`` if this device knows its leaf."""
        client = self._require_client()
        conversation_id = _conversation_id(args)

        async def run() -> dict[str, Any]:
            leaf = _arg(args, "leaf_index", int, None)
            if leaf is None:
                device_id = _device_id(args)
                leaf = (await client.conversation(conversation_id)).leaf_index_of(device_id)
                if leaf is None:
                    raise InvalidInput(f"device {device_id.hex[:8]} is not a known member of this conversation")
            commit = await client.remove_members(conversation_id, [leaf])
            return {"epoch": commit.epoch + 1}

        return await self._serial(run)

    async def link_device(self, args: dict[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        device_id = _device_id(args)
        outcomes = await self._serial(lambda: client.link_device(device_id))
        return {"conversations": len(outcomes)}

    async def revoke_device(self, args: dict[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        device_id = _device_id(args)
        commits = await self._serial(lambda: client.revoke_device(device_id))
        return {"conversations": len(commits)}

    async def send(self, args: dict[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        conversation_id = _conversation_id(args)
        text = _arg(args, "text", str)
        if not text:
            raise InvalidInput("nothing to send: text is empty")
        envelope = await self._serial(lambda: client.send(conversation_id, text.encode()))
        return {"epoch": envelope.epoch, "seq": envelope.seq, "ciphertext_bytes": len(envelope.payload)}

    async def self_update(self, args: dict[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        conversation_id = _conversation_id(args)
        commit = await self._serial(lambda: client.self_update(conversation_id))
        return {"epoch": commit.epoch + 1}

    async def sync(self, args: dict[str, Any]) -> dict[str, Any]:
        self._require_client()
        return await self._serial(self._sync_now)

    async def publish_key_packages(self, args: dict[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        count = _arg(args, "count", int, 5)
        await self._serial(lambda: client.publish_key_packages(count))
        return {"published": count}

    async def close(self, args: dict[str, Any]) -> None:
        """Close the device (or the delivery service) and release its database."""
        if self.client is not None:
            client, self.client = self.client, None
            await self._serial(client.close)
        if self.delivery is not None:
            self.delivery.close()
            self.delivery = None
        if self.server is not None:
            self.server.close()
            service, self.server = self.server.service, None
            if isinstance(service, JournaledDelivery):
                await service.close()
        self.role = None

    def _require_delivery(self) -> PortDelivery:
        if self.delivery is None:
            raise StateConflict("this device has no delivery service (open_device without 'delivery')")
        return self.delivery

    async def _sync_now(self) -> dict[str, Any]:
        """Pull and apply what is new; publish a KeyPackage for each conversation joined."""
        client = self._require_client()
        before = len(client.conversations())
        outcome = await client.sync()
        joined = len(client.conversations()) - before
        if joined > 0 and self._key_packages:
            await client.publish_key_packages(joined)
        return {
            "messages": [message_json(m, client.device_id) for m in outcome.messages],
            "rejected": [error_record(error) for _, error in outcome.rejected],
            "joined": max(joined, 0),
        }

    def _on_notice(self, notice: Notice) -> None:
        """The delivery service has something new: sync in the background, then tell the page."""
        if notice.kind == "welcome" and self.client is not None and self.client.device_id not in notice.device_ids:
            return
        if self._sync_queued:
            return  # a sync that has not started yet will see this too
        self._sync_queued = True
        task = asyncio.ensure_future(self._background_sync())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background_sync(self) -> None:
        async def run() -> dict[str, Any] | None:
            self._sync_queued = False
            return None if self.client is None else await self._sync_now()  # closed meanwhile

        try:
            result = await self._serial(run)
        except Exception as exc:  # noqa: BLE001 - reported to the page as an event
            self._sync_queued = False
            emit("error", error_record(exc))
            return
        if result is not None:
            emit("update", result)

    # -- delivery service --------------------------------------------------------------------

    async def open_delivery(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run the delivery service here: journaled in IndexedDB ``storage``, or in memory."""
        if self.role is not None:
            raise StateConflict(f"this worker already runs {self.role}; start another worker")
        name = _arg(args, "storage", str, None)
        wait_ms = _arg(args, "wait_for_lock_ms", int, 0)
        self.role = "delivery"
        try:
            if name is None:
                service: Any = LocalDeliveryService()
                replayed = 0
            else:
                storage = await _open_with_retry(lambda: IndexedDbStorage.open(name), wait_ms)
                try:
                    service = await JournaledDelivery.open(storage)
                except BaseException:
                    await storage.close()
                    raise
                replayed = service.replayed
        except BaseException:
            self.role = None
            raise
        self.server = DeliveryServer(service)
        return {"storage": name, "persistent": name is not None, "replayed": replayed}

    async def connect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Serve one more device on the MessagePort ``port``."""
        if self.server is None:
            raise StateConflict("no delivery service runs in this worker: call open_delivery first")
        port = args.get("port")
        if port is None or type(port).__name__ == "JsNull":
            raise InvalidInput("connect needs a MessagePort in args.port (transferred)")
        self.server.connect(port)
        return {"connections": self.server.connections}


def _args(raw: Any) -> dict[str, Any]:
    """Request arguments: plain values converted, MessagePorts kept as JS objects."""
    value = raw.to_py(depth=1) if hasattr(raw, "to_py") else raw
    if not isinstance(value, dict):
        raise InvalidInput("args must be an object")
    out = {}
    for key, item in value.items():
        if hasattr(item, "to_py") and type(item).__name__ != "JsNull" and not _is_port(item):
            item = item.to_py()
        out[key] = None if type(item).__name__ == "JsNull" else item
    return out


def _is_port(value: Any) -> bool:
    """A MessagePort (or anything else that can be posted to): kept as a JS object."""
    return hasattr(value, "postMessage")
