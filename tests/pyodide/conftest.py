"""pytest-pyodide setup: tests here run inside Pyodide (Node by default, or Chromium with
``--runtime chrome``) against dist/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools import loopback

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist" / "pyodide"
FAKE_INDEXEDDB = ROOT / "node_modules" / "fake-indexeddb" / "auto" / "index.js"

# Debian's chromium without the sandbox or GPU, reaching nothing but loopback.
CHROME_FLAGS = ["--js-flags=--expose-gc", *loopback.CHROMIUM_FLAGS]


def pytest_configure(config: pytest.Config) -> None:
    # Without dist/ the tests here are skipped (tests/conftest.py).
    # Selenium would otherwise try to download a driver; Debian ships a matching one.
    if "SE_CHROMEDRIVER" not in os.environ and (driver := shutil.which("chromedriver")):
        os.environ["SE_CHROMEDRIVER"] = driver


def pytest_sessionstart(session: pytest.Session) -> None:
    from pytest_pyodide import get_global_config

    config = get_global_config()
    # Node runs Pyodide in a vm context that only sees the globals listed here: OpenMLS
    # draws randomness from crypto.getRandomValues, storage uses crypto.subtle and the
    # fake-indexeddb polyfill (loaded into Node's main context by --require).
    if not (DIST / "pyodide-lock.json").exists():
        return  # nothing here runs (tests/conftest.py skips it)
    if not FAKE_INDEXEDDB.exists():
        raise pytest.UsageError("node_modules/fake-indexeddb is missing: run ./build.sh build first")
    # Node 20 has fetch; its WebSocket needs --experimental-websocket (the relay tests use both).
    config.set_flags("node", ["--require", str(FAKE_INDEXEDDB), "--experimental-websocket", "--no-warnings"])
    config.add_node_extra_globals(["crypto", "indexedDB", "IDBKeyRange", "DOMException", "fetch", "WebSocket"])
    config.add_node_extra_globals(["AbortController", "Headers", "Request", "Response", "MessageChannel"])
    config.set_flags("chrome", CHROME_FLAGS)


@pytest.fixture
def relay(selenium: Any, tmp_path: Path) -> Iterator[Any]:
    """A relay process on 127.0.0.1 (SQLite in ``tmp_path``) the Node runtime reaches with
    ``fetch``; restartable on the same port and database. Chromium's test page is on
    another origin the relay sends no CORS headers to, so these tests run in Node only."""
    from tests.relay_process import RelayServer

    if selenium.browser != "node":
        pytest.skip("the relay answers other origins without CORS: these run in Node")
    server = RelayServer(tmp_path / "relay.db", tmp_path / "relay.log", public_host="127.0.0.1",
                         args=("--rate-per-second", "1000", "--rate-burst", "1000"))  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()
