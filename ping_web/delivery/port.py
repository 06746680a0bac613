"""One delivery service shared by many Pyodide workers, over ``MessagePort``\\ s.

The delivery logic stays in Python on both sides: a worker of its own runs any
:class:`~ping_web.delivery.Delivery` (``web/ping_worker.py`` runs a ``LocalDeliveryService``) behind a
:class:`DeliveryServer`; each device worker binds a
:class:`PortDelivery` to its client. ``PortDelivery`` implements the
:class:`~ping_web.delivery.Delivery` protocol by forwarding every call over its port; the
server calls the service and answers. JavaScript only creates the ``MessageChannel`` and
hands one end to each side::

    # delivery worker                           # device worker
    service = LocalDeliveryService()            delivery = PortDelivery(port, on_notice=...)
                                                client = await MessagingClient.open(
    server = DeliveryServer(service)                storage, b"alice", delivery=delivery)
    server.connect(port)                        # one port per device

Messages on a port (structured clone; bytes cross as ``Uint8Array``, ids as their raw bytes):

* request, device to server: ``{id: int, method: str, args: [...]}``, ``method`` one of
  :data:`METHODS` (the :class:`~ping_web.delivery.Delivery` methods, plus ``send_welcome``)
  with its arguments in order; a :class:`~ping_web.delivery.RosterChange` crosses as
  ``{added: [...], removed: [...], removed_keys: [...]}``;
* reply, server to device: ``{id, result}`` or ``{id, error: {name, message}}``, where
  ``name`` is the :class:`~ping_web.errors.PingError` subclass (re-raised as that class on
  the device side);
* notice, server to every other port: ``{notice: "log", conversation_id}`` after a post or
  commit was accepted, ``{notice: "welcome", device_ids: [...]}`` after a Welcome was left.
  A notice only says "something is new": clients then pull with ``sync()`` as usual.

Everything here needs Pyodide (through :mod:`ping_web._ffi`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ping_web import _ffi, errors
from ping_web.core import codec
from ping_web.core.envelope import MessageEnvelope
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.delivery.base import Delivery, DeviceLogPage, DeviceSigner, LogPage, Notice, RosterChange
from ping_web.errors import CommitRefused, DeliveryUnavailable, InvalidInput, PingError

__all__ = [
    "METHODS",
    "DeliveryServer",
    "DeliveryUnavailable",
    "Notice",
    "PortDelivery",
    "answer",
    "error_from_record",
    "error_record",
    "serve_delivery",
]

METHODS: Final = (
    "create_group",
    "post",
    "commit",
    "fetch",
    "send_welcome",
    "fetch_welcomes",
    "ack_welcomes",
    "publish_key_packages",
    "claim_key_package",
    "devices_of",
    "group_info",
    "user_groups",
    "device_log",
    "append_device_log",
    "open_link",
    "send_link_request",
    "link_request",
    "send_link_answer",
    "link_answer",
)
"""The :class:`~ping_web.delivery.Delivery` methods a port carries (``bind`` stays on the
device side), and ``send_welcome`` of services that have it."""

DEFAULT_TIMEOUT_S: Final = 30.0
MAX_LIST: Final = 10_000
"""Most items a list argument may have (welcome recipients, KeyPackages per call)."""


# -- conversions at the port ------------------------------------------------------------------


def message_data(event: Any) -> dict[str, Any] | None:
    """A port message's data as a Python dict; ``None`` for anything else (dropped: a
    malformed message never raises into JavaScript)."""
    try:
        data = _ffi.from_js(event.data)
    except Exception:  # noqa: BLE001 - see above
        return None
    return data if isinstance(data, dict) else None


def _raw(value: Any, what: str) -> bytes:
    """A ``Uint8Array`` argument, as bytes."""
    return codec.byte_string(value, f"delivery bridge: {what}")


def _raw_list(value: Any, what: str) -> list[bytes]:
    return codec.byte_strings(value, f"delivery bridge: {what}", hi=MAX_LIST)


def _int(value: Any, what: str) -> int:
    return codec.uint(value, f"delivery bridge: {what}")


_DELIVERY_ERRORS: Final[dict[str, type[PingError]]] = {
    "DeliveryUnavailable": DeliveryUnavailable,
    "CommitRefused": CommitRefused,
}


def _roster(value: Any) -> RosterChange:
    if not isinstance(value, dict):
        raise InvalidInput("delivery bridge: a roster is an object {added, removed, removed_keys}")
    return RosterChange(
        tuple(DeviceId.from_bytes(raw) for raw in _raw_list(value.get("added", []), "added")),
        tuple(DeviceId.from_bytes(raw) for raw in _raw_list(value.get("removed", []), "removed")),
        tuple(_raw_list(value.get("removed_keys", []), "removed_keys")),
    )


def roster_record(roster: RosterChange) -> dict[str, list[bytes]]:
    """How a :class:`~ping_web.delivery.RosterChange` crosses a port."""
    return {
        "added": [d.raw for d in roster.added],
        "removed": [d.raw for d in roster.removed],
        "removed_keys": list(roster.removed_keys),
    }


def error_record(exc: BaseException) -> dict[str, str]:
    """How an exception crosses a port or a worker boundary: ``{name, message}``."""
    return {"name": type(exc).__name__, "message": str(exc)}


async def answer(request: dict[str, Any], call: Callable[[Any, Any], Awaitable[Any]]) -> dict[str, Any]:
    """The reply to one request ``{id, method, args}``: ``{id, result}`` with what
    ``call(method, args)`` returned, or ``{id, error: {name, message}}``
    (:func:`error_record`) with what it raised. The request/reply shape of this port, and of
    ``web/worker.js``, which answers its page the same way."""
    request_id = request.get("id")
    try:
        result = await call(request.get("method"), request.get("args"))
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
        return {"id": request_id, "error": error_record(exc)}
    return {"id": request_id, "result": result}


def error_from_record(record: Any) -> PingError:
    """The :class:`~ping_web.errors.PingError` a ``{name, message}`` record stands for.

    A name that is not a ping_web error class (or one whose constructor takes more than a
    message, like ``MlsError``) becomes a plain :class:`PingError` carrying both.
    """
    name = record.get("name") if isinstance(record, dict) else None
    message = record.get("message") if isinstance(record, dict) else None
    name = name if isinstance(name, str) else "PingError"
    message = message if isinstance(message, str) else "no message"
    cls = getattr(errors, name, None) or _DELIVERY_ERRORS.get(name)
    if isinstance(cls, type) and issubclass(cls, PingError) and cls is not errors.MlsError:
        return cls(message)
    return PingError(f"{name}: {message}")


# -- the device side ----------------------------------------------------------------------------


class PortDelivery:
    """A :class:`~ping_web.delivery.Delivery` whose service is at the other end of ``port``.

    ``on_notice`` is called (synchronously, from the port's message handler) with each
    :class:`Notice` the server sends; keep it short, e.g. schedule a ``sync()``.
    """

    def __init__(
        self,
        port: Any,
        *,
        on_notice: Callable[[Notice], None] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._port = port
        self._on_notice = on_notice
        self._timeout_s = timeout_s
        self._next_id = 1
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._closed = False
        self._handler = _ffi.proxy(self._on_message)
        port.onmessage = self._handler

    # Delivery ---------------------------------------------------------------------------------

    def bind(self, device: DeviceSigner) -> None:
        """Nothing to do: the service behind the port authenticates no one."""

    async def create_group(self, conversation_id: ConversationId) -> None:
        await self._call("create_group", conversation_id.raw)

    async def post(self, envelope: bytes) -> bool:
        return bool(await self._call("post", bytes(envelope)))

    async def commit(
        self, commit: bytes, welcome: bytes | None, roster: RosterChange, *, group_info: bytes | None = None,
        external: bool = False,
    ) -> bool:  # fmt: skip
        welcome_arg = None if welcome is None else bytes(welcome)
        info = None if group_info is None else bytes(group_info)
        return bool(await self._call("commit", bytes(commit), welcome_arg, roster_record(roster), info, external))

    async def user_groups(self) -> list[ConversationId]:
        return [ConversationId.from_bytes(raw) for raw in _raw_list(await self._call("user_groups"), "groups")]

    async def group_info(self, conversation_id: ConversationId) -> bytes | None:
        result = await self._call("group_info", conversation_id.raw)
        return None if result is None else _raw(result, "group info")

    async def fetch(self, conversation_id: ConversationId, position: int) -> LogPage:
        result = await self._call("fetch", conversation_id.raw, position)
        if not isinstance(result, dict):
            raise DeliveryUnavailable("delivery bridge: malformed fetch reply")
        return LogPage(_raw_list(result.get("envelopes"), "envelopes"), _int(result.get("next_position"), "position"))

    async def send_welcome(self, device_ids: list[DeviceId], welcome: bytes) -> None:
        await self._call("send_welcome", [device.raw for device in device_ids], bytes(welcome))

    async def fetch_welcomes(self, device_id: DeviceId) -> list[bytes]:
        return _raw_list(await self._call("fetch_welcomes", device_id.raw), "welcomes")

    async def ack_welcomes(self, device_id: DeviceId, welcomes: list[bytes]) -> None:
        await self._call("ack_welcomes", device_id.raw, [bytes(w) for w in welcomes])

    async def publish_key_packages(self, user_id: UserId, device_id: DeviceId, key_packages: list[bytes]) -> None:
        await self._call("publish_key_packages", user_id.raw, device_id.raw, [bytes(kp) for kp in key_packages])

    async def claim_key_package(self, device_id: DeviceId) -> bytes | None:
        result = await self._call("claim_key_package", device_id.raw)
        return None if result is None else _raw(result, "key package")

    async def devices_of(self, user_id: UserId) -> list[DeviceId]:
        return [DeviceId.from_bytes(raw) for raw in _raw_list(await self._call("devices_of", user_id.raw), "devices")]

    async def device_log(self, user_id: UserId, after: int) -> DeviceLogPage:
        result = await self._call("device_log", user_id.raw, after)
        if not isinstance(result, dict) or type(result.get("head")) is not int:
            raise DeliveryUnavailable("delivery bridge: malformed device_log reply")
        return DeviceLogPage(_raw_list(result.get("entries"), "entries"), result["head"])

    async def append_device_log(self, entry: bytes) -> None:
        await self._call("append_device_log", bytes(entry))

    async def open_link(self, link_id: bytes) -> None:
        await self._call("open_link", bytes(link_id))

    async def send_link_request(self, link_id: bytes, request: bytes) -> None:
        await self._call("send_link_request", bytes(link_id), bytes(request))

    async def link_request(self, link_id: bytes) -> bytes | None:
        result = await self._call("link_request", bytes(link_id))
        return None if result is None else _raw(result, "link request")

    async def send_link_answer(self, link_id: bytes, answer: bytes) -> None:
        await self._call("send_link_answer", bytes(link_id), bytes(answer))

    async def link_answer(self, link_id: bytes) -> bytes | None:
        result = await self._call("link_answer", bytes(link_id))
        return None if result is None else _raw(result, "link answer")

    # ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening; calls waiting for a reply fail with :class:`DeliveryUnavailable`."""
        if self._closed:
            return
        self._closed = True
        self._port.onmessage = None
        self._port.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(DeliveryUnavailable("the delivery port was closed"))
        self._waiting.clear()
        _ffi.destroy_soon(self._handler)

    async def _call(self, method: str, *args: Any) -> Any:
        if self._closed:
            raise DeliveryUnavailable("the delivery port was closed")
        request_id, self._next_id = self._next_id, self._next_id + 1
        future: asyncio.Future[Any] = asyncio.get_event_loop().create_future()
        self._waiting[request_id] = future
        try:
            self._port.postMessage(_ffi.js_object({"id": request_id, "method": method, "args": list(args)}))
            return await asyncio.wait_for(future, self._timeout_s)
        except TimeoutError:
            raise DeliveryUnavailable(
                f"the delivery service did not answer {method} within {self._timeout_s:g} s; retry with sync()"
            ) from None
        finally:
            self._waiting.pop(request_id, None)

    def _on_message(self, event: Any) -> None:
        data = message_data(event)
        if data is None:
            return
        if "notice" in data:
            self._notice(data)
            return
        future = self._waiting.get(data.get("id"))  # type: ignore[arg-type]
        if future is None or future.done():
            return
        if "error" in data:
            future.set_exception(error_from_record(data["error"]))
        else:
            future.set_result(data.get("result"))

    def _notice(self, data: dict[str, Any]) -> None:
        if self._on_notice is None:
            return
        try:
            if data["notice"] == "log":
                conversation_id = ConversationId.from_bytes(_raw(data.get("conversation_id"), "conversation_id"))
                notice = Notice("log", conversation_id=conversation_id)
            elif data["notice"] == "welcome":
                devices = tuple(DeviceId.from_bytes(raw) for raw in _raw_list(data.get("device_ids"), "device_ids"))
                notice = Notice("welcome", device_ids=devices)
            else:
                return
        except PingError:
            return
        self._on_notice(notice)


# -- the service side ---------------------------------------------------------------------------


class DeliveryServer:
    """Answers :class:`PortDelivery` requests from any number of ports with one ``service``.

    Requests are handled as they arrive; each service method is atomic (the local service
    never awaits inside one), so two devices racing for one epoch get exactly one winner.
    After an accepted post or a Welcome, every other connected port gets a notice.
    """

    def __init__(self, service: Delivery) -> None:
        self.service = service
        self._ports: list[tuple[Any, Any]] = []  # (port, its message handler proxy)
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0

    @property
    def connections(self) -> int:
        return len(self._ports)

    def connect(self, port: Any) -> None:
        """Serve requests arriving on ``port`` (one per device)."""
        handler = _ffi.proxy(lambda event: self._on_message(port, event))
        port.onmessage = handler
        self._ports.append((port, handler))

    def close(self) -> None:
        """Stop serving every port (requests in flight still get their reply)."""
        ports, self._ports = self._ports, []
        for port, handler in ports:
            port.onmessage = None
            port.close()
            _ffi.destroy_soon(handler)

    def _on_message(self, port: Any, event: Any) -> None:
        task = asyncio.ensure_future(self._answer(port, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, port: Any, event: Any) -> None:
        notices: list[dict[str, Any]] = []

        async def call(method: Any, args: Any) -> Any:
            self.requests += 1
            result, notice = await self._dispatch(method, args)
            if notice is not None:
                notices.append(notice)
            return result

        data = message_data(event)
        if data is None:
            return
        reply = await answer(data, call)
        try:
            port.postMessage(_ffi.js_object(reply))
        except Exception:  # noqa: BLE001 - the other side is gone: nothing to tell
            pass
        for notice in notices:
            self._broadcast(port, notice)

    def _broadcast(self, origin: Any, notice: dict[str, Any]) -> None:
        """Send ``notice`` to every port but ``origin``."""
        message = _ffi.js_object(notice)
        for other, _ in list(self._ports):
            if other is not origin:
                try:
                    other.postMessage(message)
                except Exception:  # noqa: BLE001 - a port whose other side is gone
                    pass

    async def _dispatch(self, method: Any, args: Any) -> tuple[Any, dict[str, Any] | None]:
        """Call the service; returns the reply's result and the notice to broadcast."""
        if method not in METHODS:
            raise InvalidInput(f"delivery bridge: unknown method {method!r}; use one of {', '.join(METHODS)}")
        if not isinstance(args, list):
            raise InvalidInput("delivery bridge: args must be an array")
        service = self.service

        def arity(n: int) -> list[Any]:
            if len(args) != n:
                raise InvalidInput(f"delivery bridge: {method} takes {n} arguments, got {len(args)}")
            return args

        if method == "create_group":
            (conversation,) = arity(1)
            await service.create_group(ConversationId.from_bytes(_raw(conversation, "id")))
            return None, None
        if method == "post":
            (envelope,) = arity(1)
            accepted = await service.post(_raw(envelope, "envelope"))
            notice = None
            if accepted:
                notice = {"notice": "log", "conversation_id": MessageEnvelope.decode(envelope).conversation_id.raw}
            return accepted, notice
        if method == "commit":
            commit, welcome, roster_value, info, external = arity(5)
            roster = _roster(roster_value)
            welcome_bytes = None if welcome is None else _raw(welcome, "welcome")
            accepted = await service.commit(
                _raw(commit, "commit"), welcome_bytes, roster,
                group_info=None if info is None else _raw(info, "group info"), external=external is True,
            )  # fmt: skip
            notice = None
            if accepted:
                conversation_id = MessageEnvelope.decode(commit).conversation_id.raw
                notice = {"notice": "log", "conversation_id": conversation_id}
                if roster.added:
                    self._broadcast(None, {"notice": "welcome", "device_ids": [d.raw for d in roster.added]})
            return accepted, notice
        if method == "fetch":
            conversation, position = arity(2)
            page = await service.fetch(ConversationId.from_bytes(_raw(conversation, "id")), _int(position, "position"))
            return {"envelopes": page.envelopes, "next_position": page.next_position}, None
        if method == "send_welcome":
            devices, welcome = arity(2)
            send_welcome = getattr(service, "send_welcome", None)
            if send_welcome is None:
                raise InvalidInput("delivery bridge: this service takes Welcomes only with their commit")
            device_ids = [DeviceId.from_bytes(raw) for raw in _raw_list(devices, "device_ids")]
            await send_welcome(device_ids, _raw(welcome, "welcome"))
            return None, {"notice": "welcome", "device_ids": [d.raw for d in device_ids]}
        if method == "fetch_welcomes":
            (device,) = arity(1)
            return await service.fetch_welcomes(DeviceId.from_bytes(_raw(device, "device_id"))), None
        if method == "ack_welcomes":
            device, welcomes = arity(2)
            await service.ack_welcomes(DeviceId.from_bytes(_raw(device, "device_id")), _raw_list(welcomes, "welcomes"))
            return None, None
        if method == "publish_key_packages":
            user, device, packages = arity(3)
            await service.publish_key_packages(
                UserId.from_bytes(_raw(user, "user_id")),
                DeviceId.from_bytes(_raw(device, "device_id")),
                _raw_list(packages, "key_packages"),
            )
            return None, None
        if method == "claim_key_package":
            (device,) = arity(1)
            return await service.claim_key_package(DeviceId.from_bytes(_raw(device, "device_id"))), None
        if method == "user_groups":
            arity(0)
            return [c.raw for c in await service.user_groups()], None
        if method == "group_info":
            (conversation,) = arity(1)
            return await service.group_info(ConversationId.from_bytes(_raw(conversation, "id"))), None
        if method == "devices_of":
            (user,) = arity(1)
            return [d.raw for d in await service.devices_of(UserId.from_bytes(_raw(user, "user_id")))], None
        if method == "device_log":
            user, after = arity(2)
            if type(after) is not int or after < -1:
                raise InvalidInput("delivery bridge: after is an integer of at least -1")
            log_page = await service.device_log(UserId.from_bytes(_raw(user, "user_id")), after)
            return {"entries": log_page.entries, "head": log_page.head_seq}, None
        if method == "append_device_log":
            (entry,) = arity(1)
            await service.append_device_log(_raw(entry, "entry"))
            return None, None
        return await self._dispatch_link(method, args, arity), None

    async def _dispatch_link(self, method: str, args: list[Any], arity: Callable[[int], list[Any]]) -> Any:
        service = self.service
        if method in ("open_link", "link_request", "link_answer"):
            (link_id,) = arity(1)
            call = {"open_link": service.open_link, "link_request": service.link_request,
                    "link_answer": service.link_answer}[method]  # fmt: skip
            return await call(_raw(link_id, "link_id"))
        link_id, message = arity(2)
        send = service.send_link_request if method == "send_link_request" else service.send_link_answer
        await send(_raw(link_id, "link_id"), _raw(message, "link message"))
        return None


def serve_delivery(port: Any, service: Delivery | DeliveryServer) -> DeliveryServer:
    """Serve ``service`` on ``port``; pass the returned server again to add more ports."""
    server = service if isinstance(service, DeliveryServer) else DeliveryServer(service)
    server.connect(port)
    return server
