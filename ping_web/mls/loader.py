"""Instantiate the OpenMLS wasm module shipped inside this package, from Python.

The glue is wasm-bindgen's ``no-modules`` output: a plain script whose completion value is
the exports namespace. Evaluating it with ``run_js`` and calling ``initSync`` with the
compiled module needs no host-side JavaScript and no ``await``, so ``micropip.install``
plus ``import ping_web`` is enough in any Pyodide host (page, worker, Node, JupyterLite).
Each call to :func:`instantiate` gives an independent instance with its own memory, which
is what recovery from a wasm trap needs.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from ping_web import _ffi
from ping_web.errors import PingError

WASM_PACKAGE = "ping_web.mls._wasm"
GLUE_FILE = "ping_web_mls.js"
WASM_FILE = "ping_web_mls_bg.wasm"

# Keeps the instance's memory on the namespace (as wasmMemory) for MlsRuntime.memory_bytes.
_INIT = "(ns, module) => { ns.wasmMemory = ns.initSync({ module }).memory; return ns; }"


def _read(name: str) -> bytes:
    """A file of the ``_wasm`` package: beside this module when installed as files (every
    Pyodide host), else through importlib.resources (imported only then: in Pyodide it costs
    ~10 ms of a client's start)."""
    path = os.path.join(os.path.dirname(__file__), "_wasm", name)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    from importlib import resources

    return resources.files(WASM_PACKAGE).joinpath(name).read_bytes()


@cache
def _artifacts() -> tuple[str, Any]:
    """The glue source and the compiled ``WebAssembly.Module`` (compiled once, reused)."""
    glue = _read(GLUE_FILE).decode("utf-8")
    module = _ffi.wasm_module(_read(WASM_FILE))
    return glue + "\nwasm_bindgen;\n//# sourceURL=ping_web_mls.js\n", module


def instantiate() -> Any:
    """A fresh instance of the module: its exports namespace (``Provider``, ``Group``, ...)."""
    if not hasattr(_ffi.host_global("crypto"), "getRandomValues"):
        raise PingError("this JavaScript host has no crypto.getRandomValues; OpenMLS needs it")
    glue, module = _artifacts()
    namespace = _ffi.run_script(glue)
    return _ffi.run_script(_INIT)(namespace, module)


def wasm_size() -> int:
    """Size in bytes of the shipped ``.wasm`` file."""
    return len(_read(WASM_FILE))
