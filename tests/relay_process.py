"""A relay process for the tests that need one (tests/browser, tests/pyodide): ``python -m
ping_relay`` under uvicorn on SQLite, serving the demo as ``./build.sh serve`` does.

(``tests/relay`` has its own, for both backends.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayServer:
    """``python -m ping_relay`` on ``host:port`` (loopback) with SQLite ``db``, serving the
    demo too (``--static /web=web --static /dist/pyodide=dist/pyodide``), as ``./build.sh
    serve`` does; ``public_host`` names the origin the pages open and the relay signs for. :meth:`kill` is SIGKILL; :meth:`start` again reuses the port and the database,
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
        probe = f"http://{self.host}:{self.port}/v1/info"
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
