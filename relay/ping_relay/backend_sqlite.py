"""SQLite backend: the standard library's sqlite3 on worker threads.

One writer thread (every write transaction is ``BEGIN IMMEDIATE``, so writes are
serialized, also against other processes on the same file) and two reader threads
(WAL: readers never block the writer). ``journal_mode=WAL``, ``synchronous=FULL``: a
transaction is on disk when ``COMMIT`` returns.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from . import migrations
from .sqlstore import Row, Tx

T = TypeVar("T")
_BUSY_TIMEOUT_MS = 30_000


class _SqliteTx:
    lock = ""
    skip_locked = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.keys: set[str] = set()

    def one(self, sql: str, *params: object) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, *params: object) -> list[Row]:
        return list(self._conn.execute(sql, params).fetchall())

    def run(self, sql: str, *params: object) -> int:
        return self._conn.execute(sql, params).rowcount

    def notify(self, key: str) -> None:
        self.keys.add(key)


class SqliteBackend:
    def __init__(self, path: str, wake: Callable[[Iterable[str]], None]) -> None:
        self._path = path
        self._wake = wake
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite-write")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="relay-sqlite-read")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._local.conn = conn
            with self._guard:
                self._connections.append(conn)
        return conn

    def _transaction(self, begin: str, fn: Callable[[Tx], T]) -> tuple[T, set[str]]:
        conn = self._connection()
        conn.execute(begin)
        tx = _SqliteTx(conn)
        try:
            result = fn(tx)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result, tx.keys

    async def write(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        result, keys = await loop.run_in_executor(self._writer, self._transaction, "BEGIN IMMEDIATE", fn)
        if keys:
            self._wake(keys)
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        result, _ = await loop.run_in_executor(self._readers, self._transaction, "BEGIN", fn)
        return result

    def _migrate(self) -> int:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(migrations.SCHEMA_VERSION_TABLE)
            tx = _SqliteTx(conn)
            version = migrations.pending(tx)
            if version > migrations.LATEST:
                raise RuntimeError(f"the database is at schema {version}, newer than this relay ({migrations.LATEST})")
            for number in range(version + 1, migrations.LATEST + 1):
                migrations.apply(tx, "sqlite", number, int(time.time() * 1000))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return migrations.LATEST

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._migrate)

    async def close(self) -> None:
        def close_all() -> None:
            with self._guard:
                for conn in self._connections:
                    conn.close()
                self._connections.clear()

        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        close_all()


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    path = url.removeprefix("sqlite://")
    if not path.startswith("/") or path in {"/", "/:memory:"}:
        raise ValueError(f"not a SQLite file URL: {url!r} (use sqlite:///relay.db or sqlite:////abs/path.db)")
    return path[1:]
