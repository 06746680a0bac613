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
    "JsCallFailed",
    "JsErrorInfo",
    "JsException",
    "broadcast_channel",
    "call_catching",
    "destroy_soon",
    "error_info",
    "first_event",
    "from_js",
    "host_global",
    "is_absent",
    "js_bytes",
    "js_object",
    "new_promise",
    "once_callable",
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


# -- scripts and wasm --------------------------------------------------------------------------


def run_script(source: str) -> Any:
    """Evaluate a classic script; returns its completion value."""
    return run_js(source)


def wasm_module(binary: bytes) -> Any:
    """A compiled ``WebAssembly.Module`` of ``binary``."""
    return _require_host().WebAssembly.Module.new(to_js(binary))
