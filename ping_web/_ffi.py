"""The one bridge between Python and JavaScript: every use of ``js`` and ``pyodide`` is here.

Other modules never import ``js`` or ``pyodide``; they call these helpers, which convert
values at the boundary (bytes <-> ``Uint8Array``, dicts <-> plain objects, ``null`` and
``undefined`` <-> ``None``) and report JavaScript errors as typed :class:`JsErrorInfo`
values read from the error objects themselves, never parsed out of message text.

On CPython this module still imports: :data:`IN_PYODIDE` is false, :class:`JsException`
is a placeholder nothing raises, and calling a helper that needs a JavaScript host raises
:class:`~ping_web.errors.PingError`. So the pure tiers and their tests run anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ping_web.errors import PingError

try:  # Pyodide
    import js
    from pyodide.code import run_js
    from pyodide.ffi import (
        JsException,
        create_once_callable,
        create_proxy,
        jsnull,
        to_js,
    )

    IN_PYODIDE: Final = True
except ImportError:  # CPython: nothing here is callable, but the module imports
    IN_PYODIDE = False  # type: ignore[misc]
    js = None
    jsnull = object()

    class JsException(Exception):  # type: ignore[no-redef]
        """Stands in for Pyodide's JsException on CPython (never raised there)."""

    def _unavailable(*args: Any, **kwargs: Any) -> Any:
        raise PingError("this needs a JavaScript host: run it under Pyodide (page, worker, Node)")

    run_js = create_once_callable = create_proxy = to_js = _unavailable


__all__ = [
    "IN_PYODIDE",
    "BroadcastChannelHandle",
    "HttpResponse",
    "JsCallFailed",
    "JsErrorInfo",
    "JsException",
    "ListenerHandle",
    "WebSocketHandle",
    "broadcast_channel",
    "call_catching",
    "destroy_soon",
    "error_info",
    "first_event",
    "from_js",
    "has_websocket",
    "host_global",
    "host_online",
    "http_request",
    "is_absent",
    "js_bytes",
    "js_object",
    "listen_global",
    "location_origin",
    "new_promise",
    "once_callable",
    "open_websocket",
    "proxy",
    "run_script",
    "to_js_bytes",
    "uint32_array",
    "wasm_module",
]


@dataclass(frozen=True, slots=True)
class JsErrorInfo:
    """What a JavaScript error says about itself: its ``name``, ``message`` and ``code``."""

    name: str
    message: str
    code: str | None = None


class JsCallFailed(Exception):
    """A JavaScript call threw; :attr:`info` is the thrown value's own name and message."""

    def __init__(self, info: JsErrorInfo) -> None:
        super().__init__(f"{info.name}: {info.message}")
        self.info = info


def _require_host() -> Any:
    if not IN_PYODIDE:
        raise PingError("this needs a JavaScript host: run it under Pyodide (page, worker, Node)")
    return js


# -- values ------------------------------------------------------------------------------------


def is_absent(value: Any) -> bool:
    """True for JavaScript ``undefined`` (``None`` in Python) and ``null``."""
    return value is None or value is jsnull


def host_global(name: str) -> Any | None:
    """The global ``name`` of the JavaScript host (``globalThis[name]``), or ``None``."""
    if not IN_PYODIDE:
        return None
    value = getattr(js, name, None)
    return None if is_absent(value) else value


def to_js_bytes(data: bytes | bytearray | memoryview) -> Any:
    """A new ``Uint8Array`` holding a copy of ``data``."""
    return to_js(bytes(data))


def new_uint8array(size: int) -> Any:
    """An empty ``Uint8Array`` of ``size`` bytes (to be filled with ``.assign()``)."""
    return _require_host().Uint8Array.new(size)


def uint32_array(values: Iterable[int]) -> Any:
    """A ``Uint32Array`` of ``values``."""
    return _require_host().Uint32Array.new(to_js(list(values)))


def js_object(value: Mapping[str, Any] | list[Any]) -> Any:
    """A Python dict or list (nested; bytes become ``Uint8Array``) as plain JavaScript values."""
    return to_js(value, dict_converter=_require_host().Object.fromEntries, create_pyproxies=False)


def js_bytes(value: Any) -> bytes:
    """The bytes of a ``Uint8Array`` or ``ArrayBuffer``; :class:`TypeError` for anything else."""
    to_bytes = getattr(value, "to_bytes", None)
    if to_bytes is None:
        raise TypeError(f"expected a Uint8Array or ArrayBuffer, got {type(value).__name__}")
    return bytes(to_bytes())


def from_js(value: Any) -> Any:
    """A structured-clone value as Python: objects -> dict, arrays -> list,
    ``Uint8Array`` -> bytes, ``null``/``undefined`` -> ``None``."""
    converted = value.to_py() if hasattr(value, "to_py") else value
    return _plain(converted)


def _plain(value: Any) -> Any:
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if is_absent(value):
        return None
    return value


# -- errors ------------------------------------------------------------------------------------


def error_info(error: Any) -> JsErrorInfo:
    """The name, message and ``code`` property of a JavaScript error (a thrown
    :class:`JsException`, or an error object such as ``transaction.error``)."""
    if is_absent(error):
        return JsErrorInfo("", "")
    code = getattr(error, "code", None)
    return JsErrorInfo(
        name=str(getattr(error, "name", "") or ""),
        message=str(getattr(error, "message", "") or ""),
        code=code if isinstance(code, str) else None,
    )


_CALL_CATCHING_SOURCE: Final = """(fn, self, args) => {
  try { return { ok: true, value: fn.apply(self, args) }; }
  catch (e) { return { ok: false, name: String(e?.name ?? "Error"), message: String(e?.message ?? e) }; }
}"""
_call_catching: Any = None


def call_catching(target: Any, method: str, *args: Any) -> Any:
    """``target[method](...args)``; if it throws, :class:`JsCallFailed` with the thrown
    value's own ``name`` (a ``DOMException``'s name survives, which a Pyodide-wrapped
    exception does not always keep)."""
    global _call_catching
    if _call_catching is None:
        _call_catching = run_js(_CALL_CATCHING_SOURCE)
    outcome = _call_catching(getattr(target, method), target, to_js(list(args)))
    if outcome.ok:
        return outcome.value
    raise JsCallFailed(JsErrorInfo(str(outcome.name), str(outcome.message)))


# -- callbacks, promises, events ---------------------------------------------------------------


def proxy(fn: Callable[..., Any]) -> Any:
    """A JavaScript function calling ``fn``, alive until :func:`destroy_soon`."""
    return create_proxy(fn)


def once_callable(fn: Callable[..., Any]) -> Any:
    """A JavaScript function calling ``fn`` once, then freeing itself."""
    return create_once_callable(fn)


def destroy_soon(js_proxy: Any) -> None:
    """Free a :func:`proxy` on the next loop turn (never from inside its own call)."""
    asyncio.get_event_loop().call_soon(js_proxy.destroy)


def new_promise(executor: Callable[[Any, Any], None]) -> Any:
    """``new Promise(executor)``; awaitable from Python."""
    return _require_host().Promise.new(executor)


async def first_event(target: Any, types: Iterable[str]) -> Any:
    """The first of ``types`` that ``target`` fires (through its ``on<type>`` handlers).

    Resolving, never rejecting, with the event keeps every handler a plain JavaScript
    function: no Python proxy can fire after it was freed.
    """
    names = [f"on{kind}" for kind in types]

    def executor(resolve: Any, reject: Any) -> None:
        for name in names:
            setattr(target, name, resolve)

    event = await new_promise(executor)
    for name in names:
        setattr(target, name, None)
    return event


# -- BroadcastChannel -------------------------------------------------------------------------


class BroadcastChannelHandle:
    """An open ``BroadcastChannel``: :meth:`post` sends a Python value (converted like
    :func:`js_object`) to every other context of this origin listening on the name."""

    def __init__(self, channel: Any, handler: Any) -> None:
        self._channel: Any = channel
        self._handler = handler

    def post(self, message: Mapping[str, Any]) -> None:
        if self._channel is not None:
            self._channel.postMessage(js_object(message))

    def close(self) -> None:
        """Stop sending and receiving. Idempotent."""
        channel, self._channel = self._channel, None
        if channel is None:
            return
        channel.onmessage = None
        channel.close()
        destroy_soon(self._handler)  # not from inside its own call


def broadcast_channel(name: str, on_message: Callable[[Any], None]) -> BroadcastChannelHandle:
    """Listen on the ``BroadcastChannel`` ``name``: ``on_message`` gets every message other
    contexts post there, as Python values (:func:`from_js`); one that fails to convert is
    dropped, and nothing ``on_message`` raises reaches JavaScript."""
    channel = _require_host().BroadcastChannel.new(name)

    def deliver(event: Any) -> None:
        try:
            value = from_js(event.data)
        except Exception:  # noqa: BLE001 - a malformed message is dropped, never raised into JS
            return
        try:
            on_message(value)
        except Exception:  # noqa: BLE001 - the listener's failure stays in Python
            import traceback

            traceback.print_exc()

    handler = create_proxy(deliver)
    channel.onmessage = handler
    return BroadcastChannelHandle(channel, handler)


# -- HTTP and WebSocket (the relay client) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What :func:`http_request` got back: the status, the body as text, and ``Retry-After``."""

    status: int
    text: str
    retry_after: str | None = None


_HTTP_SOURCE: Final = """async (method, url, headers, body, timeoutMs) => {
  const controller = typeof AbortController === "function" ? new AbortController() : null;
  const timer = controller && timeoutMs > 0 ? setTimeout(() => controller.abort(), timeoutMs) : null;
  try {
    const init = { method, headers: Object.fromEntries(headers), redirect: "error" };
    if (body !== null && body !== undefined) init.body = body;
    if (controller) init.signal = controller.signal;
    const response = await fetch(url, init);
    const text = await response.text();
    return { ok: true, status: response.status, text, retryAfter: response.headers.get("retry-after") };
  } catch (e) {
    const timedOut = e?.name === "AbortError";
    const cause = e?.cause ? ` (${e.cause.code ?? e.cause.message ?? e.cause})` : "";
    return { ok: false, name: timedOut ? "TimeoutError" : String(e?.name ?? "Error"),
             message: timedOut ? `no answer within ${timeoutMs} ms` : String(e?.message ?? e) + cause };
  } finally {
    if (timer !== null) clearTimeout(timer);
  }
}"""
_http: Any = None


async def http_request(
    method: str, url: str, headers: Mapping[str, str], body: str | None = None, *, timeout_s: float = 30.0
) -> HttpResponse:
    """One HTTP request with the host's ``fetch`` (page, worker, Node 18+). An answer of any
    status is returned; no answer (network down, refused connection, timeout) raises
    :class:`JsCallFailed` (name ``TypeError``, ``TimeoutError``, ...). Redirects are errors."""
    global _http
    _require_host()
    if _http is None:
        _http = run_js(_HTTP_SOURCE)
    pairs = to_js([[str(k), str(v)] for k, v in headers.items()])
    outcome = await _http(method, url, pairs, body, int(timeout_s * 1000))
    if not outcome.ok:
        raise JsCallFailed(JsErrorInfo(str(outcome.name), str(outcome.message)))
    retry_after = outcome.retryAfter
    return HttpResponse(int(outcome.status), str(outcome.text), None if is_absent(retry_after) else str(retry_after))


def has_websocket() -> bool:
    """Whether the host has a global ``WebSocket`` (browsers do; Node 20 only with
    ``--experimental-websocket``, Node 22 and later always)."""
    return host_global("WebSocket") is not None


class WebSocketHandle:
    """An open (or opening) ``WebSocket``. Its events reach the ``on_event`` callback given
    to :func:`open_websocket` as ``("open", None)``, ``("message", text)``,
    ``("close", (code, reason))`` and ``("error", None)``; after ``close`` nothing more.
    An ``error`` before ``open`` means the connection failed: Node's WebSocket then never
    fires ``close``."""

    def __init__(self, socket: Any, handlers: list[Any]) -> None:
        self._socket: Any = socket
        self._handlers = handlers

    @property
    def protocol(self) -> str:
        return "" if self._socket is None else str(self._socket.protocol)

    def send(self, text: str) -> bool:
        """Queue a text frame; ``False`` if the socket is not open."""
        socket = self._socket
        if socket is None or socket.readyState != 1:
            return False
        try:
            socket.send(text)
        except JsException:
            return False
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (idempotent); the ``close`` event still arrives, unless :meth:`release`d."""
        socket = self._socket
        if socket is not None and socket.readyState in (0, 1):
            try:
                socket.close(code, reason)
            except JsException:
                pass

    def release(self) -> None:
        """Stop listening to the socket's events and free the handlers (idempotent)."""
        socket, self._socket = self._socket, None
        if socket is None:
            return
        socket.onopen = socket.onmessage = socket.onclose = socket.onerror = None
        for handler in self._handlers:
            destroy_soon(handler)


def open_websocket(url: str, protocols: list[str], on_event: Callable[[str, Any], None]) -> WebSocketHandle:
    """``new WebSocket(url, protocols)``, its events forwarded to ``on_event`` (see
    :class:`WebSocketHandle`); text frames arrive as ``str``, binary ones are dropped.
    Nothing ``on_event`` raises reaches JavaScript. Raises :class:`JsCallFailed` if the
    host refuses the URL."""
    host = _require_host()
    constructor = host_global("WebSocket")
    if constructor is None:
        raise JsCallFailed(JsErrorInfo("NotSupportedError", "this host has no WebSocket"))
    try:
        socket = constructor.new(url, to_js(list(protocols)))
    except JsException as exc:
        raise JsCallFailed(error_info(exc)) from None
    del host
    handle = WebSocketHandle(socket, [])

    def deliver(kind: str, value: Any) -> None:
        try:
            on_event(kind, value)
        except Exception:  # noqa: BLE001 - the listener's failure stays in Python
            import traceback

            traceback.print_exc()

    def on_open(event: Any) -> None:
        deliver("open", None)

    def on_message(event: Any) -> None:
        data = event.data
        if isinstance(data, str):
            deliver("message", data)

    def on_close(event: Any) -> None:
        code, reason = int(getattr(event, "code", 1006) or 1006), str(getattr(event, "reason", "") or "")
        handle.release()
        deliver("close", (code, reason))

    def on_error(event: Any) -> None:
        deliver("error", None)

    handlers = [create_proxy(fn) for fn in (on_open, on_message, on_close, on_error)]
    handle._handlers = handlers
    socket.onopen, socket.onmessage, socket.onclose, socket.onerror = handlers
    return handle


def location_origin() -> str | None:
    """``globalThis.location.origin`` (a page or worker), or ``None`` (Node)."""
    location = host_global("location")
    origin = None if location is None else getattr(location, "origin", None)
    return origin if isinstance(origin, str) and origin not in ("", "null") else None


def host_online() -> bool:
    """``navigator.onLine`` where the host has it (``True`` elsewhere)."""
    navigator = host_global("navigator")
    online = None if navigator is None else getattr(navigator, "onLine", None)
    return online if isinstance(online, bool) else True


class ListenerHandle:
    """A listener added by :func:`listen_global`; :meth:`remove` takes it off."""

    def __init__(self, event: str, handler: Any) -> None:
        self._event = event
        self._handler: Any = handler

    def remove(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            _require_host().removeEventListener(self._event, handler)
            destroy_soon(handler)


def listen_global(event: str, callback: Callable[[], None]) -> ListenerHandle | None:
    """Call ``callback`` on each ``event`` the global scope fires (``"online"``, ...);
    ``None`` where the host has no ``addEventListener`` (Node)."""
    host = _require_host()
    if getattr(host, "addEventListener", None) is None:
        return None

    def fire(_: Any) -> None:
        try:
            callback()
        except Exception:  # noqa: BLE001 - the listener's failure stays in Python
            import traceback

            traceback.print_exc()

    handler = create_proxy(fire)
    host.addEventListener(event, handler)
    return ListenerHandle(event, handler)


# -- scripts and wasm --------------------------------------------------------------------------


def run_script(source: str) -> Any:
    """Evaluate a classic script; returns its completion value."""
    return run_js(source)


def wasm_module(binary: bytes) -> Any:
    """A compiled ``WebAssembly.Module`` of ``binary``."""
    return _require_host().WebAssembly.Module.new(to_js(binary))
