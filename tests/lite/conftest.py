"""Headless Chromium (Debian's, through Selenium) and a static server of the repository root.

The server records every path it served, so tests can check where things came from.
Chromium resolves no host but 127.0.0.1: nothing can come from a CDN or PyPI.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from tools import loopback

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TIMEOUT_S = float(os.environ.get("PING_LITE_TIMEOUT", "240"))

# Offline for real: every host but loopback fails to resolve (no CDN, no PyPI).
CHROME_FLAGS = [*loopback.CHROMIUM_FLAGS, "--window-size=1280,1600"]


class Served(list):
    """Paths the server was asked for, query strings removed."""


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
        ".whl": "application/zip",
    }

    def __init__(self, *args, served: Served, **kwargs) -> None:
        self._served = served
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:
        self._served.append(self.path.split("?")[0])
        super().do_GET()


@pytest.fixture(scope="session")
def server():
    """``(base URL, served paths)`` of a server of the repository root on 127.0.0.1."""
    served = Served()
    handler = functools.partial(_Handler, directory=str(ROOT), served=served)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def driver(tmp_path: Path):
    """A fresh headless Chromium (own profile, so IndexedDB starts empty)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed (./build.sh installs them)")
    os.environ.setdefault("SE_CHROMEDRIVER", CHROMEDRIVER)  # Selenium: never download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    browser.set_script_timeout(TIMEOUT_S)
    yield browser
    browser.quit()


@pytest.fixture
def console(driver):
    """A function returning the browser console so far (for failure messages)."""
    return lambda: "\n".join(entry["message"] for entry in driver.get_log("browser"))[-4000:]
