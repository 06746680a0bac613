"""Headless Chromium tests of web/: Debian's /usr/bin/chromium driven by Playwright.

Playwright's own browser download is never used (it fails here): the browser is launched
from ``PING_WEB_CHROMIUM`` (default ``/usr/bin/chromium``). The repository root is served
by ``tools/serve.py`` on a free localhost port (``base_url``); the demo runs on a relay
process (``python -m ping_relay`` under uvicorn, SQLite) that serves it too, as
``./build.sh serve`` does (``relay_server``). Each test gets a fresh browser context, so
fresh IndexedDB databases. Screenshots go to ``test-output/``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"
CHROMIUM = os.environ.get("PING_WEB_CHROMIUM", "/usr/bin/chromium")

sys.path.insert(0, str(ROOT))
from tests.relay_process import RelayServer  # noqa: E402
from tools.loopback import CHROMIUM_FLAGS  # noqa: E402  (reaches nothing but loopback)
from tools.serve import serve_in_thread  # noqa: E402

__all__ = ["CHROMIUM", "CHROMIUM_FLAGS", "RelayServer"]


def pytest_configure(config: pytest.Config) -> None:
    # Without dist/ the tests here are skipped (tests/conftest.py); with it, Chromium is required.
    if (ROOT / "dist" / "pyodide" / "pyodide-lock.json").exists() and not Path(CHROMIUM).exists():
        raise pytest.UsageError(f"{CHROMIUM} is missing: apt-get install chromium (or set PING_WEB_CHROMIUM)")


@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    """The served repository root, e.g. ``http://localhost:40123``."""
    server = serve_in_thread(int(os.environ.get("PING_WEB_TEST_PORT", "0")))
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def relay_server(tmp_path: Path) -> Iterator[Callable[..., RelayServer]]:
    """``relay_server(**options)``: a started :class:`RelayServer` on a fresh database."""
    started: list[RelayServer] = []

    def make(**options: object) -> RelayServer:
        server = RelayServer(tmp_path / f"relay-{len(started)}.db", tmp_path / f"relay-{len(started)}.log",
                             **options)  # type: ignore[arg-type]  # fmt: skip
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(browser: object) -> Iterator[object]:
    """A fresh browser profile (empty IndexedDB) sized so the three devices sit side by side."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})  # type: ignore[attr-defined]
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Mark a test whose body failed (``item.call_failed``), so fixtures can save a screenshot."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        item.call_failed = True  # type: ignore[attr-defined]
