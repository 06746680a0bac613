"""The Python half of web/tabs/worker.js: one tab's SharedDevice, or the peer.

A tab (``open``) joins the device shared by the tabs of this origin
(:class:`~ping_web.client.tabs.SharedDevice`), with its own port to the delivery service.
The peer (``open_peer``) runs the delivery service (a ``LocalDeliveryService`` behind a
``DeliveryServer``, one port per tab) and bob, a device of another user who receives what
the tabs send. Requests ``{id, method, args}`` get ``{id, result}`` or ``{id, error}``;
events ``{event, data}`` carry what the shared device reports (``messages``, ``leader``,
``error``) and ``withheld`` (a reply held back on purpose, see :meth:`TabsHost.withhold`).
Ids cross as hex, texts as strings.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from ping_web import _ffi
from ping_web.client import MessagingClient
from ping_web.client.tabs import LEADER, SharedDevice, TabEvent
from ping_web.core.envelope import IncomingMessage, MessageEnvelope
from ping_web.core.ids import ConversationId, DeviceId
from ping_web.delivery import LocalDeliveryService
from ping_web.delivery.port import DeliveryServer, Notice, PortDelivery, error_record
from ping_web.errors import InvalidInput, PingError, StateConflict
from ping_web.storage import MemoryStorage


def post(message: dict[str, Any]) -> None:
    post_message = _ffi.host_global("postMessage")
    if post_message is not None:
        post_message(_ffi.js_object(message))


def emit(event: str, data: Any) -> None:
    post({"event": event, "data": data})


def message_json(message: IncomingMessage) -> dict[str, Any]:
    return {
        "conversation_id": message.conversation_id.hex,
        "sender": message.sender_device.hex,
        "seq": message.seq,
        "text": message.plaintext.decode("utf-8", errors="replace"),
    }


class TabsHost:
    """Answers the page: one method per request (see the module docstring)."""

    def __init__(self) -> None:
        self.device: SharedDevice | None = None
        self.delivery: PortDelivery | None = None
        self.server: DeliveryServer | None = None
        self.service: LocalDeliveryService | None = None
        self.bob: MessagingClient | None = None
        self._syncing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._methods: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "open": self.open,
            "create_conversation": self.create_conversation,
            "add_member": self.add_member,
            "send": self.send,
            "history": self.history,
            "stats": self.stats,
            "withhold": self.withhold,
            "sync": self.sync,
            "close": self.close,
            "open_peer": self.open_peer,
            "connect": self.connect,
            "peer_sync": self.peer_sync,
            "peer_history": self.peer_history,
            "log": self.log,
        }

    def handle(self, message: Any) -> None:
        self._spawn(self._answer(message))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: Any) -> None:
        request_id: Any = None
        try:
            data = message.to_py(depth=1)
            request_id = data.get("id")
            handler = self._methods.get(data.get("method"))
            if handler is None:
                raise InvalidInput(f"unknown method {data.get('method')!r}")
            raw = data.get("args")
            args = {} if _ffi.is_absent(raw) else raw.to_py(depth=1)
            for key, value in list(args.items()):  # ports stay JS objects, the rest is converted
                if hasattr(value, "to_py") and not hasattr(value, "postMessage"):
                    args[key] = value.to_py()
            reply: dict[str, Any] = {"id": request_id, "result": await handler(args)}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the page
            if not isinstance(exc, PingError):
                traceback.print_exc()
            reply = {"id": request_id, "error": error_record(exc)}
        post(reply)

    def _require_device(self) -> SharedDevice:
        if self.device is None:
            raise StateConflict("no device is open in this tab")
        return self.device

    # -- a tab of the shared device --------------------------------------------------------------

    async def open(self, args: dict[str, Any]) -> dict[str, Any]:
        self.delivery = PortDelivery(args["delivery"], on_notice=self._notice)
        self.device = await SharedDevice.open(
            args["storage"], args["user"].encode(), delivery=self.delivery, on_event=self._event
        )
        return {"role": self.device.role, "device_id": self.device.device_id.hex, "tab": self.device.tab_id.hex()}

    def _event(self, event: TabEvent) -> None:
        if event.kind == "messages":
            emit("messages", [message_json(m) for m in event.messages])
        elif event.kind == "leader":
            emit("leader", {"this_tab": event.this_tab, "role": "leader" if event.this_tab else "follower"})
            self._notice(None)  # a new leader pulls what it may have missed
        elif event.error is not None:
            emit("error", error_record(event.error))

    def _notice(self, notice: Notice | None) -> None:
        """The delivery service has news: the leading tab pulls it (once at a time)."""
        device = self.device
        if device is None or device.role != LEADER or self._syncing:
            return
        self._syncing = True
        self._spawn(self._sync_in_background(device))

    async def _sync_in_background(self, device: SharedDevice) -> None:
        try:
            await device.sync()
        except PingError as exc:
            emit("error", error_record(exc))
        finally:
            self._syncing = False

    async def create_conversation(self, args: dict[str, Any]) -> dict[str, Any]:
        meta = await self._require_device().create_conversation(args.get("name"))
        return {"id": meta.id.hex}

    async def add_member(self, args: dict[str, Any]) -> dict[str, Any]:
        device, delivery = self._require_device(), self.delivery
        assert delivery is not None
        member = DeviceId.from_hex(args["device_id"])
        key_package = await delivery.claim_key_package(member)
        if key_package is None:
            raise StateConflict("that device has no KeyPackage left")
        outcome = await device.add_members(ConversationId.from_hex(args["conversation_id"]), [(member, key_package)])
        return {"epoch": outcome.welcome.epoch}

    async def send(self, args: dict[str, Any]) -> dict[str, Any]:
        envelope = await self._require_device().send(
            ConversationId.from_hex(args["conversation_id"]), args["text"].encode()
        )
        return {"seq": envelope.seq, "epoch": envelope.epoch}

    async def history(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        messages = await self._require_device().history(ConversationId.from_hex(args["conversation_id"]))
        return [message_json(m) for m in messages]

    async def stats(self, args: dict[str, Any]) -> dict[str, Any]:
        device = self._require_device()
        client = device.client
        return {
            "role": device.role,
            "resent": device.resent,
            "replayed": None if client is None else client._requests.replayed,
            "leader_tab": None if device.leader_tab is None else device.leader_tab.hex(),
        }

    async def withhold(self, args: dict[str, Any]) -> None:
        """Tests: keep applying other tabs' calls but hold back every reply (a leader that
        dies between applying a call and answering it); each is reported as ``withheld``."""
        device = self._require_device()
        count = [0]

        def hold(reply: dict[str, Any]) -> None:
            count[0] += 1
            emit("withheld", count[0])

        device._withhold = hold

    async def sync(self, args: dict[str, Any]) -> dict[str, Any]:
        outcome = await self._require_device().sync()
        return {"messages": [message_json(m) for m in outcome.messages]}

    async def close(self, args: dict[str, Any]) -> None:
        if self.device is not None:
            await self.device.close()

    # -- the peer: delivery service and bob -------------------------------------------------------

    async def open_peer(self, args: dict[str, Any]) -> dict[str, Any]:
        self.service = LocalDeliveryService()
        self.server = DeliveryServer(self.service)
        self.bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=self.service)
        await self.bob.publish_key_packages(4)
        return {"device_id": self.bob.device_id.hex}

    async def connect(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.server is not None
        self.server.connect(args["port"])
        return {"connections": self.server.connections}

    async def peer_sync(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.bob is not None
        outcome = await self.bob.sync()
        return {
            "conversations": [m.id.hex for m in self.bob.conversations() if not m.is_device_group],
            "rejected": [error_record(error) for _, error in outcome.rejected],
        }

    async def peer_history(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.bob is not None
        return [message_json(m) for m in await self.bob.history(ConversationId.from_hex(args["conversation_id"]))]

    async def log(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """The delivery service's log of a conversation: sender, seq, kind and bytes of each entry."""
        assert self.service is not None
        page = await self.service.fetch(ConversationId.from_hex(args["conversation_id"]), 0)
        entries = []
        for raw in page.envelopes:
            envelope = MessageEnvelope.decode(raw)
            entries.append({
                "sender": envelope.sender_device.hex, "seq": envelope.seq, "kind": envelope.kind.name,
                "bytes": raw.hex(),
            })  # fmt: skip
        return entries
