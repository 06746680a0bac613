"""Static files beside the API (``--static /web=web``): one origin for an app and its relay.

A browser app is a secure context on ``http://localhost`` (WebCrypto needs one), and a
page can reach a relay on its own origin without CORS; so the demo is served by the relay
itself. Every path under ``/v1`` stays the API's (its 404 and 405 included); other paths
are looked up under the mounted directories, GET and HEAD only, with the MIME types
browsers insist on for module workers and wasm (``headers.py`` adds ``Cache-Control:
no-store`` and the security headers to every reply). A redirect (``/`` to the index, a
directory without its slash) points at the configured origin, never at the request's
``Host`` header, which any client may set.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .headers import is_api_path
from .replies import JsonReply, reply

for _suffix, _kind in {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".whl": "application/zip",
    ".py": "text/x-python",
    ".md": "text/markdown",
}.items():
    mimetypes.add_type(_kind, _suffix)


def parse_mount(text: str) -> tuple[str, Path]:
    """``/url/prefix=directory`` as ``(prefix, directory)``; :class:`ValueError` if malformed."""
    prefix, sep, directory = text.partition("=")
    if not sep or not prefix.startswith("/") or not directory:
        raise ValueError(f"--static takes /url/prefix=directory, got {text!r}")
    prefix = prefix.rstrip("/")
    if prefix == "/v1" or prefix.startswith("/v1/"):
        raise ValueError("--static cannot mount under /v1 (the API's paths)")
    path = Path(directory).resolve()
    if not path.is_dir():
        raise ValueError(f"--static {prefix}: {directory} is not a directory")
    return prefix, path


class WithStatic:
    """The relay app, plus static directories mounted at URL prefixes (see the module docstring).

    ``index`` is where ``/`` redirects to (the app's page), if set; ``origin`` is the
    relay's public origin, the base of every redirect."""

    def __init__(
        self, api: ASGIApp, mounts: Sequence[tuple[str, Path]], index: str | None = None, *, origin: str
    ) -> None:
        self.api = api
        self.index = index
        self.origin = origin
        # Longest prefix first, so /dist/pyodide wins over /dist.
        self.mounts = sorted(
            ((prefix, StaticFiles(directory=path, html=True)) for prefix, path in mounts),
            key=lambda item: -len(item[0]),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or is_api_path(path):
            await self.api(scope, receive, send)
            return
        if path == "/" and self.index is not None:
            await RedirectResponse(at_origin(self.origin, self.index))(scope, receive, send)
            return
        for prefix, files in self.mounts:
            if path == prefix or path.startswith(prefix + "/"):
                if scope["method"] not in ("GET", "HEAD"):
                    await _error(405, "method_not_allowed")(scope, receive, send)
                    return
                inner = dict(scope, root_path=scope.get("root_path", "") + prefix)
                try:
                    await files(inner, receive, _redirect_to_origin(send, self.origin))
                except HTTPException as exc:
                    await _error(exc.status_code, "not_found" if exc.status_code == 404 else "http_error")(
                        scope, receive, send
                    )
                return
        await _error(404, "not_found")(scope, receive, send)


def at_origin(origin: str, location: str) -> str:
    """``location`` (absolute, or a path) moved to ``origin``: its path and query only."""
    parts = urlsplit(location)
    path = "/" + parts.path.lstrip("/")
    return origin + path + (f"?{parts.query}" if parts.query else "")


def _redirect_to_origin(send: Send, origin: str) -> Send:
    """Starlette's directory redirect builds its ``Location`` from the ``Host`` header."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, at_origin(origin, v.decode("latin-1")).encode("latin-1") if k.lower() == b"location" else v)
                for k, v in message.get("headers", [])
            ]
            message = dict(message, headers=headers)
        await send(message)

    return wrapped


def _error(status: int, code: str) -> JsonReply:
    return reply({"error": code, "detail": code.replace("_", " ")}, status)
