"""Fixtures: real relay processes (``python -m ping_relay`` under uvicorn) on 127.0.0.1.

Every test runs once per backend: ``sqlite`` always, ``postgres`` when
PING_RELAY_TEST_POSTGRES holds a DSN (skipped otherwise). Each relay gets its own
database: a fresh SQLite file, or a fresh PostgreSQL schema on that server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from relay_client import ORIGIN, Device

ROOT = Path(__file__).resolve().parents[2]
PG_DSN = os.environ.get("PING_RELAY_TEST_POSTGRES", "")
FAST = [
    "--rate-per-second", "100000", "--rate-burst", "100000",
    "--anon-rate-per-second", "100000", "--anon-burst", "100000",
    "--auth-failure-rate-per-second", "100000", "--auth-failure-burst", "100000",
    "--claim-rate-per-target", "100000", "--claim-burst-per-target", "100000",
    "--claim-rate-per-pair", "100000", "--claim-burst-per-pair", "100000",
    "--last-resort-rate", "100000", "--last-resort-burst", "100000",
    "--group-rate-per-second", "100000", "--group-burst", "100000",
    "--upload-bytes-per-second", "1e12", "--upload-burst-bytes", str(10**12),
    "--download-bytes-per-second", "1e12", "--download-burst-bytes", str(10**12),
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayProcess:
    """One ``python -m ping_relay`` process; ``start`` waits until it answers."""

    def __init__(self, db: str, log_path: Path, args: list[str]) -> None:
        self.db = db
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RelayProcess:
        """Start the process (again on the same port after a kill or stop)."""
        if not self.port:
            self.port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "relay"), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "ping_relay", "--db", self.db, "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--origin", ORIGIN, "--log-level", "warning", *self.args]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=str(ROOT))
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/v1/info", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"relay did not start:\n{self.log_path.read_text()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush beyond what was committed."""
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.skipif(not PG_DSN, reason="PING_RELAY_TEST_POSTGRES is not set")),
]


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Databases:
    """Fresh databases for one backend, dropped at the end."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend = backend
        self.tmp = tmp
        self.schemas: list[str] = []

    def new(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp / f'relay-{uuid.uuid4().hex[:8]}.db'}"
        import psycopg

        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        sep = "&" if "?" in PG_DSN else "?"
        return f"{PG_DSN}{sep}options={quote(f'-c search_path={schema}')}"

    def drop(self) -> None:
        if not self.schemas:
            return
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="module")
def databases(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    dbs = Databases(backend, tmp_path_factory.mktemp(f"relay-{backend}"))
    yield dbs
    dbs.drop()


@pytest.fixture(scope="module")
def spawn(databases: Databases) -> Iterator[Callable[..., RelayProcess]]:
    """``spawn(*args, db=None)``: start a relay (a fresh database unless ``db`` is given)."""
    started: list[RelayProcess] = []

    def make(*args: str, db: str | None = None, fast: bool = True) -> RelayProcess:
        log = databases.tmp / f"relay-{len(started)}.log"
        relay = RelayProcess(db or databases.new(), log, [*(FAST if fast else []), *args])
        started.append(relay)
        return relay.start()

    yield make
    for relay in started:
        relay.stop()


@pytest.fixture(scope="module")
def relay(spawn: Callable[..., RelayProcess]) -> RelayProcess:
    """A relay with default limits (rates raised) shared by a test module."""
    return spawn()


@pytest.fixture
def device(relay: RelayProcess) -> Callable[..., Device]:
    """``device(user_id=None)``: a registered, logged-in device on ``relay`` (the first of a
    user starts its device log; a later one is added to it by the first)."""
    made: list[Device] = []
    first: dict[bytes, Device] = {}

    def make(user_id: bytes | None = None, *, login: bool = True) -> Device:
        """A device of ``user_id``; a second one of a user is added by the first (linked)."""
        d = Device(relay.url, user_id)
        made.append(d)
        owner = first.get(d.user_id)
        if owner is None:
            first[d.user_id] = d
        else:
            owner.add_device(d)
        if login:
            d.setup()
        return d

    yield make  # type: ignore[misc]
    for d in made:
        d.close()
