"""Security headers on every HTTP reply: the API's, static files', errors' and redirects'.

The API answers data, never a document, so its policy lets nothing load or frame it.
Pages served with ``--static`` (the demo) may run their own scripts only (no other origin,
no inline script), compile WebAssembly (Pyodide and the OpenMLS module:
``'wasm-unsafe-eval'``), start workers and talk to their own origin (fetch and the stream's
WebSocket), and nothing else; no page may frame them. ``'unsafe-eval'`` is allowed too, for
one reason: ping_web loads wasm-bindgen's glue for its OpenMLS module by evaluating the
script's text (``ping_web/mls/loader.py``, through Pyodide's ``run_js``), which is what lets
``import ping_web`` work in any Pyodide host with no JavaScript of its own; without it the
demo's worker cannot start. ``Cache-Control: no-store`` on
every reply (docs/relay.md, section 2), also where Starlette or a mount wrote none.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_POLICY: Final = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE_POLICY: Final = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval'; worker-src 'self'; connect-src 'self';"
    " img-src 'self' data:; style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'"
)
COMMON_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
_REPLACED: Final = frozenset(
    {b"content-security-policy", b"x-content-type-options", b"referrer-policy", b"cache-control"}
)


def is_api_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


class SecurityHeaders:
    """Wraps the whole ASGI app (the API and any static mounts) and sets the headers on
    every ``http.response.start``; WebSocket traffic passes untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = (API_POLICY if is_api_path(scope.get("path", "")) else PAGE_POLICY).encode("ascii")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _REPLACED]
                message = dict(message, headers=[*headers, *COMMON_HEADERS, (b"content-security-policy", policy)])
            await send(message)

        await self.app(scope, receive, send_with_headers)
