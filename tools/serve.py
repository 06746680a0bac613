"""Serve the repository root statically on localhost (``./build.sh serve``; the browser tests).

The demo is at ``http://localhost:PORT/web/``. ES modules (``.mjs``/``.js``) go out as
``text/javascript`` and ``.wasm`` as ``application/wasm`` (browsers refuse anything else for
module workers and streaming compilation), with ``Cache-Control: no-store`` so a rebuilt
wheel is picked up on reload. The port is fixed by default because IndexedDB data belongs
to the origin, and the origin includes the port.
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORT = 8000

MIME_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".py": "text/x-python; charset=utf-8",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}


class Handler(SimpleHTTPRequestHandler):
    """Static files with the MIME types above, no caching, quiet unless asked."""

    extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    verbose = False

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        if self.verbose:
            super().log_message(format, *args)


def make_server(
    port: int = DEFAULT_PORT, root: Path = ROOT, host: str = "127.0.0.1", verbose: bool = False
) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` serving ``root`` (not started; port 0 picks a free one)."""
    handler = type("QuietHandler" if not verbose else "VerboseHandler", (Handler,), {"verbose": verbose})
    server = ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    return server


def serve_in_thread(port: int = DEFAULT_PORT, root: Path = ROOT) -> ThreadingHTTPServer:
    """Start a server in a daemon thread (for tests); stop it with ``shutdown()``."""
    server = make_server(port, root)
    threading.Thread(target=server.serve_forever, name="static-server", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    options = parser.parse_args(argv)
    try:
        server = make_server(options.port, options.root, options.host, options.verbose)
    except OSError as exc:
        print(f"serve: cannot listen on {options.host}:{options.port}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"Serving {options.root} on http://localhost:{options.port}/web/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
