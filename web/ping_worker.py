"""The Python half of ``web/worker.js``: one ping_web device (or an in-memory delivery service) per worker.

``worker.js`` boots Pyodide, loads the ping_web wheel, imports this module and hands every
page message to :meth:`WorkerHost.handle`. The message API is documented in
``web/README.md``; in short:

* request, page to worker: ``{id, method, args}`` (``args`` an object);
* reply, worker to page: ``{id, result}`` or ``{id, error: {name, message}}``
  (:func:`ping_web.delivery.port.answer`, the same shape as the delivery port), where
  ``name`` is the :class:`~ping_web.errors.PingError` subclass (``DatabaseInUse``,
  ``StateConflict``, ...), or the Python exception class for a bug;
* event, worker to page: ``{event, data}``: ``progress`` while starting, ``update`` after a
  background sync applied something new, ``connection`` when the relay connection changes,
  ``error`` when a background sync failed for another reason than the relay being away,
  ``identity`` when a user's devices or identity changed or a conversation has an
  unverified member, ``link`` while a link started here progresses (a request to approve,
  done, failed).

A device talks to a relay (``RelayDelivery``, the demo) or, through a ``MessagePort``, to a
delivery service in another worker (``PortDelivery``). Ids cross as lowercase hex strings
and message text as strings, so every result is plain JSON. Requests to a device run
concurrently (background syncs included): MessagingClient captures each operation
synchronously and writes in capture order, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from ping_web import _ffi
from ping_web.client import MessagingClient
from ping_web.client.identity import IdentityEvent, IdentityEventKind, describe_key
from ping_web.core.devlog import LogOp
from ping_web.core.envelope import IncomingMessage
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.linking import LinkCode, LinkRequest
from ping_web.delivery import Delivery, LocalDeliveryService, Notice
from ping_web.delivery.port import DeliveryServer, PortDelivery, answer, error_record
from ping_web.delivery.relay import ConnectionState, RelayDelivery
from ping_web.errors import (
    DatabaseInUse,
    DeliveryUnavailable,
    InvalidInput,
    PingError,
    RejoinRequired,
    StateConflict,
)
from ping_web.storage import MemoryStorage, Storage
from ping_web.storage.encrypted import EncryptedStorage
from ping_web.storage.indexeddb import IndexedDbStorage

PROTOCOL_VERSION = 3
HISTORY_LIMIT = 200
LINK_WAIT_S = 600


def post(message: dict[str, Any]) -> None:
    """Send ``message`` to the page (the worker's ``postMessage``)."""
    post_message = _ffi.host_global("postMessage")
    if post_message is not None:
        post_message(_ffi.js_object(message))


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


def _user(args: dict[str, Any], name: str = "user") -> UserId:
    text = _arg(args, name, str).strip()
    if not text:
        raise InvalidInput(f"argument {name!r} is empty")
    return UserId.from_bytes(text.encode())


def _now_ms() -> int:
    return int(time.time() * 1000)


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
    page's old worker may still be letting go of its Web Lock)."""
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        try:
            return await open_once()
        except DatabaseInUse:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.25)


class WorkerHost:
    """Dispatches page requests to one device (:class:`MessagingClient`) or to a delivery service."""

    def __init__(self) -> None:
        self.role: str | None = None
        self.client: MessagingClient | None = None
        self.delivery: Delivery | None = None
        self.server: DeliveryServer | None = None
        self.storage_name: str | None = None
        self._key_packages = 0
        self._to_publish = 0
        self._sync_queued = False
        self._syncs = 0
        self._queued = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._link: tuple[LinkCode, LinkRequest | None] | None = None
        self._numbers: dict[tuple[str, bytes, bytes], Any] = {}
        self._notes: dict[str, list[dict[str, Any]]] = {}
        """System lines per conversation (hex id): device changes and unverified members."""
        self._methods: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "describe": self.describe,
            # device
            "open_device": self.open_device,
            "device": self.device,
            "conversations": self.conversations,
            "snapshot": self.snapshot,
            "history": self.history,
            "create_conversation": self.create_conversation,
            "add_user": self.add_user,
            "start_link": self.start_link,
            "approve_link": self.approve_link,
            "link_with_code": self.link_with_code,
            "contact": self.contact,
            "share_history": self.share_history,
            "mark_verified": self.mark_verified,
            "add_member": self.add_member,
            "remove_member": self.remove_member,
            "link_device": self.link_device,
            "revoke_device": self.revoke_device,
            "send": self.send,
            "self_update": self.self_update,
            "sync": self.sync,
            "publish_key_packages": self.publish_key_packages,
            "connection": self.connection,
            "close": self.close,
            # delivery service (in memory, shared with device workers over MessagePorts)
            "open_delivery": self.open_delivery,
            "connect": self.connect,
        }

    # -- plumbing ----------------------------------------------------------------------------

    def handle(self, message: Any) -> None:
        """Entry point from worker.js: answer one page message (asynchronously)."""
        self._spawn(self._answer(message))

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: Any) -> None:
        try:
            data = _ffi.from_js(message)
        except Exception as exc:  # noqa: BLE001 - an unreadable request still gets an answer
            post({"id": None, "error": error_record(exc)})
            return
        if not isinstance(data, dict):
            post({"id": None, "error": error_record(InvalidInput("a request is an object {id, method, args}"))})
            return
        post(await answer(data, self._call))

    async def _call(self, method: Any, args: Any) -> Any:
        handler = self._methods.get(method) if isinstance(method, str) else None
        if handler is None:
            raise InvalidInput(f"unknown method {method!r}; call 'describe' for the list")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InvalidInput("args must be an object")
        try:
            return await handler(args)
        except PingError:
            raise
        except Exception:
            traceback.print_exc()  # a bug: its traceback goes to the worker's console
            raise

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
        relay = _arg(args, "relay", str, None)
        push = _arg(args, "push", str, "auto")
        retry_ms = _arg(args, "retry_ms", int, 4_000)
        backoff_cap_ms = _arg(args, "backoff_cap_ms", int, 15_000)
        port = args.get("delivery")
        if name is None:
            storage: Storage = MemoryStorage()
        else:

            async def opener() -> Storage:
                return await (EncryptedStorage.open_indexeddb(name) if encrypt else IndexedDbStorage.open(name))

            storage = await _open_with_retry(opener, wait_ms)
        self.role = "device"
        try:
            created = await storage.get("device", b"identity") is None
            if created and not user:
                raise InvalidInput("this storage holds no device yet: pass user to create one")
            if relay is not None:
                self.delivery = RelayDelivery(
                    relay or None, push=push, on_notice=self._on_notice, on_state=self._on_state,
                    retry_for_s=retry_ms / 1000, backoff_cap_s=backoff_cap_ms / 1000,
                )  # fmt: skip
            elif port is not None:
                self.delivery = PortDelivery(port, on_notice=self._on_notice, timeout_s=timeout_ms / 1000)
            self.client = await MessagingClient.open(
                storage, None if user is None else user.encode(), delivery=self.delivery, linked=linked,
                label=_arg(args, "label", str, "") or "",
            )  # fmt: skip
            self.client.on_identity_event = self._on_identity
        except BaseException:
            self.role = None
            await self._close_delivery()
            await storage.close()
            raise
        self.storage_name = name
        self._queued = len(await self.client.outbox())
        if self.delivery is not None:
            if created and self._key_packages and not linked:  # a linked device publishes once linked
                self._to_publish = self._key_packages
                try:
                    await self._publish_waiting()
                except DeliveryUnavailable:
                    pass  # published with the next sync that reaches the relay
            self._schedule_sync()
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
            "relay": self.delivery.url if isinstance(self.delivery, RelayDelivery) else None,
        }

    async def device(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._device_info()

    async def conversations(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return await self._conversations(with_messages=False)

    async def snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """Everything a UI shows: the device, the connection, and each conversation with
        members and history."""
        limit = _arg(args, "limit", int, HISTORY_LIMIT)
        conversations = await self._conversations(True, limit)
        return {
            "device": self._device_info(),
            "connection": self._connection_json(),
            "conversations": conversations,
            "contacts": await self._contacts(conversations),
            "link": None if self._link is None else {"code": str(self._link[0]), "waiting": self._link[1] is None},
        }

    async def _contacts(self, conversations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The users this device shares a conversation with: verified mark, devices, safety
        number (kept per identity: it takes 5200 hashes)."""
        client = self._require_client()
        me = _text(client.user_id.raw)
        users = sorted({m["user"] for c in conversations if not c["is_device_group"] for m in c["members"]} - {me})
        own = await client.contact(client.user_id, refresh=False)
        result = []
        for name in users:
            contact = await client.contact(name.encode(), refresh=False)
            if contact is None or own is None:
                continue
            key = (name, own.log.root, contact.log.root)
            number = self._numbers.get(key)
            if number is None:
                number = self._numbers[key] = await client.safety_number(name.encode())
            result.append({
                "user": name, "verified": contact.verified,
                "conflict": None if contact.conflict is None else contact.conflict.value,
                "devices": [d.label or describe_key(d.key) for d in contact.devices],
                "safety_number": number.groups,
            })  # fmt: skip
        return result

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
            item["notes"] = list(self._notes.get(meta.id.hex, []))
            item["unverified"] = [
                {"user": _text(m.user_id.raw), "key": describe_key(m.signature_key), "reason": reason}
                for m, reason in await client.unverified_members(meta.id)
            ] if not state.removed else []  # fmt: skip
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
        meta = await client.create_conversation(name or None)
        return {"id": meta.id.hex, "name": meta.name, "epoch": meta.epoch}

    async def add_user(self, args: dict[str, Any]) -> dict[str, Any]:
        """Add every device of ``user``'s verified device log (one commit), each with one of
        its published KeyPackages (``MessagingClient.add_user``)."""
        client = self._require_client()
        conversation_id, user = _conversation_id(args), _user(args)
        before = {m.signature_key for m in (await client.conversation(conversation_id)).members()}
        outcome = await client.add_user(conversation_id, user)
        added = {d.key: d.device_id.hex for d in await client.devices_of(user)}
        members = (await client.conversation(conversation_id)).members()
        devices = [
            added[m.signature_key] for m in members if m.signature_key in added and m.signature_key not in before
        ]
        return {"epoch": outcome.welcome.epoch, "devices": devices}

    # -- identity: linking, contacts, safety numbers --------------------------------------------

    async def start_link(self, args: dict[str, Any]) -> dict[str, Any]:
        """Show a code for a new device of this user; a ``link`` event says when its request
        arrived (then ``approve_link``), or that it failed."""
        client = self._require_client()
        code = await client.start_link()
        self._link = (code, None)
        self._spawn(self._wait_link(code))
        return {"code": str(code)}

    async def _wait_link(self, code: LinkCode) -> None:
        client = self._require_client()
        try:
            request = await client.wait_link_request(code, timeout_s=LINK_WAIT_S)
        except PingError as exc:
            if self._link is not None and self._link[0] is code:
                self._link = None
                emit("link", {"state": "failed", "error": error_record(exc)})
            return
        if self._link is not None and self._link[0] is code:
            self._link = (code, request)
            emit("link", {"state": "request", "label": request.label or "a new device",
                          "device_id": request.device_id.hex, "key": describe_key(request.device_key)})  # fmt: skip

    async def approve_link(self, args: dict[str, Any]) -> dict[str, Any]:
        """Approve the request that arrived for the code this device shows."""
        client = self._require_client()
        if self._link is None or self._link[1] is None:
            raise StateConflict("no link request is waiting: show a code first, and type it on the new device")
        code, request = self._link
        self._link = None
        device = await client.approve_link(code, request)
        emit("link", {"state": "done", "label": device.label, "device_id": device.device_id.hex})
        return {"device_id": device.device_id.hex, "label": device.label}

    async def link_with_code(self, args: dict[str, Any]) -> dict[str, Any]:
        """On a new device (opened with ``linked``): link it with the code another device of
        this user shows; returns once that device approved."""
        client = self._require_client()
        own = await client.request_link(_arg(args, "code", str), label=_arg(args, "label", str, "") or "")
        if self._key_packages:
            self._to_publish += self._key_packages
        await client.sync()  # the Welcomes of the conversations the approving device added it to
        await client.join_user_conversations()  # and the others of its user, by external commit
        self._schedule_sync()
        return {"devices": [d.label or d.device_id.hex[-6:] for d in own.devices]}

    async def share_history(self, args: dict[str, Any]) -> dict[str, Any]:
        """Send this device's history of the conversations they share to another device of
        this user (opt-in: the person asked for it), through the device group."""
        count = await self._require_client().share_history(_device_id(args))
        return {"messages": count}

    async def contact(self, args: dict[str, Any]) -> dict[str, Any]:
        """A user's verified devices, whether people compared safety numbers, and the number."""
        client = self._require_client()
        user = _user(args)
        contact = await client.contact(user)
        if contact is None:
            raise InvalidInput(f"no user {_text(user.raw)!r} is known to the relay")
        number = await client.safety_number(user)
        return {
            "user": _text(user.raw),
            "verified": contact.verified,
            "conflict": None if contact.conflict is None else contact.conflict.value,
            "devices": [
                {"device_id": d.device_id.hex, "label": d.label, "key": describe_key(d.key)} for d in contact.devices
            ],
            "safety_number": number.groups,
            "qr": number.qr.hex(),
        }

    async def mark_verified(self, args: dict[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        user = _user(args)
        if _arg(args, "verified", bool, True):
            contact = await client.mark_verified(user)
        else:
            contact = await client.unmark_verified(user)
        return {"user": _text(user.raw), "verified": contact.verified}

    def _on_identity(self, event: IdentityEvent) -> None:
        """Turn an identity event into system lines of the conversations it concerns."""
        client = self.client
        if client is None:
            return
        user = _text(event.user_id.raw)
        if event.kind is IdentityEventKind.DEVICE_JOINED and event.conversation_id is not None:
            text = f"{user} added a device ({describe_key(event.key or b'')}) to this conversation."
            targets = [event.conversation_id.hex]
        elif event.kind is IdentityEventKind.UNVERIFIED_MEMBER and event.conversation_id is not None:
            text = (f"Warning: a device of {user} ({describe_key(event.key or b'')}) in this conversation is not "
                    f"one of {user}'s verified devices ({event.reason}). Nothing is sent here until it is removed.")  # fmt: skip
            targets = [event.conversation_id.hex]
        else:
            if event.kind is IdentityEventKind.DEVICES_CHANGED:
                parts = [f"{'linked' if c.op is LogOp.ADD else 'removed'} "
                         f"'{c.device.label or describe_key(c.device.key)}'" for c in event.changes]  # fmt: skip
                text = f"{user}'s devices changed: {', '.join(parts)}."
                if event.verified:
                    text += f" You had verified {user}: compare safety numbers again if you did not expect this."
            else:
                text = (f"Warning: the relay shows another identity for {user} ({event.conflict.value if event.conflict else ''}); "
                        "it was refused. Compare safety numbers before you accept it.")  # fmt: skip
            targets = [meta.id.hex for meta in client.conversations() if not meta.is_device_group]
            self._spawn(self._note_where_member(event.user_id, targets, text, event.kind.value))
            return
        for target in targets:
            self._notes.setdefault(target, []).append({"kind": event.kind.value, "text": text, "wall_ms": _now_ms()})
        emit("identity", {"kind": event.kind.value, "user": user, "text": text})

    async def _note_where_member(self, user: UserId, targets: list[str], text: str, kind: str) -> None:
        client = self.client
        if client is None:
            return
        for target in targets:
            conversation = await client.conversation(ConversationId.from_hex(target))
            if not conversation.state.removed and any(m.user_id == user for m in conversation.members()):
                self._notes.setdefault(target, []).append({"kind": kind, "text": text, "wall_ms": _now_ms()})
        emit("identity", {"kind": kind, "user": _text(user.raw), "text": text})

    async def add_member(self, args: dict[str, Any]) -> dict[str, Any]:
        """Add ``device_id`` to ``conversation_id`` with one of its published KeyPackages."""
        client = self._require_client()
        conversation_id, device_id = _conversation_id(args), _device_id(args)
        key_package = await self._require_delivery().claim_key_package(device_id)
        if key_package is None:
            raise StateConflict(
                f"device {device_id.hex[:8]} has no KeyPackage left on the delivery service; "
                "it publishes more when it next syncs, then retry"
            )
        outcome = await client.add_members(conversation_id, [(device_id, key_package)])
        return {"epoch": outcome.welcome.epoch}

    async def remove_member(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove a member by ``leaf_index``, or by ``device_id`` if this device knows its leaf."""
        client = self._require_client()
        conversation_id = _conversation_id(args)
        leaf = _arg(args, "leaf_index", int, None)
        if leaf is None:
            device_id = _device_id(args)
            leaf = (await client.conversation(conversation_id)).leaf_index_of(device_id)
            if leaf is None:
                raise InvalidInput(f"device {device_id.hex[:8]} is not a known member of this conversation")
        commit = await client.remove_members(conversation_id, [leaf])
        return {"epoch": commit.epoch + 1}

    async def link_device(self, args: dict[str, Any]) -> dict[str, Any]:
        outcomes = await self._require_client().link_device(_device_id(args))
        return {"conversations": len(outcomes)}

    async def revoke_device(self, args: dict[str, Any]) -> dict[str, Any]:
        commits = await self._require_client().revoke_device(_device_id(args))
        return {"conversations": len(commits)}

    async def send(self, args: dict[str, Any]) -> dict[str, Any]:
        """Store and send a message. If the relay cannot take it now, it waits in the outbox
        (``queued`` in the reply and in ``connection`` events) and goes out with the next sync."""
        client = self._require_client()
        conversation_id = _conversation_id(args)
        text = _arg(args, "text", str)
        if not text:
            raise InvalidInput("nothing to send: text is empty")
        try:
            envelope = await client.send(conversation_id, text.encode())
        except RejoinRequired:  # a copy restored from an older backup: join again, without asking
            await client.rejoin(conversation_id)
            self._notes.setdefault(conversation_id.hex, []).append({
                "kind": "rejoined", "wall_ms": _now_ms(),
                "text": "This device joined the conversation again (it had been restored from an older backup).",
            })  # fmt: skip
            envelope = await client.send(conversation_id, text.encode())
        await self._count_queued()
        return {
            "epoch": envelope.epoch,
            "seq": envelope.seq,
            "ciphertext_bytes": len(envelope.payload),
            "queued": self._queued > 0,
        }

    async def self_update(self, args: dict[str, Any]) -> dict[str, Any]:
        commit = await self._require_client().self_update(_conversation_id(args))
        return {"epoch": commit.epoch + 1}

    async def sync(self, args: dict[str, Any]) -> dict[str, Any]:
        self._require_client()
        return await self._sync_now()

    async def publish_key_packages(self, args: dict[str, Any]) -> dict[str, Any]:
        count = _arg(args, "count", int, 5)
        await self._require_client().publish_key_packages(count)
        return {"published": count}

    async def connection(self, args: dict[str, Any]) -> dict[str, Any]:
        """The relay connection: ``{status, queued, attempt, retry_in_s, push, detail, syncs}``."""
        self._require_client()
        await self._count_queued()
        return self._connection_json()

    async def close(self, args: dict[str, Any]) -> None:
        """Close the device (or the delivery service) and release its database."""
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()
        await self._close_delivery()
        if self.server is not None:
            self.server.close()
            self.server = None
        self.role = None

    async def _close_delivery(self) -> None:
        delivery, self.delivery = self.delivery, None
        if isinstance(delivery, RelayDelivery):
            await delivery.close()
        elif isinstance(delivery, PortDelivery):
            delivery.close()

    def _require_delivery(self) -> Delivery:
        if self.delivery is None:
            raise StateConflict("this device has no delivery service (open_device without relay or delivery)")
        return self.delivery

    # -- background sync and the connection ----------------------------------------------------

    async def _sync_now(self) -> dict[str, Any]:
        """Pull and apply what is new, post what waits; publish a KeyPackage per conversation joined."""
        client = self._require_client()
        before = len(client.conversations())
        try:
            outcome = await client.sync()
        finally:
            self._syncs += 1
            await self._count_queued()
        joined = len(client.conversations()) - before
        if joined > 0 and self._key_packages:
            self._to_publish += joined
        await self._publish_waiting()
        return {
            "messages": [message_json(m, client.device_id) for m in outcome.messages],
            "rejected": [error_record(error) for _, error in outcome.rejected],
            "joined": max(joined, 0),
        }

    async def _publish_waiting(self) -> None:
        """Publish the KeyPackages owed (a new device's first ones, one per conversation joined)."""
        count, self._to_publish = self._to_publish, 0
        if count and self.client is not None:
            try:
                await self.client.publish_key_packages(count)
            except BaseException:
                self._to_publish += count
                raise

    def _on_notice(self, notice: Notice) -> None:
        """The delivery service has something new: sync in the background, then tell the page."""
        if notice.kind == "welcome" and self.client is not None and self.client.device_id not in notice.device_ids:
            return
        self._schedule_sync()

    def _on_state(self, state: ConnectionState) -> None:
        emit("connection", self._connection_json(state))
        if state.status == "connected":
            self._schedule_sync()  # catch up, and post what waited in the outbox

    def _schedule_sync(self) -> None:
        if self._sync_queued:
            return  # a sync that has not started yet will see this too
        self._sync_queued = True
        self._spawn(self._background_sync())

    async def _background_sync(self) -> None:
        await asyncio.sleep(0)  # let notices arriving together share this sync
        self._sync_queued = False
        if self.client is None:
            return  # closed meanwhile
        try:
            result = await self._sync_now()
        except DeliveryUnavailable:
            emit("connection", self._connection_json())  # reconnecting: the next state change syncs
            return
        except Exception as exc:  # noqa: BLE001 - reported to the page as an event
            emit("error", error_record(exc))
            return
        emit("update", result)

    async def _count_queued(self) -> None:
        client = self.client
        if client is None:
            return
        queued = len(await client.outbox())
        if queued != self._queued:
            self._queued = queued
            emit("connection", self._connection_json())

    def _connection_json(self, state: ConnectionState | None = None) -> dict[str, Any]:
        delivery = self.delivery
        if state is None:
            state = delivery.state if isinstance(delivery, RelayDelivery) else ConnectionState("connected", push="port")
        return {
            "status": state.status,
            "queued": self._queued,
            "attempt": state.attempt,
            "retry_in_s": state.retry_in_s,
            "push": state.push,
            "detail": state.detail,
            "syncs": self._syncs,
        }

    # -- delivery service --------------------------------------------------------------------

    async def open_delivery(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run an in-memory delivery service here, for device workers connected with ``connect``."""
        if self.role is not None:
            raise StateConflict(f"this worker already runs {self.role}; start another worker")
        self.role = "delivery"
        self.server = DeliveryServer(LocalDeliveryService())
        return {"persistent": False}

    async def connect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Serve one more device on the MessagePort ``port``."""
        if self.server is None:
            raise StateConflict("no delivery service runs in this worker: call open_delivery first")
        port = args.get("port")
        if port is None or not hasattr(port, "postMessage"):
            raise InvalidInput("connect needs a MessagePort in args.port (transferred)")
        self.server.connect(port)
        return {"connections": self.server.connections}
