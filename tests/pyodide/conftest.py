"""pytest-pyodide setup: tests here run inside Pyodide (Node by default, or Chromium with
``--runtime chrome``) against dist/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist" / "pyodide"
FAKE_INDEXEDDB = ROOT / "node_modules" / "fake-indexeddb" / "auto" / "index.js"

# Debian's chromium without the sandbox or GPU, and nothing that reaches the network.
CHROME_FLAGS = [
    "--js-flags=--expose-gc",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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
    config.set_flags("node", ["--require", str(FAKE_INDEXEDDB)])
    config.add_node_extra_globals(["crypto", "indexedDB", "IDBKeyRange", "DOMException"])
    config.set_flags("chrome", CHROME_FLAGS)
