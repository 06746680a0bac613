"""Instantiate the OpenMLS wasm module shipped inside this package, from Python.

The glue is wasm-bindgen's ``no-modules`` output: a plain script whose completion value is
the exports namespace. Evaluating it with ``run_js`` and calling ``initSync`` with the
compiled module needs no host-side JavaScript and no ``await``, so ``micropip.install``
plus ``import ping_web`` is enough in any Pyodide host (page, worker, Node, JupyterLite).
Each call to :func:`instantiate` gives an independent instance with its own memory, which
is what recovery from a wasm trap needs.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

WASM_PACKAGE = "ping_web._wasm"
GLUE_FILE = "ping_web_mls.js"
WASM_FILE = "ping_web_mls_bg.wasm"

_INIT = "(ns, module) => { ns.initSync({ module }); return ns; }"


@cache
def _artifacts() -> tuple[str, Any]:
    """The glue source and the compiled ``WebAssembly.Module`` (compiled once, reused)."""
    import js
    from pyodide.ffi import to_js

    files = resources.files(WASM_PACKAGE)
    glue = files.joinpath(GLUE_FILE).read_text(encoding="utf-8")
    binary = files.joinpath(WASM_FILE).read_bytes()
    module = js.WebAssembly.Module.new(to_js(binary))
    return glue + "\nwasm_bindgen;\n//# sourceURL=ping_web_mls.js\n", module


def instantiate() -> Any:
    """A fresh instance of the module: its exports namespace (``Provider``, ``Group``, ...)."""
    import js
    from pyodide.code import run_js

    from .errors import PingError

    if not hasattr(getattr(js, "crypto", None), "getRandomValues"):
        raise PingError("this JavaScript host has no crypto.getRandomValues; OpenMLS needs it")
    glue, module = _artifacts()
    namespace = run_js(glue)
    return run_js(_INIT)(namespace, module)


def wasm_size() -> int:
    """Size in bytes of the shipped ``.wasm`` file."""
    return len(resources.files(WASM_PACKAGE).joinpath(WASM_FILE).read_bytes())
