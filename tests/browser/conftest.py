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
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"
CHROMIUM = os.environ.get("PING_WEB_CHROMIUM", "/usr/bin/chromium")

# Debian's chromium without the sandbox or GPU, and nothing that reaches the network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sys.path.insert(0, str(ROOT))
from tools.serve import serve_in_thread  # noqa: E402


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayServer:
    """``python -m ping_relay`` on ``host:port`` with SQLite ``db``, serving the demo too
    (``--static /web=web --static /dist/pyodide=dist/pyodide``), as ``./build.sh serve``
    does. :meth:`kill` is SIGKILL; :meth:`start` again reuses the port and the database,
    so pages keep their origin (and their IndexedDB)."""

    def __init__(self, db: Path, log: Path, *, host: str = "127.0.0.1", public_host: str = "localhost",
                 port: int | None = None, args: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.db, self.log_path, self.host, self.args = db, log, host, args
        self.port = port or free_port()
        self.url = f"http://{public_host}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RelayServer:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "relay"), env.get("PYTHONPATH", "")])
        cmd = [
            sys.executable, "-m", "ping_relay", "--db", f"sqlite:///{self.db}", "--host", self.host,
            "--port", str(self.port), "--origin", self.url, "--log-level", "warning",
            "--static", f"/web={ROOT / 'web'}", "--static", f"/dist/pyodide={ROOT / 'dist' / 'pyodide'}",
            "--index", "/web/", *self.args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=str(ROOT))
        deadline = time.monotonic() + 30
        probe = f"http://127.0.0.1:{self.port}/v1/info" if self.host in ("127.0.0.1", "0.0.0.0") else None
        probe = probe or f"http://{self.host}:{self.port}/v1/info"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(probe, timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"relay did not start:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed beyond what was committed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


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
