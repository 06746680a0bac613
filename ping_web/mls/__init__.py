"""MLS by OpenMLS: the :class:`~ping_web.core.engine.MlsEngine` implementation over the wasm module.

Owns the wasm artifacts (``_wasm/``), their loader and the typed wrapper that turns bytes
and JS errors into Python values and :class:`~ping_web.errors.PingError` subclasses. May
import :mod:`ping_web.core`, :mod:`ping_web.errors` and :mod:`ping_web._ffi`; never storage,
delivery or client.
"""
